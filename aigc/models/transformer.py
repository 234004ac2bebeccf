"""The `gpt` family: a decoder-only Transformer language model.

The defaults of :class:`GPTConfig` are GPT-2 small (Radford et al. 2019): learned
positions, LayerNorm, GELU MLP, biases, tied embeddings. Switches move it toward
the Llama layout (Touvron et al. 2023) one choice at a time:

- ``norm = "rmsnorm"``: RMSNorm (Zhang & Sennrich 2019) instead of LayerNorm.
- ``positions = "rope"``: rotary position embeddings (Su et al. 2021) on q and k,
  rotating pairs (i, i + head_dim/2) as in the Llama reference code.
- ``mlp = "swiglu"``: gated SiLU MLP (Shazeer 2020).
- ``n_kv_head < n_head``: grouped-query attention (Ainslie et al. 2023), the keys
  and values of one kv head shared by ``n_head / n_kv_head`` query heads.

Attention runs through ``torch.nn.functional.scaled_dot_product_attention``. The
inference engine (:mod:`aigc.generate.engine`) passes a :class:`KVCache` as
``forward(idx, cache=...)``; the model writes the new keys and values into it and
attends over everything cached so far.

Shapes in comments: B batch, T new tokens, S cached + new tokens, C = d_model,
H = n_head, Hkv = n_kv_head, D = head_dim (C / H unless head_size is set), V = vocab_size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from aigc.errors import AigcError


@dataclass
class GPTConfig:
    """Architecture of a :class:`GPT`; saved as config.json in every model folder."""

    vocab_size: int = 50257
    block_size: int = 1024  # context length in tokens
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int = 0  # 0 = n_head (multi-head attention); fewer = grouped-query attention
    d_model: int = 768
    d_ff: int = 0  # MLP hidden size; 0 = 4 * d_model (gelu) or 8/3 * d_model rounded up to 64 (swiglu)
    dropout: float = 0.0
    bias: bool = True  # biases in linear layers and norms
    qkv_bias: bool = False  # biases on the q, k, v projections even when bias = false (Qwen2)
    head_size: int = 0  # size of one attention head; 0 = d_model / n_head
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_eps: float = 1e-5
    positions: str = "learned"  # learned | rope
    rope_theta: float = 10000.0
    mlp: str = "gelu"  # gelu | swiglu
    tie_embeddings: bool = True  # the output projection shares the token embedding matrix

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.head_size or self.d_model // self.n_head

    @property
    def ff_dim(self) -> int:
        if self.d_ff:
            return self.d_ff
        if self.mlp == "swiglu":
            return 64 * math.ceil(8 * self.d_model / 3 / 64)
        return 4 * self.d_model

    def validate(self) -> None:
        """Raise :class:`AigcError` naming the first ``model.*`` key that is out of range."""
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "d_model"):
            if getattr(self, name) < 1:
                raise AigcError(f"model.{name} = {getattr(self, name)}: expected a positive integer")
        if self.head_size < 0:
            raise AigcError(f"model.head_size = {self.head_size}: expected 0 (d_model / n_head) or a positive integer")
        if self.d_model % self.n_head and not self.head_size:
            raise AigcError(f"model.d_model = {self.d_model} is not divisible by model.n_head = {self.n_head}")
        if self.n_kv_head < 0 or self.n_head % self.kv_heads:
            raise AigcError(f"model.n_kv_head = {self.n_kv_head}: must divide model.n_head = {self.n_head}")
        if self.positions == "rope" and self.head_dim % 2:
            raise AigcError(f"rotary positions need an even head size, got d_model/n_head = {self.head_dim}")
        if not (self.rope_theta > 1 and self.norm_eps > 0) or math.isinf(self.rope_theta + self.norm_eps):
            raise AigcError(f"model.rope_theta = {self.rope_theta} and model.norm_eps = {self.norm_eps}: "
                            "expected rope_theta > 1 and norm_eps > 0, both finite")
        if self.d_ff < 0:
            raise AigcError(f"model.d_ff = {self.d_ff}: expected 0 (default) or a positive integer")
        if not 0 <= self.dropout < 1:
            raise AigcError(f"model.dropout = {self.dropout}: expected a number in [0, 1)")
        for name, allowed in (("norm", ("layernorm", "rmsnorm")), ("positions", ("learned", "rope")),
                              ("mlp", ("gelu", "swiglu"))):
            if getattr(self, name) not in allowed:
                raise AigcError(f"model.{name} = {getattr(self, name)!r}: expected one of {', '.join(allowed)}")


class KVCache:
    """Keys and values of every layer for the tokens seen so far.

    Preallocated as ``k, v: (n_layer, B, Hkv, max_len, D)`` so decoding appends
    without reallocating. ``pos`` is the number of positions already filled; the
    model advances it after the last layer of each forward pass.

    With ``per_row=True`` (continuous batching, :class:`aigc.generate.engine.BatchEngine`)
    each row holds its own sequence: ``lengths (B,) int64`` counts the positions of each
    row, a forward pass feeds one token to each of the first ``x.size(0)`` rows, and rows
    are filled from a prefilled cache with :meth:`write_rows` and compacted with
    :meth:`move_rows`.

    With ``static=True`` (per-row, for a compiled decode step) attention always spans all
    ``max_len`` positions, the mask hiding those past each row's length: every step has the
    same shapes and no host sync, so one compiled graph serves the whole generation. The
    caller keeps the lengths below ``max_len``.
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int, device, dtype, per_row: bool = False,
                 static: bool = False):
        shape = (config.n_layer, batch_size, config.kv_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.pos = 0
        self.static = static
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device) if per_row or static else None

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v ``(B, Hkv, T, D)`` at positions [pos, pos+T); return all ``(B, Hkv, S, D)``.

        Per-row: T = 1, row b writes at ``lengths[b]``; returns the first B rows up to the
        longest of them, S = max(lengths) + 1 (the attention mask hides the rest).
        """
        if self.lengths is not None:
            B = k.size(0)
            pos = self.lengths[:B]
            if not self.static and int(pos.max()) >= self.max_len:
                raise ValueError(f"KV cache row full: {int(pos.max())} of {self.max_len} positions")
            rows = torch.arange(B, device=k.device)
            self.k[layer, rows, :, pos] = k[:, :, 0]  # (B, Hkv, D) into each row's next position
            self.v[layer, rows, :, pos] = v[:, :, 0]
            if self.static:  # every position, S = max_len: fixed shapes for a compiled step
                return self.k[layer, :B], self.v[layer, :B]
            S = int(pos.max()) + 1
            return self.k[layer, :B, :, :S], self.v[layer, :B, :, :S]
        t = k.size(2)
        if self.pos + t > self.max_len:
            raise ValueError(f"KV cache full: {self.pos} + {t} > {self.max_len} positions")
        self.k[layer, :, :, self.pos:self.pos + t] = k
        self.v[layer, :, :, self.pos:self.pos + t] = v
        return self.k[layer, :, :, :self.pos + t], self.v[layer, :, :, :self.pos + t]

    def write_rows(self, start: int, src: "KVCache", count: int) -> None:
        """Per-row: rows [start, start+count) get the ``src.pos`` positions of ``src``'s rows
        (its one row repeated when ``src`` has batch 1)."""
        n = src.pos
        self.k[:, start:start + count, :, :n] = src.k[:, :, :, :n]
        self.v[:, start:start + count, :, :n] = src.v[:, :, :, :n]
        self.lengths[start:start + count] = n

    def move_rows(self, src: int, dst: int, count: int) -> None:
        """Per-row: copy rows [src, src+count) to [dst, dst+count) (compaction after a sequence leaves)."""
        self.k[:, dst:dst + count] = self.k[:, src:src + count].clone()
        self.v[:, dst:dst + count] = self.v[:, src:src + count].clone()
        self.lengths[dst:dst + count] = self.lengths[src:src + count].clone()

    def row_full(self, row: int) -> bool:
        """Per-row: has ``row`` filled every position?"""
        return int(self.lengths[row]) >= self.max_len

    def grow(self, batch_size: int) -> None:
        """Per-row: make room for ``batch_size`` rows, keeping the rows already there."""
        old = self.k.size(1)
        if batch_size <= old:
            return
        pad = list(self.k.shape)
        pad[1] = batch_size - old
        self.k = torch.cat([self.k, self.k.new_zeros(pad)], dim=1)
        self.v = torch.cat([self.v, self.v.new_zeros(pad)], dim=1)
        self.lengths = torch.cat([self.lengths, self.lengths.new_zeros(batch_size - old)])


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight (Zhang & Sennrich 2019)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.d_model, config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)


def rope_tables(config: GPTConfig, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles, each ``(length, D/2)`` float32.

    Angle of position p and pair i: p * theta^(-2i/D) (Su et al. 2021).
    """
    d = config.head_dim
    inv_freq = config.rope_theta ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)  # (D/2,)
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)  # (length, D/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (i, i + D/2) of ``x (B, H, T, D)`` by angles with ``cos, sin (T, D/2)``."""
    x1, x2 = x.float().chunk(2, dim=-1)  # (B, H, T, D/2) each
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return out.type_as(x)


class Attention(nn.Module):
    """Causal self-attention with optional grouped-query heads, rotary positions and KV cache."""

    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        qkv_bias = config.bias or config.qkv_bias
        self.q_proj = nn.Linear(config.d_model, self.n_head * self.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(config.d_model, self.n_kv_head * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(config.d_model, self.n_kv_head * self.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, config.d_model, bias=config.bias)
        self.dropout = config.dropout
        self.rope = config.positions == "rope"

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                cache: KVCache | None) -> torch.Tensor:
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        if self.rope:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None and cache.lengths is not None:  # per-row lengths: row b sees keys j <= lengths[b]
            lengths = cache.lengths[:B]
            k, v = cache.update(self.layer, k, v)  # (B, Hkv, S, D), S = max(lengths) + 1
            mask = (torch.arange(k.size(2), device=x.device)[None, :] <= lengths[:, None])[:, None, None, :]
            causal = False  # mask (B, 1, 1, S)
        else:
            past = cache.pos if cache is not None else 0
            if cache is not None:
                k, v = cache.update(self.layer, k, v)  # (B, Hkv, S, D), S = past + T
            if past == 0:
                mask, causal = None, True  # plain causal attention over the T new tokens
            elif T == 1:
                mask, causal = None, False  # one new token sees every cached position
            else:  # T new tokens after `past` cached ones: token i sees keys j <= past + i
                S = past + T
                mask = torch.arange(S, device=x.device)[None, :] <= past + torch.arange(T, device=x.device)[:, None]
                causal = False
        y = self.attend(q, k, v, mask, causal)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)  # (B, T, C)
        return self.o_proj(y)


    def attend(self, q, k, v, mask, causal: bool) -> torch.Tensor:
        """Scaled dot-product attention ``(B, H, T, D)``. Under CPU autocast it runs in float32: PyTorch's
        bfloat16 flash-attention backward on CPU was measured 6x slower than float32's (issue 14)."""
        args = dict(attn_mask=mask, is_causal=causal, dropout_p=self.dropout if self.training else 0.0,
                    enable_gqa=self.n_kv_head != self.n_head)
        if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **args)
        return F.scaled_dot_product_attention(q, k, v, **args)


class MLP(nn.Module):
    """GELU MLP (GPT-2) or gated SiLU MLP (SwiGLU, Llama)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        if self.swiglu:
            self.gate_proj = nn.Linear(config.d_model, config.ff_dim, bias=config.bias)
        self.up_proj = nn.Linear(config.d_model, config.ff_dim, bias=config.bias)
        self.down_proj = nn.Linear(config.ff_dim, config.d_model, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        if self.swiglu:
            h = F.silu(self.gate_proj(x)) * self.up_proj(x)
        else:
            h = F.gelu(self.up_proj(x), approximate="tanh")  # GPT-2's tanh approximation
        return self.down_proj(h)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.norm1 = make_norm(config)
        self.attn = Attention(config, layer)
        self.norm2 = make_norm(config)
        self.mlp = MLP(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, rope, cache):
        x = x + self.drop(self.attn(self.norm1(x), rope, cache))
        x = x + self.drop(self.mlp(self.norm2(x)))
        return x


class GPT(nn.Module):
    """Decoder-only Transformer: tokens ``(B, T) int64`` -> next-token logits ``(B, T, V) float``."""

    family = "gpt"

    def __init__(self, config: GPTConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        if config.positions == "learned":
            self.pos_emb = nn.Embedding(config.block_size, config.d_model)
        else:
            cos, sin = rope_tables(config, config.block_size)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm_f = make_norm(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.init_weights()

    def init_weights(self) -> None:
        """GPT-2 initialisation: N(0, 0.02) for linears and embeddings, zero biases, unit norms,
        and N(0, 0.02 / sqrt(2 * n_layer)) for the projections that write into the residual
        stream (o_proj, down_proj), as in the GPT-2 paper and nanoGPT."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                std = 0.02 / math.sqrt(2 * self.config.n_layer) if name.endswith(("o_proj", "down_proj")) else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            elif isinstance(module, (nn.LayerNorm, RMSNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    @property
    def context_length(self) -> int:
        return self.config.block_size

    def new_cache(self, batch_size: int, max_len: int | None = None, per_row: bool = False,
                  static: bool = False) -> KVCache:
        """An empty :class:`KVCache` for ``batch_size`` sequences of up to ``max_len`` tokens
        (``per_row``: each row its own sequence and length, for continuous batching; ``static``:
        fixed shapes for a compiled decode step)."""
        p = self.tok_emb.weight
        return KVCache(self.config, batch_size, max_len or self.config.block_size, p.device, p.dtype, per_row,
                       static)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits ``(B, T, V)`` for tokens ``idx (B, T)``, placed after ``cache.pos`` cached ones.

        Raises:
            ValueError: if the positions run past ``block_size``.
        """
        B, T = idx.shape
        x = self.tok_emb(idx)  # (B, T, C)
        if cache is not None and cache.lengths is not None:  # per-row positions, one new token per row
            if T != 1:
                raise ValueError(f"a per-row cache takes one token per row, got {T}")
            positions = cache.lengths[:B]  # (B,)
            if self.config.positions == "learned":
                x = x + self.pos_emb(positions)[:, None, :]  # (B, 1, C)
                rope = None
            else:
                rope = (self.rope_cos[positions][:, None, None, :],
                        self.rope_sin[positions][:, None, None, :])  # (B, 1, 1, D/2) each
        else:
            start = cache.pos if cache is not None else 0
            if start + T > self.config.block_size:
                raise ValueError(f"sequence of {start + T} tokens is longer than block_size {self.config.block_size}")
            rope = None
            if self.config.positions == "learned":
                x = x + self.pos_emb(torch.arange(start, start + T, device=idx.device))  # (T, C) broadcast
            else:
                rope = (self.rope_cos[start:start + T], self.rope_sin[start:start + T])  # (T, D/2) each
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, rope, cache)
        if cache is not None and cache.lengths is not None:
            cache.lengths[:B] += 1
        elif cache is not None:
            cache.pos += T
        return self.lm_head(self.norm_f(x))  # (B, T, V)
