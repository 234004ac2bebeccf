"""Inference precision of a model's weights: float32, bfloat16, float16, or int8 weight-only.

- ``bfloat16`` / ``float16``: every weight and the KV cache in that type; the rotary tables
  stay float32 (angles of far positions lose their fraction in 16 bits) and the sampler
  works on float32 logits.
- ``int8``: weight-only quantisation of every linear layer of the Transformer blocks and the
  output projection, symmetric and per output channel: ``w ~= scale[n] * q[n, k]`` with
  ``q`` int8 in [-127, 127] and ``scale[n] = max_k |w[n, k]| / 127`` (the scheme of
  LLM.int8()'s vector-wise quantisation without its outlier split, Dettmers et al. 2022, and
  of torchao's int8 weight-only). Embeddings and norms stay float32. On CPU the product runs
  in PyTorch's int8-weight kernel (``torch._weight_int8pack_mm``) with bfloat16 activations,
  the path chosen by measurement (bench/decode.py); elsewhere the weights are dequantised per
  call.

Models layer: pure modules, no files.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from aigc.errors import AigcError

DTYPES = ("float32", "bfloat16", "float16", "int8")
INT8_FAMILIES = ("gpt",)  # families with a quantised path
HALF_FAMILIES = ("gpt", "lstm")  # families that run in 16-bit floats (image models: float32 only)


class Int8Linear(nn.Module):
    """A linear layer whose weight is int8 with one float scale per output channel.

    ``forward``: ``x (..., K)`` float -> ``(..., N)`` of ``x``'s dtype.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()  # (N, K)
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=torch.finfo(torch.float32).tiny)  # (N,)
        self.register_buffer("qweight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)
        self.register_buffer("scale_bf16", scale.to(torch.bfloat16))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)
        self.in_features, self.out_features = w.shape[1], w.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)  # (M, K)
        if x.device.type == "cpu":
            y = torch._weight_int8pack_mm(x2.to(torch.bfloat16), self.qweight, self.scale_bf16).to(x.dtype)
        else:
            y = F.linear(x2, self.qweight.to(x.dtype)) * self.scale.to(x.dtype)  # (M, N)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


def check_dtype(dtype: str, family: str, device: torch.device | str = "cpu", what: str = "--dtype") -> None:
    """Raise :class:`AigcError` for a dtype this model and device cannot run in.

    Raises:
        AigcError: an unknown name, int8 (or 16-bit) for a family with no such path (named), or
            float16 on CPU (PyTorch's float16 CPU kernels are slow and some missing; bfloat16 is
            the CPU's 16-bit type).
    """
    if dtype not in DTYPES:
        raise AigcError(f"{what} {dtype!r}: expected one of {', '.join(DTYPES)}")
    if dtype in ("bfloat16", "float16") and family not in HALF_FAMILIES:
        raise AigcError(f"{what} {dtype}: the {family!r} family runs in float32 only (16-bit is for: "
                        f"{', '.join(HALF_FAMILIES)})")
    if dtype == "int8" and family not in INT8_FAMILIES:
        raise AigcError(f"{what} int8: the {family!r} family has no quantised path (int8 is for: "
                        f"{', '.join(INT8_FAMILIES)}); use float32 or bfloat16")
    if dtype == "float16" and torch.device(device).type == "cpu":
        raise AigcError(f"{what} float16 needs a CUDA device; on CPU use bfloat16")


def set_inference_dtype(model: nn.Module, dtype: str) -> nn.Module:
    """Put ``model`` (in eval mode, for inference only) into ``dtype``, in place; returns it.

    Raises:
        AigcError: see :func:`check_dtype`.
    """
    family = getattr(model, "family", type(model).__name__)
    device = next(model.parameters()).device
    check_dtype(dtype, family, device)
    if dtype == "float32":
        return model
    if dtype in ("bfloat16", "float16"):
        keep = {name: b for name, b in model.named_buffers() if name.startswith("rope_")}
        model.to(getattr(torch, dtype))
        for name, b in keep.items():
            setattr(model, name, b)  # rotary tables stay float32
        return model
    model.lm_head = Int8Linear(model.lm_head)  # unties from the embedding, which stays float32
    for block in model.blocks:
        for parent in (block.attn, block.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, Int8Linear(child))
    return model.eval()
