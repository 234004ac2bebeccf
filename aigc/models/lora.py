"""LoRA: low-rank adapters on the linear layers of a frozen model (Hu et al. 2021).

A target linear layer ``W (out, in)`` gets two trainable matrices, ``A (r, in)`` and
``B (out, r)``, and computes ``x W^T + dropout(x) A^T B^T * alpha / r``. ``A`` starts
as nn.Linear's default (Kaiming-uniform) and ``B`` at zero, so training starts from
the base model exactly; everything else stays frozen. Merging adds ``B A * alpha / r``
into ``W``.

Adapters are saved in PEFT's layout (``adapter_config.json`` +
``adapter_model.safetensors``, tensor names ``base_model.model.<module>.lora_A.weight``)
so the ``peft`` library loads them: with our module names for the run's own adapter
(``peft`` can wrap aigc's ``GPT`` module directly), and with transformers' names when
:func:`aigc.models.hf.export_hf` writes the base as a Llama or Qwen2 folder.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from aigc.atomic import atomic_path, write_json
from aigc.errors import AigcError

LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


@dataclass
class LoRAConfig:
    """Rank, scale, dropout and target modules of LoRA adapters (the ``lora_*`` keys of ``[train]``)."""

    rank: int = 8
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.0  # dropout on the adapter's input
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def validate(self) -> None:
        if self.rank < 1:
            raise AigcError(f"train.lora_rank = {self.rank}: expected a positive integer")
        if not self.alpha > 0 or math.isinf(self.alpha):
            raise AigcError(f"train.lora_alpha = {self.alpha}: expected a positive number")
        if not 0 <= self.dropout < 1:
            raise AigcError(f"train.lora_dropout = {self.dropout}: expected a number in [0, 1)")
        bad = [t for t in self.targets if t not in LINEAR_MODULES]
        if not self.targets or bad:
            raise AigcError(f"train.lora_targets = {self.targets}: expected a non-empty list of "
                            f"{', '.join(LINEAR_MODULES)}")


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update.

    Input ``(..., in)`` float, output ``(..., out)``: ``base(x) + (dropout(x) @ A^T @ B^T) * scaling``.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float):
        super().__init__()
        self.base = base
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's default, as PEFT does
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (self.dropout(x) @ self.lora_A.t() @ self.lora_B.t()) * self.scaling

    def delta(self) -> torch.Tensor:
        """The merged update ``B A * scaling``, ``(out, in)``."""
        return (self.lora_B @ self.lora_A) * self.scaling


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """Our module name (``blocks.0.attn.q_proj``) -> its :class:`LoRALinear`."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def add_lora(model: nn.Module, cfg: LoRAConfig) -> list[str]:
    """Freeze ``model`` and wrap each target linear layer of its blocks in a :class:`LoRALinear`.

    Returns:
        the wrapped module names.
    Raises:
        AigcError: a target the model lacks (e.g. gate_proj on a GELU model).
    """
    cfg.validate()
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in cfg.targets and isinstance(child, nn.Linear) and name.startswith("blocks."):
                setattr(module, child_name, LoRALinear(child, cfg.rank, cfg.alpha, cfg.dropout))
                wrapped.append(f"{name}.{child_name}")
    model.lora_config = cfg
    missing = [t for t in cfg.targets if not any(w.endswith("." + t) for w in wrapped)]
    if missing:
        raise AigcError(f"train.lora_targets: the model has no {', '.join(missing)} layers "
                        f"(it has: {', '.join(sorted({n.rsplit('.', 1)[1] for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith('blocks.')}))})")
    return wrapped


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every :class:`LoRALinear` of ``model`` by its base layer with the update merged in (in place)."""
    for name, m in lora_modules(model).items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        with torch.no_grad():
            m.base.weight += m.delta().to(m.base.weight.dtype)
        setattr(parent, child, m.base)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


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
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise AigcError(f"{path}: not valid JSON") from None
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
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise AigcError(f"{path}: missing or not valid JSON") from None
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
        from aigc.models.hf import hf_names_for_module  # an adapter for a transformers Llama/Qwen2 model

        rename = hf_names_for_module
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
