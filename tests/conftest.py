"""Shared fixtures: a small real corpus (the first Tang poems) and a tiny-model config."""

from __future__ import annotations

import json
import lzma
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aigc.data.sources import DATASETS

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
torch.set_num_threads(CORES)


def tang_documents(n: int | None = None) -> list[str]:
    """The first ``n`` documents of the shipped tang-poems dataset (all when None)."""
    raw = lzma.decompress(DATASETS["tang-poems"]["path"].read_bytes()).decode("utf-8")
    docs = [json.loads(line)["text"] for line in raw.splitlines() if line.strip()]
    return docs if n is None else docs[:n]


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """A .jsonl file of 400 real Tang poems."""
    path = tmp_path_factory.mktemp("corpus") / "poems.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for doc in tang_documents(400):
            f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
    return path


def tiny_config(tmp_path: Path, corpus: Path, family: str = "gpt", **train) -> Path:
    """Write a TOML config for a tiny model on ``corpus``; returns its path."""
    model = {
        "gpt": 'family = "gpt"\nblock_size = 32\nn_layer = 2\nn_head = 2\nd_model = 32\n',
        "lstm": 'family = "lstm"\nblock_size = 32\nn_layer = 1\nd_embed = 32\nd_hidden = 48\n',
    }[family]
    settings = {"out_dir": str(tmp_path / "run"), "batch_size": 4, "max_steps": 20, "warmup_steps": 2,
                "eval_interval": 10, "eval_batches": 2, "log_interval": 5, "checkpoint_interval": 10,
                "threads": CORES, **train}
    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in settings.items())
    text = (f'[data]\nsource = "{corpus}"\nprepared_dir = "{tmp_path / "prepared"}"\n\n'
            f"[model]\n{model}\n[train]\n{lines}\n\n[sample]\nmax_new_tokens = 16\n")
    path = tmp_path / f"tiny-{family}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def run_cli(*args: str, timeout: float = 900, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m aigc ARGS`` in a fresh process, as a user would."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    return subprocess.run([sys.executable, "-m", "aigc", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)
