"""A run killed with SIGKILL and resumed ends with the weights of an uninterrupted run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from conftest import run_cli, tiny_config

STEPS = 120


def final_weights(run: Path) -> dict:
    latest = (run / "checkpoints" / "latest").read_text().strip()
    assert latest == f"step-{STEPS:06d}"
    return load_file(str(run / "checkpoints" / latest / "model.safetensors"))


def start(cfg: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "aigc", "train", str(cfg), "--quiet", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(run: Path, proc: subprocess.Popen, timeout: float = 600) -> str:
    pointer = run / "checkpoints" / "latest"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pointer.exists():
            return pointer.read_text().strip()
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.005)
    raise AssertionError("no checkpoint appeared")


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, small_corpus):
    settings = dict(max_steps=STEPS, checkpoint_interval=30, eval_interval=40, batch_size=8, keep_checkpoints=2)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = tiny_config(tmp_path / "a", small_corpus, **settings)
    killed = tiny_config(tmp_path / "b", small_corpus, **settings)

    proc = start(killed)
    first = wait_for_checkpoint(tmp_path / "b" / "run", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    stopped_at = (tmp_path / "b" / "run" / "checkpoints" / "latest").read_text().strip()
    assert stopped_at < f"step-{STEPS:06d}", "the run finished before it could be killed"
    assert first >= "step-000030"

    resumed = run_cli("train", str(tmp_path / "b" / "run"), "--resume", "--quiet", timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr

    done = run_cli("train", str(straight), "--quiet", timeout=900)
    assert done.returncode == 0, done.stderr

    a, b = final_weights(tmp_path / "a" / "run"), final_weights(tmp_path / "b" / "run")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the metrics of the resumed run have no duplicated steps from the killed process
    steps = [line for line in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()
             if '"train_loss"' in line and '"val_loss"' not in line]
    assert len(steps) == STEPS // 5


def test_ctrl_c_writes_a_checkpoint_and_exits_cleanly(tmp_path, small_corpus):
    cfg = tiny_config(tmp_path, small_corpus, max_steps=100000, checkpoint_interval=50, batch_size=8)
    proc = start(cfg)
    wait_for_checkpoint(tmp_path / "run", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "checkpoint written" in err
    latest = (tmp_path / "run" / "checkpoints" / "latest").read_text().strip()
    stopped = int(err.split("stopped at step ")[1].split(";")[0])
    assert latest == f"step-{stopped:06d}"  # the checkpoint is of the step where it stopped
    assert (tmp_path / "run" / "checkpoints" / latest / "model.safetensors").is_file()


def test_checkpoint_from_before_named_optimizers_still_resumes(tmp_path, small_corpus):
    """Checkpoints of aigc before image models stored one unnamed optimizer (keys IDX.KEY, a list of
    param groups); resuming one continues the run."""
    import json

    from safetensors.torch import save_file

    cfg = tiny_config(tmp_path, small_corpus, max_steps=10)
    assert run_cli("train", str(cfg), "--quiet").returncode == 0
    ck = tmp_path / "run" / "checkpoints" / "step-000010"
    opt = load_file(str(ck / "optimizer.safetensors"))
    save_file({k.removeprefix("model."): v for k, v in opt.items()}, str(ck / "optimizer.safetensors"))
    state = json.loads((ck / "state.json").read_text())
    state["optimizer_param_groups"] = state["optimizer_param_groups"]["model"]
    (ck / "state.json").write_text(json.dumps(state))
    out = run_cli("train", str(tmp_path / "run"), "--resume", "--train.max_steps=20", "--quiet")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step-000020"
