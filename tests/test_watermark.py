"""The text watermark (Kirchenbauer et al. 2023): generation with a key, detection by z-score,
the key file's checks, the CLI and the server."""

from __future__ import annotations

import json
import math

import httpx
import pytest
from conftest import run_cli, start_server, tang_documents

import aigc
from aigc.errors import AigcError
from aigc.evaluate.watermark import detect
from aigc.generate.watermark import WatermarkKey, is_green, load_key, new_key, save_key


@pytest.fixture(scope="module")
def text_model():
    """tang-base: a character tokenizer, so a text re-encodes to the very tokens generated."""
    return aigc.load("tang-base")


def key_for(tm, scheme: str = "lefthash", delta: float = 2.0) -> WatermarkKey:
    """A fixed key (tests stay deterministic; aigc keygen draws a random one)."""
    return WatermarkKey("5a" * 32, scheme, 0.25, delta, 4 if scheme == "selfhash" else 1,
                        tm.tokenizer.vocab_size, tm.tokenizer.fingerprint())


def ids_of(tm, text: str) -> list[int]:
    return [tm.tokenizer.bos_id] + tm.tokenizer.encode(text)


@pytest.mark.parametrize("scheme", ["lefthash", "selfhash"])
def test_watermarked_text_is_detected_and_plain_text_is_not(text_model, scheme):
    key = key_for(text_model, scheme, delta=4.0)
    plain = text_model.generate("春", n=3, seed=0, max_new_tokens=60, include_prompt=False, stop_at_document_end=False)
    text_model.use_watermark(key)
    try:
        marked = text_model.generate("春", n=3, seed=0, max_new_tokens=60, include_prompt=False,
                                     stop_at_document_end=False)
    finally:
        text_model.use_watermark(None)
    skip = len(ids_of(text_model, "春"))
    for text in marked:
        d = detect(key, ids_of(text_model, "春" + text), skip)
        assert d.verdict == "watermarked" and d.z > 6, (d, text)
    for text in plain:
        d = detect(key, ids_of(text_model, "春" + text), skip)
        assert d.verdict == "not watermarked" and d.z < 3, (d, text)


def test_a_repeated_sentence_is_counted_once(text_model):
    key = key_for(text_model)
    lines = dict.fromkeys(line for doc in tang_documents(100) for line in doc.split("\n")[1:] if line)
    sentences = [s for s in lines if not text_model.tokenizer.missing_characters([s])][:200]
    share = {}  # a sentence whose tokens happen to be mostly green
    for s in sentences:
        ids = ids_of(text_model, s)
        share[s] = sum(is_green(key, ids[:i], ids[i]) for i in range(1, len(ids))) / (len(ids) - 1)
    lucky = max(share, key=share.get)
    assert share[lucky] >= 0.45
    ids = ids_of(text_model, lucky * 40)
    d = detect(key, ids)
    assert d.verdict != "watermarked" and d.tokens < len(ids) // 10
    naive_green = sum(is_green(key, ids[:i], ids[i]) for i in range(1, len(ids)))  # every repeat counted
    t = len(ids) - 1
    assert (naive_green - 0.25 * t) / math.sqrt(t * 0.25 * 0.75) > 4  # what the dedup protects against


def test_only_the_text_after_the_prompt_is_scored(text_model, tmp_path):
    key = key_for(text_model, delta=4.0)
    text_model.use_watermark(key)
    try:
        prompt = text_model.generate("秋", seed=1, max_new_tokens=80, stop_at_document_end=False)[0]
    finally:
        text_model.use_watermark(None)
    continuation = text_model.generate(prompt, seed=2, max_new_tokens=40, include_prompt=False,
                                       stop_at_document_end=False)[0]
    skip = len(ids_of(text_model, prompt))
    assert detect(key, ids_of(text_model, prompt + continuation)).verdict == "watermarked"  # the marked prompt
    assert detect(key, ids_of(text_model, prompt + continuation), skip).verdict != "watermarked"


def test_cli_keygen_sample_detect_and_bad_input(served_model_folders, tmp_path, capsys):
    from aigc.cli import main

    def cli(*args):  # in-process, as `aigc ARGS` (exit status, stdout, stderr)
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    folder = "tang-base"
    key = tmp_path / "key.json"
    assert cli("keygen", folder, "--out", str(key), "--delta", "4", "--scheme", "selfhash")[0] == 0
    code, _, err = cli("keygen", folder, "--out", str(key))
    assert code == 2 and "never overwritten" in err
    fixed = {**json.loads(key.read_text()), "key": "3c" * 32}  # a fixed secret: the same sample every run (a random
    key.write_text(json.dumps(fixed))  # one can end the poem in under 16 scored tokens: "too short to decide")
    out = tmp_path / "marked.txt"
    r = run_cli("sample", folder, "--prompt", "春", "--watermark", str(key), "--seed", "3", "--max-new-tokens", "60",
                "--out", str(out))  # the user's command, in its own process
    assert r.returncode == 0, r.stderr
    code, printed, err = cli("detect", folder, str(out), "--key", str(key), "--prompt", "春", "--json")
    assert code == 0 and json.loads(printed)["verdict"] == "watermarked", err

    other = tmp_path / "tiny.json"
    save_key(new_key(aigc.load(served_model_folders["text"]).tokenizer), other)
    code, _, err = cli("detect", folder, str(out), "--key", str(other))
    assert code == 2 and "made for another tokenizer" in err
    bad = json.loads(key.read_text())
    bad["gamma"] = 1.5
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    code, _, err = cli("detect", folder, str(out), "--key", str(tmp_path / "bad.json"))
    assert code == 2 and "bad.json: gamma = 1.5" in err
    (tmp_path / "empty.txt").write_text("  \n")
    code, _, err = cli("detect", folder, str(tmp_path / "empty.txt"), "--key", str(key))
    assert code == 2 and "empty text" in err
    (tmp_path / "blob.bin").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")
    code, _, err = cli("detect", folder, str(tmp_path / "blob.bin"), "--key", str(key))
    assert code == 2 and "binary file" in err
    del bad["delta"]
    (tmp_path / "missing.json").write_text(json.dumps(bad))
    with pytest.raises(AigcError, match="missing field 'delta'"):
        load_key(tmp_path / "missing.json")


def test_the_server_watermarks_and_detects(served_model_folders, tmp_path):
    from aigc.folders import resolve_model_folder

    key = tmp_path / "key.json"
    save_key(key_for(aigc.load("tang-base"), delta=4.0), key)
    proc, url = start_server({"tang": resolve_model_folder("tang-base"), "text": served_model_folders["text"]},
                             "--watermark", f"tang={key}")
    try:
        r = httpx.post(url + "/v1/completions", json={"model": "tang", "prompt": "春", "max_tokens": 60, "seed": 5,
                                                      "ignore_eos": True}, timeout=120).json()
        text = r["choices"][0]["text"]
        found = httpx.post(url + "/v1/detect", json={"model": "tang", "prompt": "春", "text": text}, timeout=60).json()
        assert found["verdict"] == "watermarked" and found["z"] > 4
        unmarked = httpx.post(url + "/v1/detect", json={"model": "text", "text": "春风"}, timeout=60)
        assert unmarked.status_code == 400 and "without a watermark" in unmarked.json()["error"]["message"]
        empty = httpx.post(url + "/v1/detect", json={"model": "tang", "text": ""}, timeout=60)
        assert empty.status_code == 400 and "empty" in empty.json()["error"]["message"]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
