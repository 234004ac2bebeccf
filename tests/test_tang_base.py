"""The shipped base model, tang-base: what the repo promises about it, checked on the real file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import aigc
from aigc.folders import BUILTIN_MODELS
from conftest import CORES, run_cli

FOLDER = BUILTIN_MODELS["tang-base"]
torch.set_num_threads(CORES)


def test_shipped_in_half_precision_under_30_mb():
    weights = FOLDER / "model.safetensors"
    assert weights.stat().st_size <= 30 * 1024 * 1024
    with safe_open(str(weights), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    metrics = json.loads((FOLDER / "metrics.json").read_text(encoding="utf-8"))
    assert [r["run"] for r in metrics["lineage"]] == ["runs/tang-base", "runs/tang-base-long", "runs/tang-theme"]
    assert metrics["recipe"] == "configs/tang-theme.toml" and all(r["steps"] > 0 for r in metrics["lineage"])
    # issue 16's target, as measured on the pretraining corpus's whole val split (2,900 held-out poems)
    scored = metrics["val_split_eval"]
    assert scored["val_tokens_scored"] == 200_160 and scored["val_bpc"] <= 6.0


def test_loads_by_name_and_writes_poems():
    model = aigc.load("tang-base", device="cpu")
    text = model.generate("春江", n=1, seed=0, max_new_tokens=30, temperature=0.8)[0]
    assert text.startswith("春江") and len(text) > 10
    assert model.chat is not None  # the ChatML template travels with the tokenizer, for chat fine-tuning


def test_exports_as_llama_with_the_same_logits(tmp_path):
    transformers = pytest.importorskip("transformers")
    r = run_cli("export", "tang-base", str(tmp_path / "hf"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "llama"
    ours = aigc.load("tang-base", device="cpu")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = torch.tensor([tok("明月几时有\n把酒问青天")["input_ids"]])  # opens with <|endoftext|>, as aigc's prompts
    assert ids[0].tolist() == [ours.tokenizer.bos_id] + ours.tokenizer.encode("明月几时有\n把酒问青天")
    with torch.no_grad():
        assert (ours.model(ids) - theirs(ids).logits).abs().max().item() < 1e-4
    greedy = theirs.generate(ids, max_new_tokens=20, do_sample=False, eos_token_id=None)
    assert ours.generate("明月几时有\n把酒问青天", temperature=0.0, max_new_tokens=20, stop_at_document_end=False,
                         include_prompt=False)[0] == tok.decode(greedy[0, ids.size(1):], skip_special_tokens=True)


def test_finetune_config_reports_the_characters_tang_base_lacks(tmp_path):
    """A few steps of the demo's fine-tuning: the style set's characters outside tang-base's
    vocabulary are listed, their ci skipped, and the run samples from the fine-tuned model."""
    r = run_cli("train", "configs/xin-qiji-finetune.toml", "--quiet", f"--train.out_dir={tmp_path / 'ft'}",
                "--train.max_steps=3", "--train.eval_interval=3", "--train.eval_batches=1",
                f"--data.prepared_dir={tmp_path / 'prepared'}", f"--train.threads={CORES}")
    assert r.returncode == 0, r.stderr
    assert "the vocabulary lacks" in r.stderr and "documents holding them" in r.stderr
    r = run_cli("sample", str(tmp_path / "ft"), "--prompt", "西江月", "--max-new-tokens", "20", "--seed", "0")
    assert r.returncode == 0 and r.stdout.startswith("西江月")
    # scoring the shipped model writes beside the user, never into the installed package
    config = Path(__file__).resolve().parents[1] / "configs" / "xin-qiji-finetune.toml"
    r = run_cli("eval", "tang-base", "--config", str(config), f"--data.prepared_dir={tmp_path / 'prepared'}",
                "--max-tokens", "256", "--samples", "1", "--max-new-tokens", "2", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "eval-tang-base.json").read_text())["val_tokens_scored"] == 256
    assert not (FOLDER / "eval.json").exists()
