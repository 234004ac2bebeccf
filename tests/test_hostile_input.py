"""Hostile but fair input outside the code sandbox: output paths that are links or devices, two
trainings into one folder, a write that cannot finish, image files that lie about their size or
stand on their side, text that is not valid Unicode or is cut inside a character, browsers on
another origin, metrics on too few samples."""

from __future__ import annotations

import json
import os
import resource
import signal
import stat
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import API_KEY, run_cli, start_server, tang_documents, tiny_config
from PIL import Image

from aigc.atomic import write_json
from aigc.config import SampleConfig
from aigc.data.images import read_image_file
from aigc.data.tokenizer import train_bpe_tokenizer
from aigc.errors import AigcError
from aigc.evaluate.images import frechet_distance_features
from aigc.generate.text import TextModel, _byte_level_table


def one_line_error(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(w in last for w in words), r.stderr


# ---------------------------------------------------------------- output paths
@pytest.mark.parametrize("kind", ["symlink", "fifo", "device", "folder"])
def test_an_output_path_that_is_not_a_plain_file_is_never_replaced(kind, served_model_folders, tmp_path):
    out = tmp_path / "grid.png"
    target = tmp_path / "elsewhere.png"
    if kind == "symlink":
        target.write_bytes(b"mine")
        out.symlink_to(target)
    elif kind == "fifo":
        os.mkfifo(out)
    elif kind == "device":
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root")
        os.mknod(out, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # what /dev/null is
    else:
        out.mkdir()
        out = tmp_path / "grid.png"
    before = os.lstat(out)
    r = run_cli("sample", str(served_model_folders["images"]), "--n", "4", "--out", str(out), "--threads", "1")
    if kind == "folder":
        one_line_error(r, str(out), "folder")
    else:
        one_line_error(r, str(out), {"symlink": "symbolic link", "fifo": "FIFO", "device": "device"}[kind])
    after = os.lstat(out)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    if kind == "symlink":
        assert target.read_bytes() == b"mine"


def test_atomic_writes_refuse_links_and_name_what_stopped_them(tmp_path):
    link = tmp_path / "eval.json"
    link.symlink_to(tmp_path / "nowhere.json")
    with pytest.raises(AigcError, match="symbolic link"):
        write_json(link, {"a": 1})
    assert link.is_symlink() and not (tmp_path / "nowhere.json").exists()


def test_export_never_replaces_a_model_folder_it_did_not_write(served_model_folders, tmp_path):
    downloaded = tmp_path / "downloaded"
    downloaded.mkdir()
    (downloaded / "config.json").write_text('{"model_type": "llama"}')
    (downloaded / "my-notes.txt").write_text("mine")
    r = run_cli("export", str(served_model_folders["text"]), str(downloaded))
    one_line_error(r, str(downloaded), "not an earlier aigc export")
    assert sorted(os.listdir(downloaded)) == ["config.json", "my-notes.txt"]
    out = tmp_path / "export"
    for _ in range(2):  # an earlier export of ours is replaced
        r = run_cli("export", str(served_model_folders["text"]), str(out))
        assert r.returncode == 0, r.stderr
    assert (out / "aigc_export.json").is_file()


# ---------------------------------------------------------------- one writer per run folder
def test_a_second_training_into_a_running_folder_is_refused_and_a_stale_lock_taken_over(tmp_path, small_corpus):
    cfg = tiny_config(tmp_path, small_corpus, max_steps=100_000, threads=1, checkpoint_interval=50)
    first = subprocess.Popen([sys.executable, "-m", "aigc", "train", str(cfg), "--quiet"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = tmp_path / "run" / ".lock"
    try:
        deadline = time.time() + 600
        while not (lock.is_file() and lock.read_text().strip()) or not (tmp_path / "run" / "config.toml").is_file():
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.2)
        second = run_cli("train", str(tmp_path / "run"), "--resume", "--quiet")
        one_line_error(second, "another training is writing to this run folder", f"pid {first.pid}")
        while not (tmp_path / "run" / "checkpoints" / "latest").is_file():
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.2)
    finally:
        first.send_signal(signal.SIGKILL)  # dies holding the lock: its file stays, its flock goes
        first.communicate()
    assert lock.is_file()
    third = run_cli("train", str(tmp_path / "run"), "--resume", "--quiet", "--train.max_steps=60")
    assert third.returncode == 0, third.stderr
    assert "taking over the lock left by a training that is gone" in third.stderr and f"pid {first.pid}" in third.stderr
    assert not lock.exists()
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == len(set((s, i) for i, s in enumerate(steps))) and steps == sorted(steps)


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_keeps_the_last_good_one(tmp_path, small_corpus):
    cfg = tiny_config(tmp_path, small_corpus, max_steps=10, checkpoint_interval=10, eval_interval=10)
    assert run_cli("train", str(cfg), "--quiet").returncode == 0
    ckpts = tmp_path / "run" / "checkpoints"
    weights = (ckpts / "step-000010" / "model.safetensors").stat().st_size
    limit = weights - 1  # the next model.safetensors cannot be written; everything smaller can

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    r = subprocess.run([sys.executable, "-m", "aigc", "train", str(tmp_path / "run"), "--resume", "--quiet",
                        "--train.max_steps=20"], capture_output=True, text=True, preexec_fn=small_files, timeout=600)
    one_line_error(r, str(ckpts / "step-000020"), "file-size limit")
    assert (ckpts / "latest").read_text().strip() == "step-000010"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step-000010"]


# ---------------------------------------------------------------- images
def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that declares ``width`` x ``height`` in its header and holds no pixels (a few bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


@pytest.mark.parametrize("size", [(30000, 30000), (11000, 11000)])
def test_an_image_declaring_too_many_pixels_is_refused_by_name_before_decoding(size, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("L", (28, 28), 128).save(folder / "fine.png")
    bomb = folder / "bomb.png"
    png_header_only(bomb, *size)
    r = run_cli("prepare", "--source", str(folder), "--data.image_size=28", "--out", str(tmp_path / "prep"), "--quiet")
    one_line_error(r, str(bomb), f"{size[0] * size[1]:,} pixels")
    assert not (tmp_path / "prep").exists()


def test_an_ico_holding_a_huge_png_is_stopped_while_it_opens(tmp_path):
    """ICO decodes its embedded PNG while opening: the pixel limit must hold there too."""
    inner = tmp_path / "inner.png"
    png_header_only(inner, 20000, 20000)
    data = inner.read_bytes()
    ico = struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(data), 22) + data
    disguised = tmp_path / "imgs" / "big.png"
    disguised.parent.mkdir()
    disguised.write_bytes(ico)
    with pytest.raises(AigcError, match="400,000,000 pixels"):
        read_image_file(disguised, 1, 28, True)


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((28, 28), np.uint8)
    pixels[:, 14:] = 255  # stored: left half black, right half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display" (a phone held upright)
    Image.fromarray(pixels, "L").save(tmp_path / "photo.jpg", quality=100, exif=exif)
    upright = read_image_file(tmp_path / "photo.jpg", 1, 28, True)[0]  # (28, 28)
    assert upright[:10].mean() < 40 and upright[-10:].mean() > 215  # shown: top black, bottom white


# ---------------------------------------------------------------- text at the byte level
class Scripted(torch.nn.Module):
    """A language model that greedily says ``script`` (token ids) after any prompt of ``prompt_len``
    tokens: a real model for the engine's protocol whose output a test chooses."""

    family = "gpt"

    class Cache:
        def __init__(self):
            self.pos = 0

    def __init__(self, vocab_size: int, script: list[int], prompt_len: int):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # the engine reads the device from a parameter
        self.config = type("Config", (), {"vocab_size": vocab_size})()
        self.script, self.prompt_len, self.context_length = script, prompt_len, 512

    def new_cache(self, batch_size, max_len=None, per_row=False):
        return Scripted.Cache()

    def forward(self, idx, cache=None):
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if cache is not None:
            cache.pos += T
        logits = torch.full((B, T, self.config.vocab_size), -1e9)
        for t in range(T):
            k = start + t - (self.prompt_len - 1)  # the k-th new token is predicted here
            if 0 <= k < len(self.script):
                logits[:, t, self.script[k]] = 0.0
        return logits


@pytest.fixture(scope="module")
def bpe():
    return train_bpe_tokenizer(tang_documents(100) + ["xa€ab"], 300, show_progress=False)


def scripted(bpe, text_or_bytes) -> TextModel:
    """A TextModel that writes these bytes, one byte-level token per byte, after the prompt "x"."""
    chars = {b: c for c, b in _byte_level_table().items()}
    data = text_or_bytes if isinstance(text_or_bytes, bytes) else text_or_bytes.encode("utf-8")
    script = [bpe.tk.token_to_id(chars[b]) for b in data] + [bpe.eot_id]
    prompt_len = len([bpe.bos_id] + bpe.encode("x"))
    return TextModel(Scripted(bpe.vocab_size, script, prompt_len), bpe, SampleConfig(temperature=0.0),
                     Path("scripted"))


def test_a_stop_string_never_leaks_its_first_character(bpe):
    tm = scripted(bpe, "a€b")  # "€" takes three byte tokens: the text is incomplete after the first
    pieces = list(tm.stream("x", stop=["a€"], token_healing=False))
    assert "".join(pieces) == "" and all("\ufffd" not in p for p in pieces)
    assert tm.generate("x", stop=["€b"], token_healing=False) == ["xa"]


def test_no_replacement_character_is_made_up(bpe):
    tm = scripted(bpe, "a€b")
    cut = tm.generate("x", max_new_tokens=3, token_healing=False)[0]  # a, then two of the three bytes of €
    assert cut == "xa"
    pieces = list(tm.stream("x", max_new_tokens=3, token_healing=False))
    assert "".join(pieces) == "a" and not any("\ufffd" in p for p in pieces)
    invalid = scripted(bpe, b"a\xff\xfeb\xe2\x82")  # bytes no UTF-8 holds, then an unfinished character
    assert invalid.generate("x", token_healing=False) == ["xab"]


def test_a_prompt_that_is_not_valid_unicode_is_a_one_line_error(served_model_folders):
    r = subprocess.run([sys.executable, "-m", "aigc", "sample", str(served_model_folders["text"]), "--prompt",
                        b"caf\xe9", "--max-new-tokens", "3", "--threads", "1"], capture_output=True, text=True)
    one_line_error(r, "prompt", "invalid Unicode at character 3", "U+DCE9")
    assert r.stdout == ""  # nothing printed before the error


def test_the_server_answers_400_to_a_lone_surrogate(server):
    auth = {"Authorization": f"Bearer {API_KEY}"}
    body = '{"model": "text", "prompt": "ab\\ud800c", "max_tokens": 2}'
    for route in ("/v1/completions", "/tokenize"):
        r = httpx.post(server + route, content=body, headers={**auth, "Content-Type": "application/json"}, timeout=60)
        assert r.status_code == 400, (route, r.text)
        assert "invalid Unicode at character 2" in r.json()["error"]["message"]
    chat = {"model": "chat", "messages": [{"role": "user", "content": "hi\ud800"}], "max_tokens": 2}
    r = httpx.post(server + "/v1/chat/completions", content=json.dumps(chat), headers={**auth,
                   "Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 400 and "invalid Unicode" in r.json()["error"]["message"]
    assert httpx.get(server + "/health", timeout=10).status_code == 200


# ---------------------------------------------------------------- CORS
def test_cors_is_off_by_default_and_on_for_the_named_origin(served_model_folders, server):
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    off = httpx.options(server + "/v1/chat/completions", headers=preflight, timeout=10)
    assert "access-control-allow-origin" not in off.headers
    proc, url = start_server({"text": served_model_folders["text"]}, "--api-key", API_KEY,
                             "--cors-origin", "https://app.example")
    try:
        on = httpx.options(url + "/v1/chat/completions", headers=preflight, timeout=10)  # no key, as browsers send it
        assert on.status_code == 200 and on.headers["access-control-allow-origin"] == "https://app.example"
        assert "authorization" in on.headers["access-control-allow-headers"].lower()
        other = httpx.options(url + "/v1/completions", headers={**preflight, "Origin": "https://evil.example"},
                              timeout=10)
        assert other.headers.get("access-control-allow-origin") != "https://evil.example"
        r = httpx.post(url + "/v1/completions", json={"model": "text", "prompt": "a", "max_tokens": 2},
                       headers={"Origin": "https://app.example"}, timeout=60)
        assert r.status_code == 401  # the key is still needed for the request itself
        r = httpx.post(url + "/v1/completions", json={"model": "text", "prompt": "a", "max_tokens": 2},
                       headers={"Origin": "https://app.example", "Authorization": f"Bearer {API_KEY}"}, timeout=60)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    r = run_cli("serve", str(served_model_folders["text"]), "--cors-origin", "https://app.example/")
    one_line_error(r, "--cors-origin", "scheme://host")


def test_a_loopback_server_answers_only_its_own_host_names(server):
    """DNS rebinding: a page on attacker.example resolving to 127.0.0.1 sends its own Host header."""
    assert httpx.get(server + "/health", timeout=10).status_code == 200
    r = httpx.get(server + "/v1/models", headers={"Host": "attacker.example", "Authorization": f"Bearer {API_KEY}"},
                  timeout=10)
    assert r.status_code == 400


# ---------------------------------------------------------------- metrics on small samples
def test_fd_warns_on_fewer_samples_than_dimensions():
    rng = np.random.default_rng(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frechet_distance_features(rng.normal(size=(500, 16)), rng.normal(size=(500, 16)))
        assert not caught
        frechet_distance_features(rng.normal(size=(500, 16)), rng.normal(size=(10, 16)))
    assert any("10 generated samples in 16 feature dimensions" in str(w.message) for w in caught)
