"""Data-parallel training under ``torchrun``: one process per device, DDP over gloo (CPU) or NCCL (CUDA).

``torchrun --nproc_per_node=N -m aigc train CONFIG`` starts N ranks. Each step every rank draws
the same global batch from the step's seeded generator and trains on its own slice of it, so N
ranks at ``batch_size`` each compute exactly what one process computes at ``N x batch_size``
(the global batch is per-rank batch x ranks x ``grad_accum``; ``train.global_batch`` fixes it
and derives the per-rank batch, so a resumed run may change the number of ranks). Gradients are
averaged by DDP once per optimizer step (``no_sync`` around the other micro-batches). Only rank
0 writes: config, metrics, checkpoints, samples, plots, the run folder's lock. The losses logged
and the stop decisions (Ctrl-C, the time limit, a non-finite loss) are agreed by all ranks in one
small all-reduce per step, so no rank waits forever for another.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from aigc.errors import AigcError
from aigc.train import fsdp


@dataclass
class Ranks:
    """Where this process stands: ``rank`` of ``world`` (``local`` on its node); world 1 = no torchrun."""

    rank: int = 0
    world: int = 1
    local: int = 0
    sharded: bool = False  # FSDP (train.fsdp): every forward is a collective, so the ranks run them in lockstep

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def from_environment() -> Ranks:
    """The ranks torchrun set in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), or one process.

    Raises:
        AigcError: a malformed value.
    """
    try:
        ranks = Ranks(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                      int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError:
        raise AigcError("RANK / WORLD_SIZE / LOCAL_RANK: expected integers (set by torchrun)") from None
    if not (ranks.world >= 1 and 0 <= ranks.rank < ranks.world):
        raise AigcError(f"RANK = {ranks.rank}, WORLD_SIZE = {ranks.world}: expected 0 <= RANK < WORLD_SIZE")
    return ranks


def start(ranks: Ranks, device: torch.device) -> torch.device:
    """Join the process group (NCCL for CUDA, gloo otherwise); returns this rank's device
    (``cuda:LOCAL_RANK`` when the device is CUDA)."""
    if not ranks.active:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=ranks.rank,
                                world_size=ranks.world)
    return device


def stop(ranks: Ranks) -> None:
    """Leave the process group once every rank is done with its collectives."""
    if ranks.active and dist.is_initialized():
        try:
            dist.barrier()
        except RuntimeError:
            pass  # a rank that failed has left already: nothing to wait for
        dist.destroy_process_group()


def per_rank_batch(train_cfg, ranks: Ranks) -> int:
    """The per-rank batch: ``train.global_batch / (ranks x grad_accum)``, or ``train.batch_size``.

    Raises:
        AigcError: a global batch the ranks and accumulation steps do not divide.
    """
    if not train_cfg.global_batch:
        return train_cfg.batch_size
    parts = ranks.world * train_cfg.grad_accum
    if train_cfg.global_batch % parts:
        raise AigcError(f"train.global_batch = {train_cfg.global_batch} is not divisible by {ranks.world} ranks x "
                        f"train.grad_accum = {train_cfg.grad_accum}; choose a multiple of {parts}")
    return train_cfg.global_batch // parts


class _Wrapped(DistributedDataParallel):
    """DDP that also answers the wrapped model's attributes (``config``, ``loss_terms``, ...)."""

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def one_update(model: torch.nn.Module, updates: list) -> None:
    """Raises AigcError for a family with several updates (the DCGAN's two optimizers over parts of
    the model), which neither DDP nor FSDP covers."""
    if len(updates) != 1 or updates[0].module is not model:
        raise AigcError(f"the {model.family} family trains with {len(updates)} optimizers over parts of the model, "
                        "which data-parallel training does not cover; run it without torchrun")


def wrap(model: torch.nn.Module, updates: list, ranks: Ranks, device: torch.device):
    """The model the objectives call: itself on one process, its DDP wrapper under torchrun.

    Raises:
        AigcError: a family with several updates (the DCGAN's two optimizers), which DDP cannot wrap.
    """
    if not ranks.active:
        return model
    one_update(model, updates)
    return _Wrapped(model, device_ids=[device.index] if device.type == "cuda" else None)


def accumulating(wrapped, ranks: Ranks, last: bool):
    """No gradient sync for a micro-batch that is not the step's last (DDP's ``no_sync``, FSDP2's
    ``set_requires_gradient_sync``)."""
    if ranks.sharded:
        return fsdp.accumulating(wrapped, last)
    if ranks.active and not last:
        return wrapped.no_sync()
    return contextlib.nullcontext()


def agree(values: list[float], flags: list[bool], ranks: Ranks) -> tuple[list[float], list[bool]]:
    """The ranks' mean of ``values`` and whether any rank raised each flag, in one all-reduce."""
    if not ranks.active:
        return values, flags
    t = torch.tensor([*values, *map(float, flags)], dtype=torch.float64)
    dist.all_reduce(t)
    return [v / ranks.world for v in t[:len(values)].tolist()], [f > 0 for f in t[len(values):].tolist()]


def total(values: list[float], ranks: Ranks) -> list[float]:
    """The ranks' sums of ``values`` (one all-reduce)."""
    if not ranks.active:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def barrier(ranks: Ranks) -> None:
    if ranks.active:
        dist.barrier()
