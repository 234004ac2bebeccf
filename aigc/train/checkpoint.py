"""Checkpoints: a model folder plus optimizer and loop state, written atomically.

``RUN/checkpoints/step-000500/`` holds the model folder files (see
:mod:`aigc.models`), ``optimizer.safetensors`` (the optimizer's tensors, no
pickle) and ``state.json`` (step, tokens seen, elapsed time, where the data stood,
the optimizer's param groups). It is written to a temporary folder and renamed;
then ``RUN/checkpoints/latest`` (a one-line text file naming the folder) is
replaced atomically. A crash at any point leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from aigc.atomic import atomic_dir, write_json, write_text
from aigc.errors import AigcError
from aigc.models import save_model_folder


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None when there is none.

    Raises:
        AigcError: ``latest`` names a folder that is missing.
    """
    pointer = checkpoint_dir(Path(run_dir)) / "latest"
    if not pointer.is_file():
        return None
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise AigcError(f"{pointer}: corrupt (not a checkpoint name)") from None
    folder = checkpoint_dir(Path(run_dir)) / name
    if not (folder / "state.json").is_file():
        raise AigcError(f"{pointer}: names {name!r}, which is not a complete checkpoint")
    return folder


def save_checkpoint(run_dir: Path, model, optimizer: torch.optim.Optimizer, tokenizer,
                    generation_config: dict, state: dict, keep: int) -> Path:
    """Write checkpoint ``step-{state['step']:06d}``, point ``latest`` at it, keep the newest ``keep``."""
    ckpts = checkpoint_dir(run_dir)
    name = f"step-{state['step']:06d}"
    opt = optimizer.state_dict()
    tensors = {f"{idx}.{key}": value.detach().contiguous().cpu()
               for idx, entry in opt["state"].items() for key, value in entry.items()
               if isinstance(value, torch.Tensor)}
    with atomic_dir(ckpts / name) as tmp:
        save_model_folder(tmp, model, tokenizer, generation_config)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        write_json(tmp / "state.json", {**state, "optimizer_param_groups": opt["param_groups"]})
    write_text(ckpts / "latest", name + "\n")
    old = sorted(p for p in ckpts.glob("step-*") if p.is_dir())
    for folder in old[:-keep]:
        shutil.rmtree(folder, ignore_errors=True)
    return ckpts / name


def load_training_state(folder: Path, optimizer: torch.optim.Optimizer) -> dict:
    """Restore the optimizer from ``folder`` and return its state.json (loop state).

    Raises:
        AigcError: missing, truncated or corrupt optimizer or state files.
    """
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        tensors = load_file(str(folder / "optimizer.safetensors"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, SafetensorError) as e:
        raise AigcError(f"{folder}: truncated or corrupt checkpoint ({str(e).splitlines()[0]})") from None
    opt_state: dict = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        opt_state.setdefault(int(idx), {})[name] = value
    if not isinstance(state, dict) or "optimizer_param_groups" not in state:
        raise AigcError(f"{folder / 'state.json'}: corrupt (no optimizer_param_groups)")
    groups = state.pop("optimizer_param_groups")
    try:
        optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    except (ValueError, KeyError) as e:
        raise AigcError(f"{folder}: optimizer state does not match the model ({e})") from None
    return state
