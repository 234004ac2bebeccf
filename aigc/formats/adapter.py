"""LoRA adapters on disk, in PEFT's layout (Hu et al. 2021 for the method, :mod:`aigc.models.lora`).

Formats layer: an adapter folder holds ``adapter_config.json`` + ``adapter_model.safetensors``,
tensor names ``base_model.model.<module>.lora_A.weight``, so the ``peft`` library loads them:
with our module names for a run's own adapter (``peft`` can wrap aigc's ``GPT`` module
directly), and with transformers' names when :func:`aigc.formats.hf.export_hf` writes the
base as a Llama or Qwen2 folder. ``base_model_name_or_path`` names the base portably: a shipped
model's name, or a path relative to the adapter folder (an absolute path only when the two are on
different drives), so a run folder moved or copied together with its base keeps working.
``aigc_base_sha256`` (ignored by ``peft``) fingerprints the base's weight files; loading the adapter
onto a base whose weights have changed since is an error.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from aigc.atomic import atomic_path, read_json, write_json
from aigc.errors import AigcError
from aigc.folders import ADAPTER_CONFIG, BUILTIN_MODELS
from aigc.formats.hf import hf_names_for_module
from aigc.models.lora import LINEAR_MODULES, LoRAConfig, add_lora, lora_modules

ADAPTER_WEIGHTS = "adapter_model.safetensors"
FINGERPRINT = "aigc_base_sha256"
_fingerprints: dict[tuple, str] = {}  # (folder, files' sizes and times) -> fingerprint, per process


def weights_fingerprint(folder: str | Path) -> str:
    """SHA-256 over the names and bytes of a model folder's ``*.safetensors`` files (sorted by name;
    a sharded transformers folder counts all its shards), hex. Cached per process while the files'
    sizes and modification times stay the same.

    Raises:
        AigcError: the folder has no safetensors file.
    """
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise AigcError(f"{folder}: no .safetensors weights to fingerprint")
    key = (str(Path(folder).resolve()), *((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if key not in _fingerprints:
        h = hashlib.sha256()
        for f in files:
            h.update(f.name.encode() + b"\0")
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        _fingerprints[key] = h.hexdigest()
    return _fingerprints[key]


def portable_base(base: str | Path, adapter_folder: str | Path) -> str:
    """How an adapter in ``adapter_folder`` names ``base``: a shipped model's name, else the path
    relative to the adapter folder (absolute only when no relative path exists)."""
    for name, path in BUILTIN_MODELS.items():
        if str(base) == name and not Path(base).exists():
            return name
        if Path(base).exists() and Path(base).resolve() == path.resolve():
            return name
    try:
        return os.path.relpath(Path(base).resolve(), Path(adapter_folder).resolve())
    except ValueError:  # another drive (Windows)
        return str(Path(base).resolve())


def check_base_fingerprint(adapter_folder: str | Path, base_folder: str | Path) -> None:
    """Raises AigcError when the adapter records a fingerprint of its base's weights and the weights
    in ``base_folder`` no longer match it (adapters without one, such as peft's, are not checked)."""
    raw = read_json(Path(adapter_folder) / ADAPTER_CONFIG)
    recorded = raw.get(FINGERPRINT) if isinstance(raw, dict) else None
    if not recorded:
        return
    now = weights_fingerprint(base_folder)
    if now != recorded:
        raise AigcError(f"{adapter_folder}: its base {base_folder} has changed since the adapter was made (weights "
                        f"sha256 {recorded[:12]}... recorded, {now[:12]}... now); use the adapter's own base, or "
                        "train the adapter again on this one")


def save_adapter(model: nn.Module, cfg: LoRAConfig, folder: str | Path, base: str,
                 rename=None, fingerprint: str | None = None) -> None:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` (PEFT's layout) into ``folder``.

    Args:
        base: the base model's folder or shipped name, recorded portably (:func:`portable_base`)
            as ``base_model_name_or_path``.
        rename: maps our module name to the name in the model ``peft`` will wrap (e.g.
            transformers' ``model.layers.0.self_attn.q_proj``); identity when None.
        fingerprint: :func:`weights_fingerprint` of the base, recorded as ``aigc_base_sha256``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, m in lora_modules(model).items():
        target = rename(name) if rename is not None else name
        tensors[f"base_model.model.{target}.lora_A.weight"] = m.lora_A.detach().cpu().contiguous()
        tensors[f"base_model.model.{target}.lora_B.weight"] = m.lora_B.detach().cpu().contiguous()
    with atomic_path(folder / ADAPTER_WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_json(folder / ADAPTER_CONFIG, {
        # CAUSAL_LM only for transformers models: peft's causal-LM wrapper needs their generation API
        "peft_type": "LORA", "task_type": "CAUSAL_LM" if rename is not None else None,
        "base_model_name_or_path": portable_base(base, folder), **({FINGERPRINT: fingerprint} if fingerprint else {}),
        "r": cfg.rank, "lora_alpha": int(cfg.alpha) if float(cfg.alpha).is_integer() else cfg.alpha, "lora_dropout": cfg.dropout, "target_modules": sorted(cfg.targets),
        "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "init_lora_weights": True,
        "inference_mode": True, "modules_to_save": None,
    })


def adapter_base(folder: str | Path) -> str | None:
    """``base_model_name_or_path`` of an adapter folder (None when ``folder`` holds no adapter)."""
    path = Path(folder) / ADAPTER_CONFIG
    if not path.is_file():
        return None
    raw = read_json(path)
    base = raw.get("base_model_name_or_path") if isinstance(raw, dict) else None
    if not isinstance(base, str) or not base:
        raise AigcError(f"{path}: no base_model_name_or_path; cannot tell which model the adapter belongs to")
    return base


def read_adapter_config(folder: str | Path) -> LoRAConfig:
    """The :class:`LoRAConfig` of an adapter folder.

    Raises:
        AigcError: missing or malformed adapter_config.json, or a PEFT adapter that is not plain LoRA.
    """
    path = Path(folder) / ADAPTER_CONFIG
    raw = read_json(path)
    if not isinstance(raw, dict) or raw.get("peft_type") != "LORA":
        raise AigcError(f"{path}: not a LoRA adapter (peft_type {raw.get('peft_type') if isinstance(raw, dict) else None!r})")
    if raw.get("use_rslora") or raw.get("use_dora") or raw.get("rank_pattern") or raw.get("alpha_pattern"):
        raise AigcError(f"{path}: rsLoRA, DoRA and per-module ranks are not supported")
    if raw.get("bias", "none") != "none" or raw.get("modules_to_save"):
        raise AigcError(f"{path}: adapters that also train biases or whole modules (bias = {raw.get('bias')!r}, "
                        f"modules_to_save = {raw.get('modules_to_save')!r}) are not supported")
    targets = raw.get("target_modules")
    if isinstance(targets, str):  # peft: "all-linear" or a regular expression over module names
        if targets == "all-linear":
            targets = list(LINEAR_MODULES)
        else:
            raise AigcError(f"{path}: target_modules {targets!r} is a pattern; aigc reads a list of module names")
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise AigcError(f"{path}: target_modules must be a list of module names")
    targets = [t.rsplit(".", 1)[-1] for t in targets]  # full paths name the same layer kinds
    cfg = LoRAConfig(rank=raw.get("r", 8), alpha=raw.get("lora_alpha", 8), dropout=raw.get("lora_dropout", 0.0),
                     targets=list(dict.fromkeys(targets)))
    try:
        cfg.validate()
    except AigcError as e:
        raise AigcError(f"{path}: {e}") from None
    return cfg


def load_adapter(model: nn.Module, folder: str | Path, rename=None, wrap: bool = True) -> LoRAConfig:
    """Add the adapter of ``folder`` (PEFT layout, our module names unless ``rename`` maps ours to
    its names) to ``model`` and load its weights (``wrap=False``: the model already has the
    adapters, e.g. when a LoRA run resumes; only the weights are loaded).

    Raises:
        AigcError: corrupt files, or an adapter made for another base (a module it adapts is
            missing, or its shapes do not fit this model's layers).
    """
    folder = Path(folder)
    cfg = read_adapter_config(folder)
    path = folder / ADAPTER_WEIGHTS
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise AigcError(f"{path}: missing, truncated or corrupt ({str(e).splitlines()[0]})") from None
    wrapped = add_lora(model, cfg) if wrap else list(lora_modules(model))
    if rename is None and any(k.startswith("base_model.model.model.layers.") for k in tensors):
        rename = hf_names_for_module  # an adapter for a transformers Llama/Qwen2 model
    rename = rename or (lambda name: name)
    used = set()
    for name in wrapped:
        m = model.get_submodule(name)
        for part in ("lora_A", "lora_B"):
            key = f"base_model.model.{rename(name)}.{part}.weight"
            if key not in tensors:
                raise AigcError(f"{path}: no {key}; the adapter was made for another base model")
            t, p = tensors[key], getattr(m, part)
            if tuple(t.shape) != tuple(p.shape):
                raise AigcError(f"{path}: {key} has shape {tuple(t.shape)}, this base needs {tuple(p.shape)}; "
                                "the adapter was made for another base model")
            with torch.no_grad():
                p.copy_(t)
            used.add(key)
    extra = sorted(set(tensors) - used)
    if extra:
        raise AigcError(f"{path}: tensors for modules this base lacks ({extra[0]}, ...); "
                        "the adapter was made for another base model")
    return cfg
