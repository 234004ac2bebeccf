"""Text-to-image diffusion: the color-fashion builder (colours, captions, held-out pairs), the caption
encoder's input checks, a tiny model trained on prompts, sampling from a prompt on the CLI and the
server (with streamed progress), the checkers of the evaluation, and bad input."""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import aigc
from aigc.data.captions import (COLORS, GARMENTS, HELD_OUT, build_color_fashion, caption_tokenizer, colorize,
                                encode_prompts, garment_colours, garment_gray)
from aigc.data.images import FASHION_MNIST_DIR, read_idx_folder
from aigc.errors import AigcError
from aigc.generate.diffusion import Condition, guided

from conftest import CORES, run_cli
from test_ddpm import tiny

needs_fmnist = pytest.mark.skipif(not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
                                  reason="Debian's dataset-fashion-mnist is not installed (make fashion-mnist)")


@pytest.fixture(scope="module")
def fmnist():
    splits = read_idx_folder(FASHION_MNIST_DIR)
    return {"train": (splits["train"][0][:3000], splits["train"][1][:3000]),
            "val": (splits["test"][0][:800], splits["test"][1][:800])}


# ---------------------------------------------------------------- the dataset and its checkers
@needs_fmnist
def test_color_fashion_paints_captions_and_holds_pairs_out_of_train(fmnist):
    built = build_color_fashion(fmnist, seed=1234)
    x, y, colours, captions = built["train"]
    assert x.shape == (3000, 3, 32, 32) and x.dtype == np.uint8
    pairs = set(zip(colours.tolist(), y.tolist()))
    assert not pairs & set(HELD_OUT) and len(HELD_OUT) == 10
    assert set(HELD_OUT) <= set(zip(built["val"][2].tolist(), built["val"][1].tolist()))
    assert len(set(colours.tolist())) == len(COLORS) >= 8
    for c, k, text in zip(colours[:200], y[:200], captions[:200]):
        en, zh = COLORS[c][0] in text and GARMENTS[k][0] in text, COLORS[c][1] in text and GARMENTS[k][1] in text
        assert en or zh, text
    chinese = sum(any(ord(ch) > 0x2E80 for ch in t) for t in captions) / len(captions)
    assert 0.4 < chinese < 0.6
    # the same seed builds the same dataset
    again = build_color_fashion(fmnist, seed=1234)["train"]
    assert np.array_equal(again[0], x) and again[3] == captions


@needs_fmnist
def test_the_checkers_recover_garment_colour_and_intensity_of_real_images(fmnist):
    gray, labels = fmnist["val"]
    colours = np.arange(len(gray)) % len(COLORS)
    images = torch.from_numpy(colorize(gray, colours)).float() / 127.5 - 1
    assert torch.equal(garment_gray(images), torch.from_numpy(gray[:, None].copy()).float() / 127.5 - 1)
    found = garment_colours(images)
    assert (found == torch.from_numpy(colours)).float().mean() > 0.99
    assert garment_colours(torch.full((1, 3, 32, 32), -1.0)).tolist() == [-1]  # nothing bright: no colour


def test_prompts_are_normalised_checked_and_padded():
    tok = caption_tokenizer(["a red dress", "红色的连衣裙"])
    rows = encode_prompts(tok, ["A  RED dress", "", "ａ red dress"], 16)
    assert rows.shape == (3, 16) and rows.dtype == torch.long
    assert torch.equal(rows[0], rows[2]) and not rows[1].any() and (rows[0] != 0).sum() == len("a red dress")
    with pytest.raises(AigcError, match="has 17 characters; this model reads at most 16"):
        encode_prompts(tok, ["a red dress dress"], 16)
    with pytest.raises(AigcError, match="'鞋' .* not in the tokenizer's vocabulary"):
        encode_prompts(tok, ["红色的鞋"], 16)


def test_text_guidance_0_and_1_are_the_null_and_the_prompt():
    model = tiny("text", vocab_size=20, text_len=6, text_width=16)
    torch.nn.init.normal_(model.net.out[-1].weight)  # zero at initialisation: every prediction would be 0
    x, t = torch.randn(2, 1, 8, 8), 30
    tokens = torch.tensor([[3, 4, 0, 0, 0, 0], [5, 0, 0, 0, 0, 0]])
    ts = torch.full((2,), t)
    with torch.no_grad():
        u = model.net(x, ts, None, torch.zeros_like(tokens))
        c = model.net(x, ts, None, tokens)
        assert torch.allclose(guided(model.net, x, t, Condition(tokens=tokens), 0.0), u, atol=1e-6)
        assert torch.allclose(guided(model.net, x, t, Condition(tokens=tokens), 1.0), c, atol=1e-6)
        assert not torch.allclose(u, c)


# ---------------------------------------------------------------- a tiny model trained on prompts
@pytest.fixture(scope="module")
def t2i_run(tmp_path_factory) -> Path:
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (make fashion-mnist)")
    tmp = tmp_path_factory.mktemp("t2i")
    r = run_cli("train", "configs/color-fashion-t2i.toml", f"--train.out_dir={tmp / 'run'}",
                f"--data.prepared_dir={tmp / 'prepared'}", "--model.base_channels=8", "--model.channel_mults=[1,2]",
                "--model.blocks_per_level=1", "--model.heads=2", "--model.groups=4", "--model.text_width=16",
                "--model.text_layers=1", "--model.timesteps=50", "--train.batch_size=8", "--train.max_steps=4",
                "--train.warmup_steps=0", "--train.eval_interval=4", "--train.eval_batches=1",
                "--train.checkpoint_interval=4", "--train.max_minutes=0", "--sample.n=20", "--sample.steps=2",
                f"--train.threads={CORES}", "--quiet")
    assert r.returncode == 0, r.stderr
    return tmp / "run"


def test_a_text_model_samples_from_english_and_chinese_prompts(t2i_run, tmp_path):
    ckpt = t2i_run / "checkpoints" / "step-000004"
    assert (ckpt / "tokenizer.json").is_file()
    assert json.loads((ckpt / "config.json").read_text())["conditioning"] == "text"
    assert Image.open(t2i_run / "samples" / "step-000004.png").size == (10 * 34 + 2, 2 * 34 + 2)
    model = aigc.load(t2i_run)
    a, seeds, names = model.diffuse(3, "a green dress", seed=5, settings=model.settings(steps=2))
    b, _, _ = model.diffuse(1, "绿色的连衣裙", seed=7, settings=model.settings(steps=2))
    assert a.shape == (3, 3, 32, 32) and names == ["a green dress"] * 3 and torch.isfinite(a).all()
    alone, _, _ = model.diffuse(1, "a green dress", seed=7, settings=model.settings(steps=2))
    assert (alone[0] - a[2]).abs().max() < 1e-4  # image 2 of the batch is seed 7 alone (up to rounding)
    assert (b[0] - a[2]).abs().max() > 1e-2  # another prompt, the same seed: another image
    with pytest.raises(AigcError, match=r"text-to-image model: ask it with \.diffuse"):
        model.generate(2)
    out = tmp_path / "g.png"
    r = run_cli("sample", str(t2i_run), "--prompt", "a red bag", "--n", "2", "--steps", "2", "--seed", "1",
                "--out", str(out), "--threads", str(CORES))
    assert r.returncode == 0, r.stderr
    params = json.loads(Image.open(out).text["aigc:parameters"])
    assert params["prompt"] == "a red bag" and params["conditioned_on"] == ["a red bag"] * 2


def test_text_model_bad_input(t2i_run, tmp_path, capsys):
    from aigc.cli import main

    out = str(tmp_path / "x.png")
    for flags, message in [(["--prompt", "x" * 49], "has 49 characters; this model reads at most 48"),
                           (["--prompt", "a dress ☃"], "'☃' (U+2603) is not in"),
                           (["--prompt", "a dress<|endoftext|>"], "holds the special token '<|endoftext|>'"),
                           (["--prompt", "a dress", "--class", "Dress"], "--class is for class-conditional"),
                           (["--guidance-scale", "-1"], "guidance_scale = -1.0")]:
        code = main(["sample", str(t2i_run), *flags, "--steps", "1", "--out", out, "--threads", str(CORES)])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (flags, err)
        assert not Path(out).exists()
    code = main(["sample", str(t2i_run), "--prompt", "", "--n", "1", "--steps", "1", "--out", out,
                 "--threads", str(CORES)])
    assert code == 0 and "an empty prompt: unconditional samples" in capsys.readouterr().err


def test_the_server_streams_progress_then_the_images(t2i_run):
    from fastapi.testclient import TestClient

    from aigc.serve.app import create_app

    client = TestClient(create_app({"t2i": aigc.load(t2i_run)}))
    info = client.get("/v1/models/t2i").json()["aigc"]
    assert info["prompt"] is True and info["defaults"]["steps"] == 2
    body = {"model": "t2i", "prompt": "粉色的包", "n": 2, "seed": 3, "steps": 3, "stream": True}
    with client.stream("POST", "/v1/images/generations", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    events = [json.loads(e) for e in events[:-1]]
    assert [e["step"] for e in events[:-1]] == [1, 2, 3] and all(e["total_steps"] == 3 for e in events[:-1])
    done = events[-1]
    assert done["type"] == "image_generation.completed" and len(done["data"]) == 2
    png = Image.open(io.BytesIO(base64.b64decode(done["data"][1]["b64_json"])))
    assert png.size == (32, 32) and json.loads(png.text["aigc:seed"]) == 4 and png.text["aigc:prompt"] == "粉色的包"
    plain = client.post("/v1/images/generations", json={**body, "stream": False, "n": 1, "seed": 4}).json()
    alone = Image.open(io.BytesIO(base64.b64decode(plain["data"][0]["b64_json"])))
    # image k of a batch is the image of its seed alone, up to float rounding (one 8-bit level)
    assert np.abs(np.asarray(alone).astype(int) - np.asarray(png).astype(int)).max() <= 1
    r = client.post("/v1/images/generations", json={**body, "prompt": "a dress ☃"})
    assert r.status_code == 400 and "U+2603" in r.json()["error"]["message"]


def test_an_abandoned_image_stream_is_cancelled_and_a_gan_is_not_streamed(t2i_run, server):
    import httpx

    from conftest import API_KEY, start_server
    from test_serve import metric

    auth = {"Authorization": f"Bearer {API_KEY}"}
    r = httpx.post(server + "/v1/images/generations", json={"model": "images", "stream": True}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream"
    proc, url = start_server({"t2i": t2i_run})
    try:
        body = {"prompt": "a red bag", "n": 64, "steps": 50, "stream": True}
        with httpx.stream("POST", url + "/v1/images/generations", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    assert json.loads(line[6:])["step"] == 1
                    break  # one progress event, then hang up
        deadline = time.time() + 60
        while time.time() < deadline and metric(url, "aigc_requests_cancelled_total") < 1:
            time.sleep(0.2)
        assert metric(url, "aigc_requests_cancelled_total") == 1
        assert metric(url, "aigc_requests_in_flight") == 0
        assert metric(url, "aigc_images_generated_total", '{model="t2i"}') == 0  # no image was made for nobody
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_the_evaluation_scores_cells_and_its_ceiling(t2i_run):
    from aigc.data.images import ImageData
    from aigc.evaluate.t2i import evaluate_text_to_image

    model = aigc.load(t2i_run)
    data = ImageData(t2i_run.parent / "prepared")
    res = evaluate_text_to_image(model, data, per_prompt=1, fd_images=20, guidance=(0.0, 3.0), progress=False)
    assert list(res["cells"]) == ["0", "3"]
    assert list(res["cells"]["3"]) == ["seen en", "seen zh", "held-out en", "held-out zh"]
    assert all(0 <= c["class_accuracy"] <= 1 and c["images"] == 10 for c in res["cells"]["0"].values())
    assert res["real"]["colour_accuracy"] == 1.0 and res["real"]["class_accuracy"] > 0.75  # the checkers on real data
    assert np.isfinite(res["fd"]["fd"])


def test_a_folder_with_metadata_jsonl_is_a_captioned_dataset(tmp_path, capsys):
    from aigc.cli import main
    from aigc.data.images import ImageData

    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    rows = []
    for i in range(6):
        name = f"sub/{i}.png" if i % 2 else f"{i}.png"
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(folder / name)
        rows.append(json.dumps({"file_name": name, "text": f"picture {i}"}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "prepared"
    args = ["prepare", "--source", str(folder), "--data.channels=3", "--data.image_size=8", "--data.val_fraction=0.34",
            "--quiet"]
    assert main([*args, "--out", str(out)]) == 0
    data = ImageData(out)
    assert sorted(data.captions["train"] + data.captions["val"]) == [f"picture {i}" for i in range(6)]
    assert len(data.captions["val"]) == 2 and data.colors is None
    x, _ = data.tensors("train", [0])
    k = int(data.captions["train"][0].split()[1])  # each caption stays with its own image
    assert x[0, 0, 0, 0].item() == pytest.approx(40 * k / 127.5 - 1)
    (folder / "metadata.jsonl").write_text("\n".join(rows[:5]) + "\n", encoding="utf-8")
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "p2")]) == 2
    assert "no caption for 'sub/5.png'" in capsys.readouterr().err
    (folder / "metadata.jsonl").write_text('{"file_name": "0.png"}\n', encoding="utf-8")
    assert main([*args, "--out", str(tmp_path / "p3")]) == 2
    assert 'metadata.jsonl:1: expected an object with "file_name" and "text"' in capsys.readouterr().err


def test_metadata_jsonl_is_refused_when_bad_and_found_without_flags(tmp_path, capsys):
    from aigc.cli import main
    from aigc.data.images import looks_like_images

    folder = tmp_path / "mine"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (60 * i, 0, 0)).save(folder / f"{i}.png")
    rows = [json.dumps({"file_name": f"{i}.png", "text": f"a red dress\u2028{i}"}) for i in range(3)]
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert looks_like_images(folder)  # the captions file does not make it a text corpus
    args = ["prepare", "--source", str(folder), "--data.channels=3", "--data.image_size=8", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "p0")]) == 0
    (folder / "metadata.jsonl").write_text("\n".join([*rows, rows[0]]) + "\n", encoding="utf-8")
    assert main([*args, "--out", str(tmp_path / "p1")]) == 2
    assert "metadata.jsonl:4: a second caption for '0.png'" in capsys.readouterr().err
    (folder / "metadata.jsonl").write_bytes(b'{"file_name": "0.png", "text": "\xff"}\n')
    assert main([*args, "--out", str(tmp_path / "p2")]) == 2
    assert "metadata.jsonl: not UTF-8" in capsys.readouterr().err


def test_fine_tuning_a_text_model_reads_new_captions_with_the_base_tokenizer(t2i_run, tmp_path):
    from aigc.data.tokenizer import Tokenizer

    base = t2i_run / "checkpoints" / "step-000004"
    folder = tmp_path / "mine"
    folder.mkdir()
    captions = ["a green sneaker", "a photo of a blue bag", "绿色的包", "a pink dress"]
    for i in range(4):
        Image.new("RGB", (32, 32), (0, 60 * i, 0)).save(folder / f"{i}.png")
    lines = [json.dumps({"file_name": f"{i}.png", "text": c}, ensure_ascii=False) for i, c in enumerate(captions)]
    (folder / "metadata.jsonl").write_text("\n".join(lines), encoding="utf-8")
    recipe = tmp_path / "ft.toml"
    recipe.write_text(f"""[data]\nsource = "{folder}"\nchannels = 3\nimage_size = 32\nval_fraction = 0.25\nprepared_dir = "{tmp_path / 'p'}"\n
[model]\nfamily = "ddpm"\n[train]\ninit_from = "{base}"\nout_dir = "{tmp_path / 'run'}"\nbatch_size = 2
max_steps = 2\nwarmup_steps = 0\neval_interval = 2\neval_batches = 1\ncheckpoint_interval = 2\nmax_minutes = 0
threads = {CORES}\n[sample]\nn = 2\nsteps = 2\n""", encoding="utf-8")
    r = run_cli("train", str(recipe), "--quiet")
    assert r.returncode == 0, r.stderr
    tuned = tmp_path / "run" / "checkpoints" / "step-000002"
    assert Tokenizer.load(tuned).fingerprint() == Tokenizer.load(base).fingerprint()
    lines[2] = json.dumps({"file_name": "2.png", "text": "一只猫"}, ensure_ascii=False)  # 只 and 猫: never read by the base
    (folder / "metadata.jsonl").write_text("\n".join(lines), encoding="utf-8")
    r = run_cli("train", str(recipe), f"--train.out_dir={tmp_path / 'run2'}", f"--data.prepared_dir={tmp_path / 'p2'}",
                "--quiet")
    assert r.returncode == 2 and "caption '一只猫'" in r.stderr and "U+53EA" in r.stderr, r.stderr
    assert not (tmp_path / "run2" / "checkpoints").exists()


def test_the_shipped_model_draws_the_colour_and_garment_asked_for():
    """color-fashion-t2i by name: a seen and a held-out pair, in English and in Chinese."""
    from aigc.evaluate.t2i import score

    torch.set_num_threads(CORES)
    model = aigc.load("color-fashion-t2i")
    asked = [("a red dress", 0, 3), ("红色的连衣裙", 0, 3), ("a blue coat", 5, 4), ("一双紫色的运动鞋", 6, 7)]
    images = torch.cat([model.diffuse(1, p, seed=0)[0] for p, _, _ in asked])
    assert images.shape == (4, 3, 32, 32) and torch.isfinite(images).all()
    res = score(images, torch.tensor([c for _, c, _ in asked]), torch.tensor([g for _, _, g in asked]))
    assert res["colour_accuracy"] == 1.0 and res["class_accuracy"] >= 0.75, res
