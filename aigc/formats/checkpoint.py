"""Checkpoints: a model folder plus optimizer and loop state, written atomically.

Formats layer: knows the files of a checkpoint; knows nothing of the loop that writes them.

``RUN/checkpoints/step-000500/`` holds the model folder files (see
:mod:`aigc.formats.model_folder`), ``optimizer.safetensors`` (the optimizer's tensors, no
pickle) and ``state.json`` (step, tokens seen, elapsed time, where the data stood,
the optimizer's param groups). It is written to a temporary folder and renamed;
then ``RUN/checkpoints/latest`` (a one-line text file naming the folder) is
replaced atomically. A crash at any point leaves the previous checkpoint intact.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from aigc.atomic import atomic_dir, read_json, write_json, write_text
from aigc.errors import AigcError
from aigc.folders import checkpoint_dir, checkpoint_name
from aigc.formats.model_folder import save_model_folder


def save_checkpoint(run_dir: Path, model, optimizers: dict[str, torch.optim.Optimizer], tokenizer,
                    generation_config: dict | None, state: dict, keep: int,
                    optimizer_states: dict[str, dict] | None = None, notice: str | None = None) -> Path:
    """Write checkpoint ``step-{state['step']:06d}``, point ``latest`` at it, keep the newest ``keep``.

    ``optimizers`` maps names to optimizers (``{"model": ...}``, or a GAN's discriminator and
    generator); their tensors go to optimizer.safetensors as ``NAME.INDEX.KEY``.
    ``optimizer_states`` (the same names) gives their state dicts in ``Optimizer.state_dict()``'s
    format instead, when they were gathered elsewhere (sharded training). ``notice``: the training
    data's terms, NOTICE.txt in the checkpoint's model folder.
    """
    ckpts = checkpoint_dir(run_dir)
    name = checkpoint_name(state["step"])
    tensors, groups = {}, {}
    for opt_name, optimizer in optimizers.items():
        opt = optimizer_states[opt_name] if optimizer_states is not None else optimizer.state_dict()
        groups[opt_name] = opt["param_groups"]
        tensors.update({f"{opt_name}.{idx}.{key}": value.detach().contiguous().cpu()
                        for idx, entry in opt["state"].items() for key, value in entry.items()
                        if isinstance(value, torch.Tensor)})
    with atomic_dir(ckpts / name) as tmp:
        save_model_folder(tmp, model, tokenizer, generation_config, notice)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        write_json(tmp / "state.json", {**state, "optimizer_param_groups": groups})
    write_text(ckpts / "latest", name + "\n")
    old = sorted(p for p in ckpts.glob("step-*") if p.is_dir())
    for folder in old[:-keep]:
        shutil.rmtree(folder, ignore_errors=True)
    return ckpts / name


def load_training_state(folder: Path, optimizers: dict[str, torch.optim.Optimizer]) -> dict:
    """Restore the optimizers from ``folder`` and return its state.json (loop state).

    Raises:
        AigcError: missing, truncated or corrupt optimizer or state files, or optimizers
            that do not match the model.
    """
    state, opt_states = read_training_state(folder, list(optimizers))
    for opt_name, optimizer in optimizers.items():
        try:
            optimizer.load_state_dict(opt_states[opt_name])
        except (ValueError, KeyError) as e:
            raise AigcError(f"{folder}: optimizer state does not match the model ({e})") from None
    return state


def read_training_state(folder: Path, names: list[str]) -> tuple[dict, dict[str, dict]]:
    """``folder``'s state.json (loop state) and the state dicts of the optimizers ``names``, in
    ``Optimizer.state_dict()``'s format.

    Raises:
        AigcError: missing, truncated or corrupt optimizer or state files, or other optimizers.
    """
    try:
        state = read_json(folder / "state.json")
        tensors = load_file(str(folder / "optimizer.safetensors"))
    except (AigcError, OSError, SafetensorError) as e:
        raise AigcError(f"{folder}: truncated or corrupt checkpoint ({str(e).splitlines()[0]})") from None
    if not isinstance(state, dict) or not isinstance(state.get("optimizer_param_groups"), (dict, list)):
        raise AigcError(f"{folder / 'state.json'}: corrupt (no optimizer_param_groups)")
    groups = state.pop("optimizer_param_groups")
    if isinstance(groups, list):  # written by aigc before 2026-11-29: one unnamed optimizer, keys IDX.KEY
        groups = {"model": groups}
        tensors = {f"model.{k}": v for k, v in tensors.items()}
    if set(groups) != set(names):
        raise AigcError(f"{folder}: optimizers {sorted(groups)} in the checkpoint, the model needs {sorted(names)}")
    opt_state: dict = {name: {} for name in names}
    try:
        for key, value in tensors.items():
            opt_name, idx, name = key.split(".", 2)
            opt_state.setdefault(opt_name, {}).setdefault(int(idx), {})[name] = value
    except ValueError:
        raise AigcError(f"{folder / 'optimizer.safetensors'}: corrupt (tensor {key!r} is not NAME.INDEX.KEY)") from None
    return state, {name: {"state": opt_state[name], "param_groups": groups[name]} for name in names}
