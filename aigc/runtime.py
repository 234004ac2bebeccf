"""Where torch runs: the device, the CPU threads, autocast.

Base layer: knows torch and the machine, nothing of models, folders or configs.
"""

from __future__ import annotations

import contextlib
import os
import shutil

import torch

from aigc.errors import AigcError


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device.

    Raises:
        AigcError: a CUDA device asked for on a machine without one.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not (name == "cpu" or name.startswith("cuda")):
        raise AigcError(f"device = {name!r}: expected auto, cpu, cuda or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AigcError(f"device = {name!r} but no CUDA device is available (use 'auto' or 'cpu')")
    try:
        return torch.device(name)
    except RuntimeError:
        raise AigcError(f"device = {name!r}: expected auto, cpu, cuda or cuda:N") from None


def set_threads(n: int = 0, what: str = "threads") -> None:
    """Use ``n`` CPU threads for torch (0 = every core this process may use).

    Raises:
        AigcError: ``n`` negative or more than the machine's cores (``what`` names the setting).
    """
    cores = os.cpu_count() or 1
    if not 0 <= n <= cores:
        raise AigcError(f"{what} = {n}: expected 0 (all cores) up to this machine's {cores} cores")
    avail = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    torch.set_num_threads(n or avail)


def autocast(device: torch.device, dtype: str, what: str = "train.dtype"):
    """A context manager running ``device``'s matrix products in ``dtype`` (float32: no autocast).

    Raises:
        AigcError: float16 asked for on a device other than CUDA.
    """
    if dtype == "float32":
        return contextlib.nullcontext()
    if dtype == "float16" and device.type != "cuda":
        raise AigcError(f"{what} = 'float16' needs a CUDA device; use bfloat16 on CPU")
    return torch.autocast(device.type, dtype=getattr(torch, dtype))


def require_compiler(what: str) -> None:
    """Raises AigcError when torch.compile cannot run on the CPU here: inductor writes C++ kernels,
    so it needs a C/C++ compiler on PATH (``what`` names the setting that asked for it)."""
    if not any(shutil.which(cc) for cc in ("cc", "gcc", "clang", "c++", "g++")):
        raise AigcError(f"{what} needs a C/C++ compiler on PATH (torch.compile builds C++ kernels for the CPU); "
                        f"install gcc or leave {what} off")
