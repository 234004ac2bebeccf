"""Bad input: one-line error, non-zero exit, no traceback, nothing overwritten."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from conftest import run_cli, tiny_config


def assert_clean_error(result, *needles: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def tree_digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, small_corpus) -> Path:
    """A tiny finished GPT run, shared by the tests that need one."""
    tmp = tmp_path_factory.mktemp("run")
    cfg = tiny_config(tmp, small_corpus, max_steps=10, checkpoint_interval=10)
    result = run_cli("train", str(cfg), "--quiet")
    assert result.returncode == 0, result.stderr
    return tmp / "run"


def prepare_source(path: Path, *extra: str):
    return run_cli("prepare", "--source", str(path), "--out", str(path.parent / "prepared"), "--quiet", *extra)


def test_empty_corpus(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("\n  \n\n", encoding="utf-8")
    assert_clean_error(prepare_source(path), str(path), "empty")
    assert not (tmp_path / "prepared").exists()


def test_binary_file(tmp_path):
    path = tmp_path / "blob.txt"
    path.write_bytes(bytes(range(256)) * 4)
    assert_clean_error(prepare_source(path), str(path), "binary")


def test_invalid_utf8_names_file_and_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("春风又绿江南岸\n".encode() + "caf\xe9\n".encode("latin-1"))
    assert_clean_error(prepare_source(path), str(path), "invalid UTF-8", "byte offset 25")


def test_jsonl_without_the_field(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "一"}\n{"body": "二"}\n', encoding="utf-8")
    assert_clean_error(prepare_source(path), f"{path}:2", "'text'")


def test_missing_config_key(tmp_path, small_corpus):
    cfg = tiny_config(tmp_path, small_corpus)
    cfg.write_text(cfg.read_text().replace('family = "gpt"\n', ""), encoding="utf-8")
    assert_clean_error(run_cli("train", str(cfg)), "model.family")


def test_unknown_config_key(tmp_path, small_corpus):
    cfg = tiny_config(tmp_path, small_corpus)
    assert_clean_error(run_cli("train", str(cfg), "--train.lrr=0.1"), "train.lrr", "known keys")
    cfg.write_text(cfg.read_text() + "\n[optim]\nlr = 1\n", encoding="utf-8")
    assert_clean_error(run_cli("train", str(cfg)), "optim")
    assert not (tmp_path / "run").exists()


def test_negative_learning_rate(tmp_path, small_corpus):
    cfg = tiny_config(tmp_path, small_corpus, lr=-0.001)
    assert_clean_error(run_cli("train", str(cfg)), "train.lr = -0.001")
    assert not (tmp_path / "run").exists()


def test_block_size_zero(tmp_path, small_corpus):
    cfg = tiny_config(tmp_path, small_corpus)
    assert_clean_error(run_cli("train", str(cfg), "--model.block_size=0"), "model.block_size = 0")


def test_wrong_type(tmp_path, small_corpus):
    cfg = tiny_config(tmp_path, small_corpus)
    assert_clean_error(run_cli("train", str(cfg), "--train.max_steps=lots"), "train.max_steps", "int")


def test_prompt_of_unknown_characters(trained_run):
    result = run_cli("sample", str(trained_run), "--prompt", "明月😀", "--max-new-tokens", "5")
    assert_clean_error(result, "'😀'", "U+1F600", "not in the tokenizer's vocabulary")


def test_truncated_checkpoint(trained_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    weights = copy / "checkpoints" / "step-000010" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    assert_clean_error(run_cli("sample", str(copy), "--max-new-tokens", "5"), "model.safetensors", "corrupt")


def test_corrupt_checkpoint(trained_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    weights = copy / "checkpoints" / "step-000010" / "model.safetensors"
    weights.write_bytes(b"\x00" * 64 + weights.read_bytes()[64:])
    assert_clean_error(run_cli("sample", str(copy), "--max-new-tokens", "5"), "model.safetensors")
    config = copy / "checkpoints" / "step-000010" / "config.json"
    config.write_text("{not json", encoding="utf-8")
    assert_clean_error(run_cli("sample", str(copy), "--max-new-tokens", "5"), "config.json")


def test_checkpoint_with_mismatched_shapes(trained_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    config = copy / "checkpoints" / "step-000010" / "config.json"
    raw = json.loads(config.read_text())
    raw["d_model"] = 64
    config.write_text(json.dumps(raw))
    assert_clean_error(run_cli("sample", str(copy), "--max-new-tokens", "5"), "shape")


def test_run_folder_of_another_family(trained_run, tmp_path, small_corpus):
    before = tree_digest(trained_run)
    lstm = tiny_config(tmp_path, small_corpus, family="lstm", out_dir=str(trained_run), max_steps=20)
    assert_clean_error(run_cli("train", str(lstm), "--resume"), "'gpt'", "'lstm'")
    assert tree_digest(trained_run) == before


def test_model_folder_of_an_unknown_family(trained_run, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(trained_run / "checkpoints" / "step-000010", model)
    raw = json.loads((model / "config.json").read_text())
    raw["family"] = "unet"
    (model / "config.json").write_text(json.dumps(raw))
    assert_clean_error(run_cli("sample", str(model)), "'unet'")


def test_output_folder_that_already_holds_a_run(trained_run, tmp_path, small_corpus):
    before = tree_digest(trained_run)
    cfg = tiny_config(tmp_path, small_corpus, out_dir=str(trained_run))
    assert_clean_error(run_cli("train", str(cfg)), str(trained_run), "already holds a run", "--resume")
    assert tree_digest(trained_run) == before


def test_missing_paths(tmp_path):
    assert_clean_error(run_cli("train", str(tmp_path / "nope.toml")), "nope.toml", "not found")
    assert_clean_error(run_cli("sample", str(tmp_path / "nothing")), "nothing")
    assert_clean_error(prepare_source(tmp_path / "missing.txt"), "missing.txt")


def test_sampling_parameter_out_of_range(trained_run):
    assert_clean_error(run_cli("sample", str(trained_run), "--top-p", "1.5"), "top_p")
    assert_clean_error(run_cli("sample", str(trained_run), "--temperature", "-1"), "temperature")


def test_prepare_never_replaces_a_folder_that_is_not_a_prepared_dataset(tmp_path, small_corpus, trained_run):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("keep me", encoding="utf-8")
    assert_clean_error(run_cli("prepare", "--source", str(small_corpus), "--out", str(victim), "--quiet"),
                       "refusing to replace")
    assert (victim / "notes.txt").read_text(encoding="utf-8") == "keep me"
    before = tree_digest(trained_run)
    assert_clean_error(run_cli("prepare", "--source", str(small_corpus), "--out", str(trained_run), "--quiet"),
                       "refusing to replace")
    assert tree_digest(trained_run) == before


def test_prepared_data_of_other_settings_is_not_overwritten(tmp_path, small_corpus):
    cfg = tiny_config(tmp_path, small_corpus, max_steps=2)
    assert run_cli("prepare", str(cfg), "--quiet").returncode == 0
    before = tree_digest(tmp_path / "prepared")
    result = run_cli("train", str(cfg), "--data.val_fraction=0.2", "--quiet")
    assert_clean_error(result, "data.val_fraction", "prepared_dir")
    assert tree_digest(tmp_path / "prepared") == before
    assert not (tmp_path / "run").exists()


def test_diverging_training_stops_without_writing_a_bad_checkpoint(tmp_path, small_corpus):
    cfg = tiny_config(tmp_path, small_corpus, lr=1e30, min_lr=0.0, grad_clip=0.0, warmup_steps=0)
    result = run_cli("train", str(cfg), "--quiet")
    assert_clean_error(result, "training loss became")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resume_from_the_config_file_continues_the_run(tmp_path, small_corpus):
    cfg = tiny_config(tmp_path, small_corpus, max_steps=10)
    assert run_cli("train", str(cfg), "--quiet").returncode == 0
    result = run_cli("train", str(cfg), "--resume", "--train.max_steps=20", "--quiet")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step-000020"
    again = run_cli("train", str(cfg), "--resume", "--train.max_steps=20", "--quiet")
    assert again.returncode == 0 and "nothing to do" in again.stderr


def test_empty_stop_string_and_absurd_settings(trained_run):
    assert_clean_error(run_cli("sample", str(trained_run), "--stop", ""), "stop")
    assert_clean_error(run_cli("sample", str(trained_run), "--temperature", "1e-45"), "temperature")
    assert_clean_error(run_cli("sample", str(trained_run), "--threads", "100000"), "--threads")
    assert_clean_error(run_cli("sample", str(trained_run), "--seed", "99999999999999999999"), "--seed")
    assert_clean_error(run_cli("eval", str(trained_run), "--samples", "-3"), "--samples")
