"""Fully sharded data parallelism under ``torchrun`` (``train.fsdp = true``): PyTorch's FSDP2
(``torch.distributed.fsdp.fully_shard``, Zhao et al. 2023, "PyTorch FSDP").

Train layer: knows torch.distributed and the optimizer's state-dict format; nothing of tasks,
data or files.

Each rank holds 1/N of every parameter, gradient and AdamW moment; a layer's full weights exist
only while it runs (all-gathered before its forward and backward, the gradients reduce-scattered
after). The units are the model's ``blocks`` (one transformer block or LSTM layer each) and the
rest of the model as the root unit. Every forward is a collective: all ranks run the same number
of them, so evaluation runs in lockstep (see ``TextTask.evaluate``) and sampling, which rank 0
does alone, runs on a full copy gathered to rank 0's CPU.

Checkpoints are gathered (every rank takes part; rank 0 receives full tensors on the CPU) and
written in the same format as a one-process run's, so any checkpoint resumes with or without
FSDP, on any number of ranks, and loads as a plain model folder.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from aigc.errors import AigcError

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def check(t, ranks) -> None:
    """Refuse what FSDP cannot do here, in one line, before anything is prepared or written.

    Raises:
        AigcError: FSDP on one process, with LoRA, or with ``train.compile``.
    """
    if not ranks.active:
        raise AigcError("train.fsdp = true shards the model over torchrun ranks, and this is one process; start it "
                        "with torchrun --nproc_per_node=N (N >= 2), or set train.fsdp = false")
    if t.lora_rank:
        raise AigcError("train.fsdp = true with train.lora_rank > 0 is not supported (a LoRA run trains few "
                        "parameters: use DDP, train.fsdp = false)")
    if t.compile:
        raise AigcError("train.fsdp = true with train.compile = true is not supported yet; set one of them to false")


def shard(model: torch.nn.Module) -> torch.nn.Module:
    """Shard ``model`` in place over the process group: each of ``model.blocks`` a unit, then the root.
    Returns ``model`` (its parameters are now ``DTensor`` shards; build the optimizer after this)."""
    for block in getattr(model, "blocks", []):
        fully_shard(block)
    fully_shard(model)
    return model


def accumulating(model, last: bool):
    """No gradient reduce-scatter for a micro-batch that is not the step's last (FSDP2's
    ``set_requires_gradient_sync``): gradients accumulate unsharded until the last one."""

    @contextlib.contextmanager
    def sync():
        model.set_requires_gradient_sync(last)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    return sync()


def local(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor of ``t``: the full value of a ``DTensor`` (e.g. the global gradient norm
    ``clip_grad_norm_`` returns over shards), ``t`` itself otherwise."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def cpu_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A plain (unsharded) copy of ``model`` on the CPU, taken before sharding, for rank 0 to load
    gathered checkpoints into and sample from."""
    return copy.deepcopy(model).cpu()


def _order(model, optimizer) -> list[str]:
    """The parameters' names in the order a plain optimizer's state dict numbers them."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def gather(model, optimizers: dict, ranks) -> tuple[dict, dict]:
    """The full model state dict and the optimizers' state dicts in the plain (one-process) format,
    on rank 0's CPU (empty on the other ranks). A collective: every rank must call it."""
    weights = get_model_state_dict(model, options=_FULL)
    states = {}
    for name, optimizer in optimizers.items():
        full = get_optimizer_state_dict(model, optimizer, options=_FULL)
        if not ranks.main:
            continue
        index = {fqn: i for i, fqn in enumerate(_order(model, optimizer))}
        states[name] = {"state": {index[fqn]: entry for fqn, entry in full["state"].items()},
                        "param_groups": [{**g, "params": [index[fqn] for fqn in g["params"]]}
                                         for g in full["param_groups"]]}
    return weights, states


def load(model, optimizers: dict, weights: dict | None, states: dict) -> None:
    """Put a full (one-process format) checkpoint onto the shards: ``weights`` a plain state dict
    (None: leave the weights), ``states`` the optimizers' plain state dicts. Every rank calls it
    with the same full tensors (each reads the checkpoint)."""
    if weights is not None:
        set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True))
    for name, optimizer in optimizers.items():
        order = _order(model, optimizer)
        plain = states[name]
        full = {"state": {order[i]: entry for i, entry in plain["state"].items()},
                "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in plain["param_groups"]]}
        set_optimizer_state_dict(model, optimizer, full, options=StateDictOptions(full_state_dict=True))
