"""The model-folder format: write one, read its config, load its model, find its tokenizer and
sampling defaults.

Formats layer: knows the files of a folder and the registry of families; knows nothing of
training loops, generation or the server.

A model folder holds everything needed to rebuild and run a model, and nothing that needs
our code to read (a Hugging Face GPT-2, Llama or Qwen2 folder is read as a ``gpt`` model too,
see :mod:`aigc.formats.hf`; a LoRA adapter folder as its base with the adapter merged)::

    model.safetensors         the weights (tied weights stored once)
    config.json               the family's config dataclass plus "family"
    tokenizer.json            the tokenizer, for text models
    generation_config.json    default sampling parameters (a SampleConfig), for text models

:func:`load_model_folder` rebuilds the model from config.json alone and loads the weights;
every failure (missing files, another family, corrupt or truncated weights, mismatched
shapes) is a one-line :class:`AigcError`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model

from aigc.atomic import atomic_path, read_json, write_json, write_text
from aigc.config import SampleConfig, build_dataclass
from aigc.errors import AigcError
from aigc.folders import CONFIG, folder_kind, resolve_model_folder
from aigc.formats.adapter import adapter_base, check_base_fingerprint, load_adapter, save_adapter
from aigc.formats.hf import config_from_hf, load_hf_folder, sample_defaults_from_hf
from aigc.models import build_model, config_class, family_of
from aigc.models.lora import lora_modules, merge_lora


def save_model_folder(folder: str | Path, model: torch.nn.Module, tokenizer=None,
                      generation_config: dict | None = None, notice: str | None = None) -> None:
    """Write model.safetensors, config.json (+ tokenizer.json, generation_config.json) into ``folder``;
    a model with LoRA adapters (a LoRA run) writes the adapter alone, naming its base. ``notice``: the
    terms of the training data, written to NOTICE.txt (a corpus for non-commercial use, say).

    Each file is written atomically; callers wanting the whole folder atomic write into
    a temporary folder (see :func:`aigc.atomic.atomic_dir`).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if lora_modules(model):  # a LoRA run: the adapter alone (PEFT layout), naming its base
        save_adapter(model, model.lora_config, folder, model.lora_base, fingerprint=getattr(model, "lora_fingerprint", None))
    else:
        with atomic_path(folder / "model.safetensors") as tmp:
            save_model(model, str(tmp), metadata={"format": "pt", "family": model.family})
        write_json(folder / CONFIG, {"family": model.family, **dataclasses.asdict(model.config)})
    if tokenizer is not None:
        tokenizer.save(folder / "tokenizer.json")
    if generation_config is not None:
        write_json(folder / "generation_config.json", generation_config)
    if notice:
        write_text(folder / "NOTICE.txt", notice.rstrip("\n") + "\n")


def resolve_base(base: str, adapter_folder: str | Path) -> Path:
    """The model folder an adapter's ``base_model_name_or_path`` names: a shipped name, a path
    relative to the adapter folder, or (adapters written elsewhere) an absolute or working-folder path.

    Raises:
        AigcError: the base is gone, naming the adapter.
    """
    beside = Path(adapter_folder) / base
    if not Path(base).is_absolute() and beside.exists():
        base = str(beside)
    try:
        return resolve_model_folder(base)
    except AigcError as e:
        raise AigcError(f"{adapter_folder}: the adapter's base model {base!r} cannot be loaded ({e})") from None


def companion_folder(folder: str | Path) -> Path:
    """The folder whose tokenizer.json and generation_config.json go with the model of ``folder``:
    the folder itself, or an adapter's base when the adapter carries no tokenizer."""
    folder = Path(folder)
    if folder_kind(folder) == "adapter" and not (folder / "tokenizer.json").is_file():
        return resolve_base(adapter_base(folder), folder)
    return folder


def read_model_config(folder: str | Path):
    """The config dataclass of the model in ``folder`` (an adapter's: its base's).

    Raises:
        AigcError: missing or malformed config.json, unknown family or keys.
    """
    kind, path = folder_kind(folder), Path(folder) / CONFIG
    if kind == "adapter":
        return read_model_config(resolve_base(adapter_base(folder), folder))
    if kind == "hf":
        config = config_from_hf(read_json(path, dict), str(path))
        try:
            config.validate()
        except AigcError as e:
            raise AigcError(f"{path}: {e}") from None
        return config
    if not path.is_file():
        raise AigcError(f"{folder}: not a model folder (no config.json)")
    raw = read_json(path)
    if not isinstance(raw, dict) or "family" not in raw:
        raise AigcError(f"{path}: no \"family\" field; this is not an aigc model folder")
    family = raw.pop("family")
    config = build_dataclass(config_class(family), raw, "model", str(path))
    config.validate()
    return config


def load_model_folder(folder: str | Path, device: str | torch.device = "cpu",
                      families: tuple[str, ...] | None = None) -> torch.nn.Module:
    """Rebuild the model of ``folder`` from config.json and load its weights, in eval mode.

    Args:
        families: if given, the families the caller can use; another family is an error.

    Raises:
        AigcError: missing files, a family not in ``families``, truncated/corrupt weights,
            or weights whose names or shapes do not match the config.
    """
    folder = Path(folder)
    kind = folder_kind(folder)
    if kind == "adapter":  # a LoRA adapter: its base with the adapter merged in
        base = resolve_base(adapter_base(folder), folder)
        check_base_fingerprint(folder, base)
        model = load_model_folder(base, "cpu", families)
        load_adapter(model, folder)
        return merge_lora(model).to(device).eval()
    if kind == "hf":
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


def read_sample_defaults(folder: str | Path, cls=SampleConfig):
    """The sampling defaults of a model folder: our generation_config.json as a ``cls``
    (:class:`~aigc.config.SampleConfig` for text, ``ImageSampleConfig`` for diffusion models), or a
    transformers one's sampling settings carried over (none: the defaults of ``cls``).

    Raises:
        AigcError: our generation_config.json is not valid JSON or has unknown keys.
    """
    folder = Path(folder)
    path = folder / "generation_config.json"
    if folder_kind(folder) == "hf":  # transformers' generation_config.json: carry over its sampling settings
        return sample_defaults_from_hf(path)
    if not path.is_file():
        return cls()
    return build_dataclass(cls, read_json(path), "sample", str(path))


def _is_tied(model: torch.nn.Module, key: str) -> bool:
    """Is ``key`` a parameter that shares storage with another one (saved once)?"""
    params = dict(model.named_parameters(remove_duplicate=False))
    if key not in params:
        return False
    return any(p is params[key] and name != key for name, p in params.items())
