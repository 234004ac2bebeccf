"""Training end to end on a tiny model: the run folder, determinism, learning, sample and eval."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import aigc
from aigc.config import TrainConfig, load_config
from aigc.folders import checkpoint_name, checkpoint_step
from aigc.train.loop import lr_at
from conftest import run_cli, tiny_config


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory, small_corpus):
    tmp = tmp_path_factory.mktemp("gpt")
    cfg = tiny_config(tmp, small_corpus, max_steps=60, lr=3e-3, eval_interval=20, checkpoint_interval=30)
    result = run_cli("train", str(cfg), "--quiet")
    assert result.returncode == 0, result.stderr
    return tmp / "run"


def test_run_folder_has_everything(gpt_run):
    for name in ("config.toml", "run.json", "metrics.jsonl", "loss.png", "checkpoints/latest"):
        assert (gpt_run / name).is_file(), name
    latest = gpt_run / "checkpoints" / (gpt_run / "checkpoints" / "latest").read_text().strip()
    for name in ("model.safetensors", "config.json", "tokenizer.json", "generation_config.json",
                 "optimizer.safetensors", "state.json"):
        assert (latest / name).is_file(), name
    assert json.loads((latest / "config.json").read_text())["family"] == "gpt"
    step = json.loads((latest / "state.json").read_text())["step"]
    assert checkpoint_step(latest) == step and latest.name == checkpoint_name(step)
    assert checkpoint_step(gpt_run) is None and checkpoint_step(gpt_run / "samples" / latest.name) is None
    info = json.loads((gpt_run / "run.json").read_text())
    assert info["seed"] == 1337 and info["torch"] == torch.__version__ and "git_commit" in info
    # the resolved config writes every default out and reloads to the same run
    cfg = load_config(gpt_run / "config.toml")
    assert cfg.train.weight_decay == 0.1 and cfg.model.norm == "layernorm"
    assert cfg.model.vocab_size == aigc.load(gpt_run).tokenizer.vocab_size
    assert sorted(p.name for p in (gpt_run / "samples").iterdir()) == ["step-000030.txt", "step-000060.txt"]


def test_training_lowers_the_loss(gpt_run):
    rows = [json.loads(line) for line in (gpt_run / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(val) == 3
    vocab = aigc.load(gpt_run).tokenizer.vocab_size
    assert val[0] > val[1] > val[2]
    assert val[-1] < math.log(vocab) - 0.5  # well below a uniform guess over the vocabulary
    evals = [r for r in rows if "val_loss" in r]
    assert all(abs(r["val_ppl"] - math.exp(r["val_loss"])) < 1e-6 * r["val_ppl"] for r in evals)


def test_same_seed_same_weights(tmp_path, small_corpus):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        cfg = tiny_config(tmp_path / name, small_corpus, max_steps=10, family="lstm")
        assert run_cli("train", str(cfg), "--quiet").returncode == 0
    a = load_file(str(tmp_path / "a" / "run" / "checkpoints" / "step-000010" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "run" / "checkpoints" / "step-000010" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sample_cli_streams_and_respects_settings(gpt_run):
    result = run_cli("sample", str(gpt_run), "--prompt", "明月", "--n", "2", "--seed", "3",
                     "--max-new-tokens", "20", "--temperature", "0.9")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("--- sample") == 2
    assert result.stdout.count("明月") >= 2
    again = run_cli("sample", str(gpt_run), "--prompt", "明月", "--n", "2", "--seed", "3",
                    "--max-new-tokens", "20", "--temperature", "0.9")
    assert again.stdout == result.stdout  # same seed, same text


def test_api_generate_stop_strings_and_prompt_cropping(gpt_run):
    model = aigc.load(gpt_run)
    assert model.family == "gpt"
    texts = model.generate("春", n=3, seed=0, max_new_tokens=30, temperature=1.0, stop_at_document_end=False)
    assert len(texts) == 3 and all(t.startswith("春") for t in texts)
    greedy = model.generate("春", seed=0, max_new_tokens=30, temperature=0)[0]
    assert greedy == model.generate("春", seed=99, max_new_tokens=30, temperature=0)[0]
    # a stop string ends the text before it
    full = model.generate("春", seed=1, max_new_tokens=30, temperature=1.0, stop_at_document_end=False)[0]
    stop = full[3:5]
    cut = model.generate("春", seed=1, max_new_tokens=30, temperature=1.0, stop=[stop],
                         stop_at_document_end=False)[0]
    assert cut == full[:full.find(stop)]
    streamed = "".join(model.stream("春", seed=1, max_new_tokens=30, temperature=1.0, stop_at_document_end=False))
    assert "春" + streamed == full
    # a prompt longer than the context (32) is cropped from the left with a warning
    long_prompt = "春风" * 40
    with pytest.warns(UserWarning, match="longer than the context"):
        out = model.generate(long_prompt, seed=0, max_new_tokens=5)
    assert out[0].startswith(long_prompt)


def test_eval_cli_prints_table_and_writes_json(gpt_run):
    result = run_cli("eval", str(gpt_run), "--samples", "4", "--max-new-tokens", "24", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "val bits per character" in result.stdout and "distinct-2" in result.stdout
    data = json.loads((gpt_run / "eval.json").read_text())
    assert abs(data["val_perplexity"] - math.exp(data["val_loss"])) < 1e-6 * data["val_perplexity"]
    assert 0 < data["val_bpc"] < 20
    assert 0 <= data["distinct_1"] <= 1 and 0 <= data["repeated_4gram_share"] <= 1


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    assert lr_at(0, 0, cfg) == pytest.approx(0.1)
    assert lr_at(0, 9, cfg) == pytest.approx(1.0)
    assert lr_at(0.0, 10, cfg) == pytest.approx(1.0)
    assert lr_at(0.5, 60, cfg) == pytest.approx(0.55)
    assert lr_at(1.0, 110, cfg) == pytest.approx(0.1)


def test_cli_help_on_every_verb(capsys):
    result = run_cli("train", "--help")  # once as a user runs it
    assert result.returncode == 0 and "usage: aigc train" in result.stdout
    from aigc.cli import main

    for verb in ("prepare", "train", "sample", "chat", "eval", "data"):
        with pytest.raises(SystemExit) as stop:
            main([verb, "--help"])
        assert stop.value.code == 0 and "usage: aigc " + verb in capsys.readouterr().out


def test_a_resume_after_the_time_limit_says_which_setting_to_raise(tmp_path, small_corpus, capsys):
    from aigc.cli import main

    cfg = tiny_config(tmp_path, small_corpus, max_steps=100000, max_minutes=0.002)  # 0.12 s: a few steps at most
    assert main(["train", str(cfg)]) == 0
    capsys.readouterr()
    assert main(["train", str(cfg), "--resume"]) == 0
    err = "".join(capsys.readouterr())  # tqdm.write prints to stdout
    assert "time limit of 0.002 minutes (wall) reached" in err
    assert "the limit counts the whole run, resumes included: to go on, resume with --train.max_minutes=" in err
    assert main(["train", str(cfg), "--resume", "--train.max_minutes=0.02"]) == 0  # a larger limit goes on
    steps = int((tmp_path / "run" / "checkpoints" / "latest").read_text().strip().split("-")[-1])
    assert steps > 1 and "resumes included" not in "".join(capsys.readouterr())
