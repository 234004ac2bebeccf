"""The rough edges a new user met (issue 19), each as the user's command and what they should see."""

from __future__ import annotations

import json
import shutil

import torch
from conftest import CORES, run_cli, tang_documents

import aigc


def base_folder(path):
    """A tiny Llama-layout GPT (all seven linear kinds) with a byte-level BPE tokenizer."""
    from aigc.data.tokenizer import train_bpe_tokenizer
    from aigc.formats.model_folder import save_model_folder
    from aigc.models.transformer import GPT, GPTConfig

    torch.manual_seed(0)
    tok = train_bpe_tokenizer(tang_documents(100), 300, show_progress=False)
    gpt = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_kv_head=1, d_model=32,
                        bias=False, norm="rmsnorm", positions="rope", mlp="swiglu"))
    save_model_folder(path, gpt, tok)
    return path


def test_lora_adapts_every_linear_layer_and_its_adapter_moves_with_its_base(tmp_path):
    home = tmp_path / "project"
    base = base_folder(home / "base")
    corpus = home / "poems.txt"
    corpus.write_text("\n".join(tang_documents(60)), encoding="utf-8")
    cfg = home / "lora.toml"
    cfg.write_text(f'[data]\nsource = "{corpus}"\nprepared_dir = "{home / "prepared"}"\n[model]\nfamily = "gpt"\n'
                   f'[train]\nout_dir = "{home / "run"}"\nbatch_size = 2\nmax_steps = 2\nwarmup_steps = 0\n'
                   f'eval_interval = 2\neval_batches = 1\nthreads = {CORES}\n', encoding="utf-8")
    r = run_cli("train", str(cfg), "--init-from", str(base), "--lora-rank", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    adapter = json.loads((home / "run" / "checkpoints" / "step-000002" / "adapter_config.json").read_text())
    assert adapter["target_modules"] == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                "down_proj"])  # the README's table: all seven
    assert adapter["base_model_name_or_path"] == "../../../base"  # relative to the adapter folder
    assert len(adapter["aigc_base_sha256"]) == 64
    before = aigc.load(home / "run").generate("春", seed=0, max_new_tokens=8)

    moved = tmp_path / "elsewhere"  # the project copied to another place (another machine)
    shutil.copytree(home, moved)
    shutil.rmtree(home)
    assert aigc.load(moved / "run").generate("春", seed=0, max_new_tokens=8) == before

    weights = moved / "base" / "model.safetensors"  # the base changed since (its last weight's bytes)
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    r = run_cli("sample", str(moved / "run"), "--prompt", "春")
    assert r.returncode != 0 and "has changed since the adapter was made" in r.stderr, r.stderr


def test_a_template_alone_is_not_a_chat_model(served_model_folders):
    from fastapi.testclient import TestClient

    from aigc.serve.app import create_app

    client = TestClient(create_app({"tang-base": aigc.load("tang-base"), "chat": aigc.load(served_model_folders["chat"])}))
    models = {m["id"]: m["aigc"] for m in client.get("/v1/models").json()["data"]}
    assert models["tang-base"]["chat"] is True and models["tang-base"]["chat_trained"] is False
    assert models["chat"]["chat_trained"] is True
    r = run_cli("chat", "tang-base", "--max-tokens", "6", "--seed", "0", "--threads", "1")
    assert r.returncode == 0 and "never trained on conversations" in r.stderr


def test_chat_from_a_pipe_marks_each_turn():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "aigc", "chat", "tang-base", "--max-tokens", "12", "--seed", "0",
                        "--threads", "1"], input="秋天\n落叶\n", capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    turns = r.stdout.split("\n\n")
    assert turns[0].startswith("> 秋天\n") and turns[1].startswith("> 落叶\n") and turns[2] == ""


def test_sample_out_writes_the_text_samples_and_says_where(served_model_folders, tmp_path):
    out = tmp_path / "samples.jsonl"
    r = run_cli("sample", str(served_model_folders["text"]), "--prompt", "春", "--n", "2", "--seed", "4",
                "--max-new-tokens", "5", "--out", str(out))
    assert r.returncode == 0 and f"wrote {out}: 2 samples" in r.stderr
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [row["seed"] for row in rows] == [4, 5] and all(row["prompt"] == "春" for row in rows)
    bad = run_cli("sample", str(served_model_folders["text"]), "--out", str(tmp_path / "x.png"))
    assert bad.returncode == 2 and "writes .txt" in bad.stderr and not (tmp_path / "x.png").exists()


def test_the_progress_bar_ends_where_the_run_will_end():
    from aigc.train.loop import expected_last_step

    # a one-minute limit at 2 steps/s, 10 s in at step 20: the bar's total is step 120, not max_steps
    assert expected_last_step(20, 100_000, 60, 10, 2.0) == 120
    assert expected_last_step(20, 50, 60, 10, 2.0) == 50  # max_steps comes first
    assert expected_last_step(20, 100_000, 0, 10, 2.0) == 100_000  # no time limit
    assert expected_last_step(20, 100_000, 60, 70, 2.0) == 20  # the limit has passed


def test_chat_takes_the_sampling_flags_of_sample_and_sample_help_says_images():
    for verb in ("sample", "chat"):
        r = run_cli(verb, "--help")
        for flag in ("--top-k", "--top-p", "--repetition-penalty", "--presence-penalty", "--frequency-penalty",
                     "--stop", "--max-new-tokens", "--seed", "--temperature"):
            assert flag in r.stdout, (verb, flag)
    listing = run_cli("--help").stdout
    assert "generate text or images" in listing
