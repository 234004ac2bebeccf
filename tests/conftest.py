"""Shared fixtures: a small real corpus (the first Tang poems) and a tiny-model config."""

from __future__ import annotations

import json
import lzma
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from aigc.data.sources import DATASETS

# C2PA development certificates (made on first use) go to a throwaway folder, not the user's home
os.environ.setdefault("AIGC_C2PA_DIR", tempfile.mkdtemp(prefix="aigc-c2pa-"))
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


# ---------------------------------------------------------------- a running `aigc serve`
API_KEY = "test-key-123"
CHAT_TEMPLATE = ("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")
CLASSES = ["T-shirt/top", "Trouser", "Sneaker"]


@pytest.fixture(scope="session")
def served_model_folders(tmp_path_factory) -> dict[str, Path]:
    """Three tiny, randomly initialised model folders: a text GPT, the same GPT as a chat model
    (a chat template in tokenizer_config.json, turns ended by a newline), and a conditional DCGAN."""
    from aigc.data.chat import ChatTemplate, save_chat_template
    from aigc.data.tokenizer import train_bpe_tokenizer
    from aigc.formats.model_folder import save_model_folder
    from aigc.models.gan import DCGAN, DCGANConfig
    from aigc.models.transformer import GPT, GPTConfig

    root = tmp_path_factory.mktemp("served")
    torch.manual_seed(0)
    tok = train_bpe_tokenizer(tang_documents(200) + ["user: assistant: system: hello"], 300, show_progress=False)
    gpt = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, d_model=32))
    gen = {"max_new_tokens": 24, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
    save_model_folder(root / "text", gpt, tok, gen)
    save_model_folder(root / "chat", gpt, tok, gen)
    save_chat_template(root / "chat", ChatTemplate(CHAT_TEMPLATE, eos_token="\n", trained=True))  # stands in for a chat-trained model
    gan = DCGAN(DCGANConfig(g_width=8, d_width=8, z_dim=16, conditional=True, n_classes=3, classes=CLASSES))
    save_model_folder(root / "images", gan)
    return {"text": root / "text", "chat": root / "chat", "images": root / "images"}


def start_server(folders: dict[str, Path], *flags: str):
    """Start `aigc serve NAME=PATH ...` on a free loopback port; returns (process, base URL)."""
    from aigc.serve.process import start_server as start

    return start([f"{k}={v}" for k, v in folders.items()], "--threads", "1", "--log-level", "warning", *flags,
                 capture=True)


@pytest.fixture(scope="session")
def server(served_model_folders):
    """A real `aigc serve` process with the three tiny models, an API key and a small body limit."""
    proc, url = start_server(served_model_folders, "--api-key", API_KEY, "--max-body-bytes", "20000",
                             "--max-tokens", "2000")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


# ---------------------------------------------------------------- a tiny trained diffusion model (test_ddpm, test_credentials)
T = 100  # training timesteps of the tiny diffusion models


def ddpm_config(tmp_path: Path, source: Path, steps: int, **train) -> Path:
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in train.items())
    text = (f'[data]\nsource = "{source}"\nprepared_dir = "{tmp_path / "prepared"}"\n\n'
            '[model]\nfamily = "ddpm"\nbase_channels = 8\nchannel_mults = [1, 2]\nblocks_per_level = 1\n'
            f'heads = 2\ngroups = 4\ntimesteps = {T}\nconditioning = "class"\nema_decay = 0.9\n\n'
            f'[train]\nout_dir = "{tmp_path / "run"}"\nbatch_size = 8\nmax_steps = {steps}\nwarmup_steps = 0\n'
            f"lr = 2e-3\nmin_lr = 2e-3\neval_interval = {steps}\neval_batches = 1\nlog_interval = 1\ncheckpoint_interval = 3\n"
            f"threads = {CORES}\n{extra}\n[sample]\nn = 4\nnrow = 2\nsteps = 3\n")
    path = tmp_path / "ddpm.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def shapes(tmp_path_factory) -> Path:
    from test_images import shapes_dataset

    x, y = shapes_dataset(64)
    path = tmp_path_factory.mktemp("shapes-ddpm") / "shapes.npz"
    np.savez(path, images=x, labels=y)
    return path


@pytest.fixture(scope="session")
def trained(tmp_path_factory, shapes) -> Path:
    """A tiny class-conditional ddpm trained 6 steps (checkpoints at 3 and 6)."""
    tmp = tmp_path_factory.mktemp("ddpm-run")
    r = run_cli("train", str(ddpm_config(tmp, shapes, 6)), "--quiet")
    assert r.returncode == 0, r.stderr
    return tmp / "run"
