"""What makes a training step faster without changing what it computes: the fused AdamW step,
``torch.compile`` of the model and its loss (``train.compile``), and a measured answer to whether
bfloat16 autocast pays on the CPU at hand.

Train layer: knows the train config and torch; nothing of tasks, data or files.
"""

from __future__ import annotations

import time

import torch

from aigc.runtime import require_compiler


def make_optimizer(groups: list[dict], t, device: torch.device) -> torch.optim.AdamW:
    """AdamW over ``groups`` with ``train.lr``/``beta1``/``beta2``, as one fused kernel per step on CPU
    and CUDA (PyTorch's ``fused=True``; on 2 CPU threads it steps 2 M parameters in 1.7 ms where the
    per-parameter loop takes 9.4 ms, bench/RESULTS.md), the per-parameter loop elsewhere."""
    fused = True if device.type in ("cpu", "cuda") else None
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), fused=fused)


def maybe_compile(module: torch.nn.Module, t) -> torch.nn.Module:
    """``torch.compile(module)`` when ``train.compile`` is set (the module itself otherwise). The
    compiled wrapper shares the module's parameters, so checkpoints hold the plain module's state.

    Raises:
        AigcError: compile asked for on CPU without a C compiler (inductor writes C++ kernels).
    """
    if not t.compile:
        return module
    require_compiler("train.compile")
    return torch.compile(module)


def compile_objective(objective, t):
    """``objective`` (``(model, batch, gen) -> (loss, logs)``) through ``torch.compile`` when
    ``train.compile`` is set, so the model's forward and its loss compile as one graph (and their
    backward as another): at nanoGPT's baby-GPT shape under bfloat16 autocast the step took about
    half the time of compiling the model alone (bench/RESULTS.md). ``objective`` itself otherwise.

    Raises:
        AigcError: compile asked for on CPU without a C compiler.
    """
    if not t.compile:
        return objective
    require_compiler("train.compile")
    return torch.compile(objective)


def bf16_matmul_speedup(n: int = 512, repeats: int = 5) -> float:
    """How many times faster a ``(n, n) @ (n, n)`` product runs in bfloat16 than in float32 on this
    CPU, with the current threads (median of ``repeats``; > 1: bfloat16 is faster). About 30 ms."""
    a32, b32 = torch.randn(n, n), torch.randn(n, n)
    a16, b16 = a32.bfloat16(), b32.bfloat16()

    def seconds(a, b) -> float:
        a @ b  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        return sorted(times)[repeats // 2]
    return seconds(a32, b32) / max(seconds(a16, b16), 1e-9)


def dtype_note(device: torch.device, dtype: str) -> str | None:
    """One line saying whether ``train.dtype = bfloat16`` pays on this CPU, measured now; None when
    there is nothing to say (float32, or a GPU)."""
    if dtype != "bfloat16" or device.type != "cpu":
        return None
    x = bf16_matmul_speedup()
    if x >= 1.1:
        return (f"train.dtype = bfloat16: this CPU runs bfloat16 matrix products {x:.1f}x as fast as float32; "
                "attention, the loss and the optimizer stay in float32")
    return (f"train.dtype = bfloat16: this CPU runs bfloat16 matrix products at {x:.2f}x the speed of float32 "
            "(no AMX or AVX-512 BF16 here); train.dtype = float32 will train faster")
