"""LoRA: low-rank adapters on the linear layers of a frozen model (Hu et al. 2021).

A target linear layer ``W (out, in)`` gets two trainable matrices, ``A (r, in)`` and
``B (out, r)``, and computes ``x W^T + dropout(x) A^T B^T * alpha / r``. ``A`` starts
as nn.Linear's default (Kaiming-uniform) and ``B`` at zero, so training starts from
the base model exactly; everything else stays frozen. Merging adds ``B A * alpha / r``
into ``W``.

Saving and loading adapters (PEFT's layout) is :mod:`aigc.formats.adapter`'s.
"""

from __future__ import annotations

import math
import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from aigc.errors import AigcError

LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoRAConfig:
    """Rank, scale, dropout and target modules of LoRA adapters (the ``lora_*`` keys of ``[train]``)."""

    rank: int = 8
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.0  # dropout on the adapter's input
    targets: list[str] = field(default_factory=lambda: list(LINEAR_MODULES))  # every linear layer (as peft's "all-linear")

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
        AigcError: a target the model lacks (e.g. gate_proj on a GELU model); the default targets,
            all seven linear kinds, mean every one the model has (``model.lora_config`` then names them).
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
    cfg = dataclasses.replace(cfg, targets=effective_targets(model, cfg))
    model.lora_config = cfg
    missing = [t for t in cfg.targets if not any(w.endswith("." + t) for w in wrapped)]
    if missing:
        raise AigcError(f"train.lora_targets: the model has no {', '.join(missing)} layers "
                        f"(it has: {', '.join(sorted({n.rsplit('.', 1)[1] for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith('blocks.')}))})")
    return wrapped


def effective_targets(model: nn.Module, cfg: LoRAConfig) -> list[str]:
    """The layer kinds ``cfg`` adapts in ``model``, sorted: the default (all seven kinds) means every
    kind the model's blocks have (a GELU model has no gate_proj); any other list is taken as given."""
    if set(cfg.targets) != set(LINEAR_MODULES):
        return sorted(cfg.targets)
    present = {n.rsplit(".", 1)[1] for n, m in model.named_modules()
               if n.startswith("blocks.") and (isinstance(m, nn.Linear) or type(m).__name__ == "LoRALinear")}
    return sorted(present & set(LINEAR_MODULES)) or sorted(cfg.targets)


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
