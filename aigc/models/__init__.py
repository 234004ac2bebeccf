"""Model families and the model-folder format.

A model folder holds everything needed to rebuild and run a model, and nothing
that needs our code to read (a Hugging Face GPT-2, Llama or Qwen2 folder is read as a
``gpt`` model too, see :mod:`aigc.models.hf`)::

    model.safetensors         the weights (tied weights stored once)
    config.json               the family's config dataclass plus "family"
    tokenizer.json            the tokenizer, for text models
    generation_config.json    default sampling parameters, for text models

:func:`load_model_folder` rebuilds the model from config.json alone and loads
the weights; every failure (missing files, another family, corrupt or truncated
weights, mismatched shapes) is a one-line :class:`AigcError`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model

from aigc.atomic import atomic_path, write_json
from aigc.errors import AigcError
from aigc.models.gan import DCGAN, DCGANConfig
from aigc.models.lstm import LSTMConfig, LSTMLM
from aigc.models.transformer import GPT, GPTConfig
from aigc.models.vae import VAE, VAEConfig

BUILTIN = Path(__file__).parent / "builtin"
BUILTIN_MODELS = {"tang-base": BUILTIN / "tang-base"}  # shipped model folders, loadable by name

REGISTRY = {
    "gpt": (GPTConfig, GPT),
    "lstm": (LSTMConfig, LSTMLM),
    "dcgan": (DCGANConfig, DCGAN),
    "vae": (VAEConfig, VAE),
}
TEXT_FAMILIES = ("gpt", "lstm")
IMAGE_FAMILIES = ("dcgan", "vae")


def config_class(family: str):
    """The config dataclass of a family name.

    Raises:
        AigcError: unknown family, listing the known ones.
    """
    if not isinstance(family, str) or family not in REGISTRY:
        raise AigcError(f"unknown model family {family!r} (known: {', '.join(REGISTRY)})")
    return REGISTRY[family][0]


def family_of(config) -> str:
    """The family name of a config dataclass instance."""
    for name, (cls, _) in REGISTRY.items():
        if isinstance(config, cls):
            return name
    raise AigcError(f"{type(config).__name__} is not the config of a known model family")


def build_model(config) -> torch.nn.Module:
    """A freshly initialised model of the family that ``config`` belongs to."""
    return REGISTRY[family_of(config)][1](config)


def save_model_folder(folder: str | Path, model: torch.nn.Module, tokenizer=None,
                      generation_config: dict | None = None) -> None:
    """Write model.safetensors, config.json (+ tokenizer.json, generation_config.json) into ``folder``.

    Each file is written atomically; callers wanting the whole folder atomic write into
    a temporary folder (see :func:`aigc.atomic.atomic_dir`).
    """
    from aigc.models.lora import lora_modules, save_adapter

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if lora_modules(model):  # a LoRA run: the adapter alone (PEFT layout), naming its base
        save_adapter(model, model.lora_config, folder, model.lora_base)
    else:
        with atomic_path(folder / "model.safetensors") as tmp:
            save_model(model, str(tmp), metadata={"format": "pt", "family": model.family})
        write_json(folder / "config.json", {"family": model.family, **dataclasses.asdict(model.config)})
    if tokenizer is not None:
        tokenizer.save(folder / "tokenizer.json")
    if generation_config is not None:
        write_json(folder / "generation_config.json", generation_config)


def read_model_config(folder: str | Path):
    """The config dataclass stored in ``folder/config.json``.

    Raises:
        AigcError: missing or malformed config.json, unknown family or keys.
    """
    from aigc.config import build_dataclass
    from aigc.models.hf import config_from_hf, is_hf_folder

    from aigc.models.lora import adapter_base

    path = Path(folder) / "config.json"
    base = adapter_base(folder) if not path.is_file() else None
    if base is not None:
        return read_model_config(resolve_base(base, folder))
    if is_hf_folder(folder):
        config = config_from_hf(json.loads(path.read_text(encoding="utf-8")), str(path))
        try:
            config.validate()
        except AigcError as e:
            raise AigcError(f"{path}: {e}") from None
        return config
    if not path.is_file():
        raise AigcError(f"{folder}: not a model folder (no config.json)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise AigcError(f"{path}: corrupt config.json (not valid JSON)") from None
    if not isinstance(raw, dict) or "family" not in raw:
        raise AigcError(f"{path}: no \"family\" field; this is not an aigc model folder")
    family = raw.pop("family")
    config = build_dataclass(config_class(family), raw, "model", str(path))
    config.validate()
    return config


def load_model_folder(folder: str | Path, device: str | torch.device = "cpu",
                      families: tuple[str, ...] | None = None) -> torch.nn.Module:
    """Rebuild the model of ``folder`` from config.json and load model.safetensors, in eval mode.

    Args:
        families: if given, the families the caller can use; another family is an error.

    Raises:
        AigcError: missing files, a family not in ``families``, truncated/corrupt weights,
            or weights whose names or shapes do not match the config.
    """
    from aigc.models.hf import is_hf_folder, load_hf_folder
    from aigc.models.lora import adapter_base, load_adapter, merge_lora

    folder = Path(folder)
    base = adapter_base(folder) if not (folder / "config.json").is_file() else None
    if base is not None:  # a LoRA adapter: its base with the adapter merged in
        model = load_model_folder(resolve_base(base, folder), "cpu", families)
        load_adapter(model, folder)
        return merge_lora(model).to(device).eval()
    if is_hf_folder(folder):
        if families is not None and "gpt" not in families:
            raise AigcError(f"{folder}: is a transformers model (gpt family); this command needs one of: "
                            f"{', '.join(families)}")
        return load_hf_folder(folder).to(device).eval()
    config = read_model_config(folder)
    family = family_of(config)
    if families is not None and family not in families:
        raise AigcError(f"{folder}: is a {family!r} model; this command needs one of: {', '.join(families)}")
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise AigcError(f"{folder}: no model.safetensors")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise AigcError(f"{weights}: truncated or corrupt weights ({str(e).splitlines()[0]})") from None
    model = build_model(config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not _is_tied(model, k)]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise AigcError(f"{weights}: weights do not match config.json (missing: {missing[:3]}, "
                        f"unexpected: {unexpected[:3]})")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise AigcError(f"{weights}: tensor {k} has shape {tuple(v.shape)}, config.json implies "
                            f"{tuple(expected[k].shape)}")
    model.load_state_dict(state, strict=False)
    return model.to(device).eval()


def resolve_base(base: str, adapter_folder: str | Path) -> Path:
    """The model folder an adapter's ``base_model_name_or_path`` names (a shipped name or a path).

    Raises:
        AigcError: the base is gone, naming the adapter.
    """
    from aigc.api import resolve_model_folder

    try:
        return resolve_model_folder(base)
    except AigcError as e:
        raise AigcError(f"{adapter_folder}: the adapter's base model {base!r} cannot be loaded ({e})") from None


def _is_tied(model: torch.nn.Module, key: str) -> bool:
    """Is ``key`` a parameter that shares storage with another one (saved once)?"""
    params = dict(model.named_parameters(remove_duplicate=False))
    if key not in params:
        return False
    return any(p is params[key] and name != key for name, p in params.items())
