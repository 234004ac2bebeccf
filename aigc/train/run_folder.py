"""The run folder around a training run: opening it (new or resumed), its config on resume,
run.json (versions, git commit, start and resume times), metric lines after a checkpoint, and the
Ctrl-C / SIGTERM flag that stops a run cleanly.

Train layer: knows configs, model configs and the run folder's files; nothing of models or tasks.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import signal
import subprocess
import time
from pathlib import Path

import numpy
import PIL
import tokenizers
import torch
from tqdm import tqdm

from aigc.atomic import read_json, write_json, write_text
from aigc.config import RunConfig, config_from_dict, read_toml
from aigc.errors import AigcError
from aigc.folders import latest_checkpoint
from aigc.formats.model_folder import read_model_config
from aigc.models import family_of
from aigc.version import __version__


def environment() -> dict:
    """Versions and git commit recorded in run.json."""
    commit = "unknown"
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here,
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0:
            commit = out.stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                   cwd=here, capture_output=True, text=True, timeout=10)
            if dirty.stdout.strip():
                commit += "-dirty"
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {"aigc": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "tokenizers": tokenizers.__version__, "pillow": PIL.__version__,
            "platform": platform.platform(), "git_commit": commit}


class StopFlag:
    """Ctrl-C / SIGTERM: finish the current step, write a checkpoint, exit. A second Ctrl-C aborts."""

    def __init__(self):
        self.set = False
        self._old = {}

    def _handler(self, signum, frame):
        if self.set:
            raise KeyboardInterrupt
        self.set = True
        tqdm.write("interrupted: finishing this step and writing a checkpoint (Ctrl-C again to abort)")

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def open_run(cfg: RunConfig, resume: bool):
    """Check the run folder: a new run needs an empty one; a resumed run needs a matching one.

    Returns the run folder, its latest checkpoint (or None) and that checkpoint's model config (or None).
    """
    run_dir = Path(cfg.train.out_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise AigcError(f"{run_dir}: train.out_dir is a file, expected a folder for the run")
    holds_run = (run_dir / "config.toml").exists() or (run_dir / "checkpoints").exists()
    if not resume:
        if holds_run:
            raise AigcError(f"{run_dir}: already holds a run; pass --resume to continue it, "
                            "or set --train.out_dir to a new folder")
        return run_dir, None, None
    if not holds_run:
        raise AigcError(f"{run_dir}: no run to resume (no config.toml or checkpoints/)")
    ckpt = latest_checkpoint(run_dir)
    saved = read_model_config(ckpt) if ckpt is not None else None
    if saved is not None:
        if family_of(saved) != family_of(cfg.model):
            raise AigcError(f"{run_dir}: holds a {family_of(saved)!r} run; the config asks for "
                            f"{family_of(cfg.model)!r}")
        from_data = {"vocab_size", "n_classes", "classes", "channels", "image_size"}  # checked against the data
        diff = [k for k, v in dataclasses.asdict(cfg.model).items()
                if dataclasses.asdict(saved)[k] != v and k not in from_data]
        if diff:
            raise AigcError(f"{run_dir}: the checkpoint's model differs from the config in: {', '.join(diff)}")
    return run_dir, ckpt, saved


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines logged after ``step`` (by a run that died before its next checkpoint)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except (json.JSONDecodeError, AttributeError):
            pass  # a line cut short by a kill
    write_text(path, "".join(line + "\n" for line in keep))


def resolve_resume_config(run_dir: str | Path, overrides: list[str]) -> RunConfig:
    """The config of an existing run folder, with overrides (e.g. a longer max_steps)."""
    path = Path(run_dir) / "config.toml"
    if not path.is_file():
        raise AigcError(f"{run_dir}: not a run folder (no config.toml)")
    saved = config_from_dict(read_toml(path), str(path), [])
    cfg = config_from_dict(read_toml(path), str(path), overrides)
    if cfg.train.init_from != saved.train.init_from:
        raise AigcError(f"{run_dir}: train.init_from cannot change when a run resumes (it fine-tunes "
                        f"{saved.train.init_from or 'no base model'!r}); start a new run instead")
    if Path(cfg.train.out_dir).resolve() != Path(run_dir).resolve():
        cfg.train.out_dir = str(run_dir)
    return cfg


def write_run_info(run_dir: Path, info: dict, resumed: bool) -> dict:
    """run.json: ``info`` plus when the run started and every time it resumed (kept across resumes)."""
    try:
        old = read_json(run_dir / "run.json", dict)
    except AigcError:
        old = {}
    info["started"] = old.get("started", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    info["resumed"] = old.get("resumed", []) + ([time.strftime("%Y-%m-%dT%H:%M:%S%z")] if resumed else [])
    write_json(run_dir / "run.json", info)
    return info
