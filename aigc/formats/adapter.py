"""LoRA adapters on disk, in PEFT's layout (Hu et al. 2021 for the method, :mod:`aigc.models.lora`).

Formats layer: an adapter folder holds ``adapter_config.json`` + ``adapter_model.safetensors``,
tensor names ``base_model.model.<module>.lora_A.weight``, so the ``peft`` library loads them:
with our module names for a run's own adapter (``peft`` can wrap aigc's ``GPT`` module
directly), and with transformers' names when :func:`aigc.formats.hf.export_hf` writes the
base as a Llama or Qwen2 folder. ``base_model_name_or_path`` names the base (a path, or a
shipped model's name).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from aigc.atomic import atomic_path, read_json, write_json
from aigc.errors import AigcError
from aigc.folders import ADAPTER_CONFIG
from aigc.formats.hf import hf_names_for_module
from aigc.models.lora import LINEAR_MODULES, LoRAConfig, add_lora, lora_modules

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def save_adapter(model: nn.Module, cfg: LoRAConfig, folder: str | Path, base: str,
                 rename=None) -> None:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` (PEFT's layout) into ``folder``.

    Args:
        base: the base model's folder, recorded as ``base_model_name_or_path``.
        rename: maps our module name to the name in the model ``peft`` will wrap (e.g.
            transformers' ``model.layers.0.self_attn.q_proj``); identity when None.
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
        "base_model_name_or_path": str(base),
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
