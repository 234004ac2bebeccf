"""torchrun data parallelism on CPU (gloo), DDP and FSDP2: two ranks compute what one process computes
at the same global batch, resume exactly, write once, and refuse what they cannot do."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_cli, tiny_config
from safetensors.torch import load_file


def torchrun(*args: str, ranks: int = 2, timeout: float = 600) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=RANKS -m aigc ARGS``, one thread per rank."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
                           "-m", "aigc", *args], capture_output=True, text=True, timeout=timeout, env=env)


def weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step-{step:06d}" / "model.safetensors"))


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(a: Path, b: Path, step: int, atol: float = 1e-5) -> None:
    wa, wb = weights(a, step), weights(b, step)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=1e-4, msg=k)
    ma, mb = metrics(a), metrics(b)
    assert [m["step"] for m in ma] == [m["step"] for m in mb]  # each step logged once, by rank 0 alone
    for x, y in zip(ma, mb):
        for key in ("train_loss", "val_loss"):
            if key in x:
                assert y[key] == pytest.approx(x[key], abs=1e-5), (x["step"], key)
        if "tokens" in x:
            assert x["tokens"] == y["tokens"]  # tokens are counted over every rank


PACKAGE = str(Path(__file__).resolve().parent.parent / "aigc") + os.sep


def ours_raised(stderr: str) -> bool:
    """Did a traceback come out of aigc's own code? (torchrun prints its own summary of a failed rank,
    from torch's files, which may live under a checkout that is also called aigc.)"""
    return any(PACKAGE in line for line in stderr.splitlines() if line.strip().startswith("File "))


@pytest.fixture(scope="module")
def config(tmp_path_factory, small_corpus) -> Path:
    """A tiny GPT; eval_batches = 3 splits unevenly over 2 ranks (2 + 1 batches)."""
    tmp = tmp_path_factory.mktemp("ddp")
    return tiny_config(tmp, small_corpus, max_steps=10, threads=1, log_interval=1, eval_interval=5,
                       eval_batches=3, checkpoint_interval=5)


@pytest.fixture(scope="module")
def one_process(config, tmp_path_factory) -> Path:
    """The reference: one process at batch 8, 10 steps."""
    out = tmp_path_factory.mktemp("one") / "run"
    one = run_cli("train", str(config), "--quiet", f"--train.out_dir={out}", "--train.batch_size=8")
    assert one.returncode == 0, one.stderr
    return out


def test_two_ranks_equal_one_process_at_the_same_global_batch(config, one_process, tmp_path):
    two = torchrun("train", str(config), "--quiet", f"--train.out_dir={tmp_path / 'two'}", "--train.global_batch=8")
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("run folder:") == 1 and "global batch 8" in two.stderr
    assert_same_run(one_process, tmp_path / "two", 10)
    assert sorted(os.listdir(one_process)) == sorted(os.listdir(tmp_path / "two"))  # no .lock, nothing extra
    assert json.loads((tmp_path / "two" / "run.json").read_text())["ranks"] == 2


def test_fsdp_shards_equal_one_process_and_resume_exactly(config, one_process, tmp_path):
    """FSDP2 over 2 ranks: the same weights and losses as one process at the same global batch (its
    checkpoint is gathered into an ordinary model folder), and a resumed run equals the uninterrupted one."""
    fsdp = torchrun("train", str(config), "--quiet", f"--train.out_dir={tmp_path / 'fsdp'}", "--train.global_batch=8",
                    "--train.fsdp=true")
    assert fsdp.returncode == 0, fsdp.stderr
    assert "FSDP: parameters, gradients and optimizer state sharded" in fsdp.stderr
    assert_same_run(one_process, tmp_path / "fsdp", 10)
    shutil.copytree(tmp_path / "fsdp", tmp_path / "resumed")
    ckpts = tmp_path / "resumed" / "checkpoints"
    shutil.rmtree(ckpts / "step-000010")
    (ckpts / "latest").write_text("step-000005\n")
    rest = torchrun("train", str(tmp_path / "resumed"), "--resume", "--quiet")
    assert rest.returncode == 0, rest.stderr
    assert_same_run(tmp_path / "fsdp", tmp_path / "resumed", 10, atol=0)
    sample = run_cli("sample", str(tmp_path / "fsdp"), "--prompt", "春", "--max-new-tokens", "4", "--seed", "0")
    assert sample.returncode == 0 and sample.stdout.startswith("春"), sample.stderr


def test_accumulation_and_resume_under_ddp(config, tmp_path):
    """2 ranks x batch 2 x 2 micro-batches equals one process at batch 4 x 2; a 2-rank run put back
    to its step-5 checkpoint and resumed equals the uninterrupted one."""
    one = run_cli("train", str(config), "--quiet", f"--train.out_dir={tmp_path / 'one'}", "--train.batch_size=4",
                  "--train.grad_accum=2")
    assert one.returncode == 0, one.stderr
    two = torchrun("train", str(config), "--quiet", f"--train.out_dir={tmp_path / 'two'}", "--train.batch_size=2",
                   "--train.grad_accum=2")
    assert two.returncode == 0, two.stderr
    assert_same_run(tmp_path / "one", tmp_path / "two", 10)
    shutil.copytree(tmp_path / "two", tmp_path / "resumed")
    ckpts = tmp_path / "resumed" / "checkpoints"
    shutil.rmtree(ckpts / "step-000010")
    (ckpts / "latest").write_text("step-000005\n")  # as if it had been stopped after step 5
    rest = torchrun("train", str(tmp_path / "resumed"), "--resume", "--quiet")
    assert rest.returncode == 0, rest.stderr
    assert "resuming" in rest.stderr
    assert_same_run(tmp_path / "two", tmp_path / "resumed", 10, atol=0)


COUNT_SYNCS = """
import os, sys
from pathlib import Path
import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from aigc.train.distributed import accumulating, from_environment, start, wrap
from aigc.train.tasks import Update

torch.set_num_threads(1)
ranks = from_environment()
start(ranks, torch.device("cpu"))
torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
model.family = "linear"
wrapped = wrap(model, [Update("model", model, None)], ranks, torch.device("cpu"))
syncs = []

def hook(state, bucket):
    syncs.append(1)
    return allreduce_hook(None, bucket)

wrapped.register_comm_hook(None, hook)
for _ in range(3):  # three optimizer steps of four micro-batches
    for micro in range(4):
        with accumulating(wrapped, ranks, last=micro == 3):
            wrapped(torch.randn(2, 4)).sum().backward()
dist.barrier()
Path(sys.argv[1], f"rank{ranks.rank}").write_text(str(len(syncs)))
dist.destroy_process_group()
os._exit(0)  # no interpreter teardown racing gloo's threads
"""


def test_gradients_sync_once_per_optimizer_step(tmp_path):
    script = tmp_path / "count_syncs.py"
    script.write_text(COUNT_SYNCS, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(script), str(tmp_path)], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert [int((tmp_path / f"rank{r}").read_text()) for r in range(2)] == [3, 3]


def test_what_ddp_cannot_do_is_refused_in_one_line(config, tmp_path, small_corpus):
    r = torchrun("train", str(config), "--quiet", f"--train.out_dir={tmp_path / 'odd'}", "--train.global_batch=5")
    assert r.returncode != 0 and not ours_raised(r.stderr)
    assert "error: train.global_batch = 5 is not divisible by 2 ranks x train.grad_accum = 1" in r.stderr
    assert not (tmp_path / "odd").exists()
    gan = tmp_path / "gan.toml"
    gan.write_text(f'[data]\nsource = "{tmp_path / "imgs.npy"}"\nprepared_dir = "{tmp_path / "prep"}"\n'
                   '[model]\nfamily = "dcgan"\ng_width = 8\nd_width = 8\n[train]\nmax_steps = 2\nbatch_size = 4\n'
                   f'threads = 1\nout_dir = "{tmp_path / "gan"}"\n', encoding="utf-8")
    import numpy as np

    np.save(tmp_path / "imgs.npy", np.random.default_rng(0).integers(0, 255, (64, 28, 28), dtype=np.uint8))
    r = torchrun("train", str(gan), "--quiet")
    assert r.returncode != 0 and not ours_raised(r.stderr)
    assert "dcgan family trains with 2 optimizers" in r.stderr and "without torchrun" in r.stderr


def test_fsdp_on_one_process_is_refused_before_anything_is_written(config, tmp_path):
    r = run_cli("train", str(config), "--quiet", f"--train.out_dir={tmp_path / 'run'}", "--train.fsdp=true")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "error: train.fsdp = true shards the model over torchrun ranks, and this is one process" in r.stderr
    assert not (tmp_path / "run").exists()
