"""Folders by name and kind: shipped model names, hub names refused, what kind a folder is, a run's
latest checkpoint, the tokenizer.json a name points at.

Base layer: knows paths and the few file names that tell folders apart; reads no weights and
knows no model, config or tokenizer class.

Kinds (:func:`folder_kind`)::

    aigc      config.json with "family"                  a model folder of ours
    hf        config.json with "model_type"              a Hugging Face transformers folder
    adapter   adapter_config.json, no config.json        a LoRA adapter in PEFT's layout
    run       checkpoints/                               a run folder (its latest checkpoint is the model)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from aigc.errors import AigcError

BUILTIN = Path(__file__).parent / "models" / "builtin"
# shipped model folders, loadable by name, and the script that builds each
BUILTIN_MODELS = {"tang-base": BUILTIN / "tang-base", "color-fashion-t2i": BUILTIN / "color-fashion-t2i"}
BUILDERS = {"tang-base": "scripts/build_tang_base.py", "color-fashion-t2i": "scripts/build_t2i.py"}
CONFIG = "config.json"
ADAPTER_CONFIG = "adapter_config.json"
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hf_folder(folder: str | Path) -> bool:
    """Does ``folder/config.json`` describe a Hugging Face model (a ``model_type``, no aigc ``family``)?"""
    try:
        raw = json.loads((Path(folder) / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and "model_type" in raw and "family" not in raw


def folder_kind(folder: str | Path) -> str | None:
    """``"aigc"``, ``"hf"``, ``"adapter"`` or ``"run"`` (see the module docstring); None for anything else."""
    folder = Path(folder)
    if (folder / CONFIG).is_file():
        return "hf" if is_hf_folder(folder) else "aigc"
    if (folder / ADAPTER_CONFIG).is_file():
        return "adapter"
    if (folder / "checkpoints").is_dir():
        return "run"
    return None


def refuse_hub_name(path: str | Path) -> None:
    """Raise a clear :class:`AigcError` when ``path`` does not exist and looks like a hub name ``org/model``."""
    text = str(path)
    if not Path(text).exists() and _HUB_NAME.match(text):
        raise AigcError(f"{text}: no such folder. It looks like a Hugging Face hub name; aigc never downloads "
                        f"models. Download it first (e.g. `hf download {text} --local-dir DIR`) and pass DIR")


def checkpoint_dir(run_dir: str | Path) -> Path:
    """``RUN/checkpoints``."""
    return Path(run_dir) / "checkpoints"


def checkpoint_name(step: int) -> str:
    """A checkpoint's folder name: ``step-NNNNNN`` (the step, six digits or more)."""
    return f"step-{step:06d}"


def checkpoint_step(folder: str | Path) -> int | None:
    """The step of a checkpoint folder ``RUN/checkpoints/step-N``, or None for any other path."""
    folder = Path(folder)
    match = re.fullmatch(r"step-(\d+)", folder.name)
    return int(match[1]) if match and folder.parent.name == "checkpoints" else None


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run (named by ``checkpoints/latest``), or None.

    Raises:
        AigcError: ``latest`` names a folder that is missing.
    """
    pointer = checkpoint_dir(run_dir) / "latest"
    if not pointer.is_file():
        return None
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise AigcError(f"{pointer}: corrupt (not a checkpoint name)") from None
    folder = checkpoint_dir(run_dir) / name
    if not (folder / "state.json").is_file():
        raise AigcError(f"{pointer}: names {name!r}, which is not a complete checkpoint")
    return folder


def resolve_model_folder(path: str | Path) -> Path:
    """A model folder itself (aigc's, a Hugging Face one or an adapter), the latest checkpoint of a
    run folder, or a model shipped with aigc by name (``tang-base``).

    Raises:
        AigcError: the path does not exist (a hub name gets a message to download it first),
            or holds neither a model nor a checkpoint.
    """
    if not Path(path).exists() and str(path) in BUILTIN_MODELS:
        if not (BUILTIN_MODELS[str(path)] / "model.safetensors").is_file():
            raise AigcError(f"{path}: the shipped model is missing from this installation; build it with "
                            f"{BUILDERS[str(path)]}")
        return BUILTIN_MODELS[str(path)]
    refuse_hub_name(path)
    path = Path(path)
    if not path.exists():
        raise AigcError(f"{path}: no such run or model folder")
    kind = folder_kind(path)
    if kind == "run":
        ckpt = latest_checkpoint(path)
        if ckpt is None:
            raise AigcError(f"{path}: run folder has no complete checkpoint yet")
        return ckpt
    if kind is None:
        raise AigcError(f"{path}: neither a model folder (config.json) nor a run folder (checkpoints/)")
    return path


def run_of(path: str | Path, model_folder: str | Path) -> Path | None:
    """The run folder a model belongs to, if any: ``path`` itself (RUN/) or the run above a
    checkpoint ``model_folder`` (RUN/checkpoints/step-N/)."""
    for candidate in (Path(path), Path(model_folder).parent.parent):
        if (candidate / "config.toml").is_file() and (candidate / "checkpoints").is_dir():
            return candidate
    return None


def tokenizer_file(path: str | Path, what: str = "tokenizer") -> Path:
    """The tokenizer.json named by ``path``: the file itself, the one inside a model folder, or
    that of a model shipped with aigc (``tang-base``).

    Raises:
        AigcError: neither exists (``what`` names the setting that gave the path).
    """
    if not Path(path).exists() and str(path) in BUILTIN_MODELS:  # a shipped model's name: its tokenizer
        path = BUILTIN_MODELS[str(path)]
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise AigcError(f"{what} = {str(path)!r}: tokenizer file not found (expected 'char', 'bpe', "
                        "a tokenizer.json or a model folder holding one)" if what != "tokenizer"
                        else f"{path}: tokenizer file not found")
    return path
