"""Images made recognisable as generated: C2PA content credentials on every PNG aigc writes (read back
with c2pa-python, as any C2PA tool would), `aigc detect IMAGE`, and the Tree-Ring watermark in a
diffusion model's starting noise (imprint, DDIM inversion, the test), with their bad input."""

from __future__ import annotations

import base64
import io
import json
import zlib

import c2pa
import numpy as np
import pytest
import torch
from PIL import Image

import aigc
from aigc.cli import main
from aigc.errors import AigcError
from aigc.evaluate.treering import detect_noise, invert
from aigc.formats.credentials import TRAINED, read_credentials
from aigc.generate.diffusion import Condition, guided, sampler_for
from aigc.generate.treering import TreeRingKey
from aigc.generate.watermark import load_key, save_key

from conftest import CORES
from test_ddpm import tiny


def manifest_of(png: bytes) -> dict:
    """The active manifest and validation state, read by the C2PA library itself."""
    with c2pa.Reader("image/png", io.BytesIO(png)) as r:
        store = json.loads(r.json())
    return {"active": store["manifests"][store["active_manifest"]], "status": store.get("validation_status", [])}


def retitled(png: bytes) -> bytes:
    """The PNG with its Software text chunk rewritten, the chunk's CRC made right (a careful forger)."""
    out, i = bytearray(png[:8]), 8
    while i < len(png):
        length = int.from_bytes(png[i:i + 4], "big")
        kind, body = png[i + 4:i + 8], png[i + 8:i + 8 + length]
        if kind == b"tEXt" and body.startswith(b"Software"):
            body = b"Software\0made by hand"
        out += len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")
        i += 12 + length
    return bytes(out)


def assert_generated(png: bytes, **expected) -> None:
    m = manifest_of(png)
    codes = [s["code"] for s in m["status"]]
    assert all(c == "signingCredential.untrusted" for c in codes), codes  # only: a development certificate
    labels = {a["label"]: a["data"] for a in m["active"]["assertions"]}
    actions = labels["c2pa.actions.v2"]["actions"]
    assert actions[0]["action"] == "c2pa.created" and actions[0]["digitalSourceType"] == TRAINED
    for k, v in expected.items():
        assert json.loads(labels["org.aigc.generation"]["provenance"])[k] == v


def test_every_png_aigc_writes_carries_valid_credentials(trained, tmp_path):
    from fastapi.testclient import TestClient

    from aigc.serve.app import create_app

    out = tmp_path / "grid.png"
    assert main(["sample", str(trained), "--n", "2", "--seed", "7", "--out", str(out), "--threads", str(CORES)]) == 0
    assert_generated(out.read_bytes(), seeds=[7, 8])
    assert json.loads(Image.open(out).text["aigc:seeds"]) == [7, 8]  # the PNG text chunks stay beside it
    grids = sorted((trained / "samples").glob("*.png"))  # training's sample grids
    assert grids
    assert_generated(grids[-1].read_bytes())
    client = TestClient(create_app({"diffusion": aigc.load(trained)}))
    r = client.post("/v1/images/generations", json={"model": "diffusion", "prompt": "1", "n": 1, "seed": 3, "steps": 2})
    assert r.status_code == 200, r.text
    assert_generated(base64.b64decode(r.json()["data"][0]["b64_json"]), seed=3)


def test_detect_reads_verifies_and_tells_apart_plain_and_tampered_images(trained, tmp_path, capsys):
    out = tmp_path / "made.png"
    assert main(["sample", str(trained), "--n", "1", "--seed", "1", "--out", str(out), "--threads", str(CORES)]) == 0
    capsys.readouterr()
    assert main(["detect", str(out)]) == 0
    said = capsys.readouterr().out
    assert "valid C2PA content credentials, made by a trained model" in said and "not on a trust list" in said
    plain = tmp_path / "plain.png"
    Image.open(out).save(plain)  # the same pixels, re-saved by a tool that drops the manifest
    assert main(["detect", str(plain)]) == 3
    assert "no C2PA content credentials" in capsys.readouterr().out
    (tmp_path / "tampered.png").write_bytes(retitled(out.read_bytes()))  # a text chunk changed after signing
    assert main(["detect", str(tmp_path / "tampered.png"), "--json"]) == 5
    report = json.loads(capsys.readouterr().out)
    assert report["state"] == "invalid" and any("dataHash.mismatch" in p for p in report["problems"])
    for name, data in [("text.png", b"hello"), ("empty.png", b""), ("cut.png", plain.read_bytes()[:60])]:
        (tmp_path / name).write_bytes(data)
        assert main(["detect", str(tmp_path / name)]) == 2
        assert "not a readable PNG image" in capsys.readouterr().err
    assert read_credentials(tmp_path / "tampered.png").state == "invalid"


# ---------------------------------------------------------------- Tree-Ring
def test_the_rings_keep_the_noise_real_and_the_test_calibrated():
    key = TreeRingKey("ab" * 32, "treering", 4, 0, 28, 1)
    noise = torch.randn(2000, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    marked = key.imprint(noise)
    f = torch.fft.fftshift(torch.fft.fft2(marked[:, 0].double(), norm="ortho"), dim=(-2, -1))
    assert torch.allclose(f[:, key.disc()].real, key.pattern().double()[key.disc()].expand(2000, -1), atol=1e-5)
    assert marked.dtype == noise.dtype and abs(marked.pow(2).mean() - 1) < 0.05  # real, about unit energy
    z = torch.tensor([d.z for d in detect_noise(key, noise)])
    assert abs(z.mean()) < 0.1 and abs(z.std() - 1) < 0.1  # N(0, 1) without the key:
    assert 0.005 < (z >= 2.326).float().mean() < 0.02 and (z >= 4).sum() <= 2  # 1% above its 99th percentile
    assert min(d.z for d in detect_noise(key, marked)) > 4
    other = TreeRingKey("cd" * 32, "treering", 4, 0, 28, 1)
    assert max(d.z for d in detect_noise(other, marked)) < 4  # another key does not find it


def test_ddim_inversion_undoes_the_sampler():
    model = tiny()
    torch.manual_seed(1)
    with torch.no_grad():  # a net that predicts something: the untrained one predicts zeros
        for p in model.sampler_net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    sampler = sampler_for(model, "ddim")
    sampler.clip = False
    x_t = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x, cond = x_t, Condition(torch.full((4,), -1))
    with torch.no_grad():
        for t in sampler.set_timesteps(10):
            x = sampler.step(guided(model.sampler_net, x, t, cond, 0.0), t, x)
    assert (invert(model, x, 10) - x_t).abs().max() < 0.1  # the plain inversion: close
    assert (invert(model, x, 10, refine=2) - x_t).abs().max() < 1e-3  # solved at each step: exact


def test_keygen_sample_and_detect_an_image_watermark(trained, tmp_path, capsys):
    key = tmp_path / "image.key"
    assert main(["keygen", str(trained), "--out", str(key)]) == 0
    k = load_key(key)
    assert isinstance(k, TreeRingKey) and (k.image_size, k.channels) == (28, 1)
    model = aigc.load(trained)
    plain, _, _ = model.diffuse(2, "1", seed=5)
    model.use_watermark(k)
    marked, _, _ = model.diffuse(2, "1", seed=5)
    assert not torch.allclose(plain, marked, atol=1e-3)  # the rings changed the starting noise
    out = tmp_path / "one.png"
    assert main(["sample", str(trained), "--n", "1", "--prompt", "1", "--seed", "5", "--out", str(out),
                 "--watermark", str(key), "--threads", str(CORES)]) == 0
    capsys.readouterr()
    code = main(["detect", str(trained), str(out), "--key", str(key), "--json"])
    d = json.loads(capsys.readouterr().out)
    assert code == (0 if d["verdict"] == "watermarked" else 3) and np.isfinite(d["z"]) and 0 <= d["p_value"] <= 1


def test_image_watermark_and_credentials_bad_input(trained, tmp_path, capsys):
    key = tmp_path / "image.key"
    save_key(TreeRingKey("ab" * 32, "treering", 4, 0, 32, 1), key)
    bad = tmp_path / "bad.key"
    bad.write_text(json.dumps({"key": "ab" * 32, "scheme": "treering", "radius": 40, "channel": 0, "image_size": 28,
                               "channels": 1}))
    (tmp_path / "notes.txt").write_text("hello")
    cases = [
        (["sample", str(trained), "--n", "1", "--out", str(tmp_path / "x.png"), "--watermark", str(key)],
         "made for 1x32x32 images; this model makes 1x28x28"),
        (["sample", str(trained), "--n", "1", "--out", str(tmp_path / "x.png"), "--watermark", str(bad)],
         "radius = 40: expected an integer from 1 to 13"),
        (["sample", "tang-base", "--watermark", str(bad)], "radius = 40"),
        (["detect", str(tmp_path / "missing.png")], "no such image file"),
        (["detect", str(tmp_path / "notes.txt")], "--key KEY is needed"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(AigcError, match="Tree-Ring key marks a diffusion model"):
        aigc.load("tang-base").use_watermark(load_key(tmp_path / "image.key"))


def test_the_development_chain_is_made_once_private_and_refused_in_a_shared_folder(tmp_path):
    import os
    import stat
    import threading

    from aigc.formats.credentials import _dev_chain

    folder = tmp_path / "c2pa"
    results = []
    threads = [threading.Thread(target=lambda: results.append(_dev_chain(folder))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and len(set(results)) == 1  # four processes' worth of first use: one chain
    assert stat.S_IMODE(os.stat(folder / "dev-key.pem").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    os.chmod(folder, 0o777)
    with pytest.raises(AigcError, match="others may write to it"):
        _dev_chain(folder)
    key = tmp_path / "k.json"
    save_key(TreeRingKey("ab" * 32, "treering", 4, 0, 28, 1), key)
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    with pytest.raises(AigcError, match="exists; a key is never overwritten"):
        save_key(TreeRingKey("cd" * 32, "treering", 4, 0, 28, 1), key)
    raw = json.loads(key.read_text())
    (tmp_path / "bool.json").write_text(json.dumps({**raw, "radius": True}))
    with pytest.raises(AigcError, match="radius = True"):
        load_key(tmp_path / "bool.json")
