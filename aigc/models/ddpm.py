"""A denoising diffusion model (Ho et al. 2020): a UNet that predicts the noise (epsilon) or the
velocity (v, Salimans & Ho 2022) of a noised image, optionally conditioned on a class or on text.

The forward (noising) process and the samplers live in :mod:`aigc.generate.schedulers`; this
file is the network, its config and the EMA of its weights. The config also carries the noise
schedule's settings (``timesteps``, ``beta_schedule``, ``prediction``, ``zero_terminal_snr``):
they say how the weights were trained, so a checkpoint samples with the schedule it learned.

Conditioning (``conditioning``):

- ``"none"``: the time embedding alone;
- ``"class"``: a learned embedding per class added to the time embedding; label ``-1`` is the
  learned null class of classifier-free guidance (Ho & Salimans 2022);
- ``"text"``: a small transformer encoder over the prompt's token ids (trained with the UNet);
  its mean-pooled output is added to the time embedding and its token states are attended to by
  cross-attention wherever there is self-attention. A prompt row of padding only (the empty
  prompt) is replaced by a learned null context.

Shapes for 28x28 gray, ``base_channels`` 32, ``channel_mults`` (1, 2, 2), 2 blocks per level::

    x (B, 1, 28, 28) -> conv 3x3 -> (B, 32, 28, 28)
    down: level 0: 2 x ResBlock(32)           -> (B, 32, 28, 28) -> conv 3x3 /2 -> (B, 32, 14, 14)
          level 1: 2 x ResBlock(64)           -> (B, 64, 14, 14) -> conv 3x3 /2 -> (B, 64, 7, 7)
          level 2: 2 x [ResBlock(64) + Attn]  -> (B, 64, 7, 7)              (lowest resolution)
    mid:  ResBlock, Attn, ResBlock            -> (B, 64, 7, 7)
    up:   level 2..0: 3 x ResBlock on [h, skip] (+ Attn at level 2), nearest x2 between levels
    out:  GroupNorm, SiLU, conv 3x3 (zero-initialised) -> (B, 1, 28, 28)
    t (B,) -> sinusoidal (B, 32) -> MLP -> (B, 128), added to every ResBlock (plus the condition's embedding)
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from aigc.errors import AigcError

CONDITIONING = ("none", "class", "text")


@dataclass
class DDPMConfig:
    """A diffusion UNet, its noise schedule and its conditioning; the EMA decay is part of the model."""

    image_size: int = 28  # side in pixels; divisible by 2 ** (len(channel_mults) - 1)
    channels: int = 1  # 1 = grayscale, 3 = RGB
    base_channels: int = 32  # channels of the first level
    channel_mults: list[int] = field(default_factory=lambda: [1, 2, 2])  # per level, times base_channels
    blocks_per_level: int = 2  # residual blocks per level on the way down (one more on the way up)
    heads: int = 4  # attention heads at the lowest resolution
    groups: int = 8  # GroupNorm groups (divides every level's width)
    dropout: float = 0.1
    timesteps: int = 1000  # T of the training forward process
    beta_schedule: str = "linear"  # linear (Ho et al. 2020) | cosine (Nichol & Dhariwal 2021)
    beta_start: float = 1e-4  # linear schedule: beta_1 .. beta_T
    beta_end: float = 0.02
    prediction: str = "epsilon"  # epsilon | v (Salimans & Ho 2022)
    zero_terminal_snr: bool = False  # rescale so alpha_bar_T = 0 (Lin et al. 2024); needs prediction = "v"
    ema_decay: float = 0.999  # EMA of the weights, used for sampling (0 = sample the trained weights)
    conditioning: str = "none"  # none | class | text
    p_uncond: float = 0.1  # share of training examples whose condition is dropped to the null (CFG)
    conditional: bool = False  # set from conditioning: class labels are used (kept for the image task)
    n_classes: int = 0  # set from the data
    classes: list[str] = field(default_factory=list)  # class names, set from the data
    class_aliases: list[list[str]] = field(default_factory=list)  # other names per class (e.g. Chinese), from the data
    vocab_size: int = 0  # text: set from the caption tokenizer
    text_len: int = 32  # text: prompt tokens seen (longer prompts are refused)
    text_width: int = 128  # text: encoder width (also the cross-attention's key/value width)
    text_layers: int = 2  # text: transformer encoder layers

    def validate(self) -> None:
        mults = list(self.channel_mults)
        if not mults or len(mults) > 6 or any(not isinstance(m, int) or not 1 <= m <= 16 for m in mults):
            raise AigcError(f"model.channel_mults = {self.channel_mults}: expected 1 to 6 integers in [1, 16]")
        if self.image_size < 8 or self.image_size % 2 ** (len(mults) - 1):
            raise AigcError(f"model.image_size = {self.image_size}: expected a side of at least 8 divisible by "
                            f"{2 ** (len(mults) - 1)} (one halving per level of channel_mults)")
        if self.channels not in (1, 3):
            raise AigcError(f"model.channels = {self.channels}: expected 1 (grayscale) or 3 (RGB)")
        if not 1 <= self.base_channels <= 1024 or any((self.base_channels * m) % self.groups for m in mults):
            raise AigcError(f"model.base_channels = {self.base_channels}, model.groups = {self.groups}: every "
                            "level's width must be divisible by groups")
        if self.base_channels * min(mults) % self.heads or not 1 <= self.heads <= 64:
            raise AigcError(f"model.heads = {self.heads}: expected 1 to 64 heads dividing every level's width")
        if not 1 <= self.blocks_per_level <= 8:
            raise AigcError(f"model.blocks_per_level = {self.blocks_per_level}: expected 1 to 8")
        if not 0 <= self.dropout < 1 or not 0 <= self.p_uncond < 1:
            raise AigcError(f"model.dropout = {self.dropout}, model.p_uncond = {self.p_uncond}: expected [0, 1)")
        if not 1 <= self.timesteps <= 10000:
            raise AigcError(f"model.timesteps = {self.timesteps}: expected 1 to 10000")
        if self.beta_schedule not in ("linear", "cosine"):
            raise AigcError(f"model.beta_schedule = {self.beta_schedule!r}: expected 'linear' or 'cosine'")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise AigcError(f"model.beta_start = {self.beta_start}, beta_end = {self.beta_end}: expected "
                            "0 < beta_start < beta_end < 1")
        if self.prediction not in ("epsilon", "v"):
            raise AigcError(f"model.prediction = {self.prediction!r}: expected 'epsilon' or 'v'")
        if self.zero_terminal_snr and self.prediction != "v":
            raise AigcError("model.zero_terminal_snr = true needs model.prediction = 'v': at alpha_bar_T = 0 the "
                            "image cannot be recovered from a noise prediction (Lin et al. 2024, section 3.2)")
        if not 0 <= self.ema_decay < 1:
            raise AigcError(f"model.ema_decay = {self.ema_decay}: expected a number in [0, 1) (0 = off)")
        if self.conditioning not in CONDITIONING:
            raise AigcError(f"model.conditioning = {self.conditioning!r}: expected one of {', '.join(CONDITIONING)}")
        if self.conditional != (self.conditioning == "class"):
            raise AigcError(f"model.conditional = {self.conditional} contradicts model.conditioning = "
                            f"{self.conditioning!r}; set model.conditioning only")
        if self.n_classes < 0 or (self.classes and len(self.classes) != self.n_classes):
            raise AigcError(f"model.n_classes = {self.n_classes} does not match the {len(self.classes)} class names")
        if self.class_aliases and len(self.class_aliases) != len(self.classes):
            raise AigcError(f"model.class_aliases has {len(self.class_aliases)} entries for {len(self.classes)} classes")
        if not 1 <= self.text_len <= 512 or not 8 <= self.text_width <= 1024 or not 1 <= self.text_layers <= 12:
            raise AigcError(f"model.text_len = {self.text_len}, text_width = {self.text_width}, text_layers = "
                            f"{self.text_layers}: expected 1-512 tokens, width 8-1024, 1-12 layers")
        if self.text_width % self.heads:
            raise AigcError(f"model.text_width = {self.text_width}: expected a multiple of model.heads ({self.heads})")

    def __post_init__(self):
        if self.conditioning == "class":
            self.conditional = True


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps ``t (B,)`` -> ``(B, dim)`` float32 (Vaswani et al. 2017,
    as used by Ho et al. 2020): ``[cos(t * f_i), sin(t * f_i)]`` with ``f_i = 10000 ** (-i / (dim / 2))``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    """GroupNorm, SiLU, conv 3x3, + embedding projection, GroupNorm, SiLU, dropout, conv 3x3, + skip."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2, self.drop = nn.GroupNorm(groups, cout), nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, cout, H, W)
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Self-attention over the H*W positions, then (text models) cross-attention to the prompt's tokens."""

    def __init__(self, ch: int, heads: int, groups: int, context_dim: int = 0):
        super().__init__()
        self.heads = heads
        self.norm, self.qkv, self.proj = nn.GroupNorm(groups, ch), nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1)
        if context_dim:
            self.norm_x, self.q = nn.GroupNorm(groups, ch), nn.Linear(ch, ch)
            self.kv, self.proj_x = nn.Linear(context_dim, 2 * ch), nn.Linear(ch, ch)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, ch) -> (B, heads, N, ch / heads)
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).chunk(3, dim=2)  # (B, HW, ch) each
        y = F.scaled_dot_product_attention(self._split(q), self._split(k), self._split(v))  # (B, heads, HW, d)
        x = x + self.proj(y.transpose(1, 2).reshape(b, h * w, c).transpose(1, 2).view(b, c, h, w))
        if context is None:
            return x
        q = self.q(self.norm_x(x).flatten(2).transpose(1, 2))  # (B, HW, ch)
        k, v = self.kv(context).chunk(2, dim=2)  # (B, L, ch) each
        y = F.scaled_dot_product_attention(self._split(q), self._split(k), self._split(v),
                                           attn_mask=mask[:, None, None, :])  # mask (B, L) True = attend
        return x + self.proj_x(y.transpose(1, 2).reshape(b, h * w, c)).transpose(1, 2).view(b, c, h, w)


class TextEncoder(nn.Module):
    """Token ids ``(B, L)`` (0 = padding) -> token states ``(B, L, width)`` and their mask ``(B, L)`` bool."""

    def __init__(self, vocab_size: int, length: int, width: int, layers: int, heads: int):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab_size, width), nn.Parameter(torch.zeros(length, width))
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = tokens != 0  # (B, L)
        h = self.tok(tokens) + self.pos[: tokens.shape[1]]
        # a row of padding only attends to nothing; it is replaced by the null context by the caller
        h = self.blocks(h, src_key_padding_mask=~(mask | ~mask.any(1, keepdim=True)))
        return self.norm(h), mask


class UNet(nn.Module):
    """The denoiser: ``(x_t (B, C, S, S), t (B,) int64, condition)`` -> ``(B, C, S, S)`` epsilon or v."""

    def __init__(self, config: DDPMConfig):
        super().__init__()
        cfg, self.config = config, config
        base, g = cfg.base_channels, cfg.groups
        emb = 4 * base
        self.time = nn.Sequential(nn.Linear(base, emb), nn.SiLU(), nn.Linear(emb, emb))
        ctx = 0
        if cfg.conditioning == "class":
            self.class_emb = nn.Embedding(cfg.n_classes + 1, emb)  # row n_classes: the learned null class
        elif cfg.conditioning == "text":
            ctx = cfg.text_width
            self.text = TextEncoder(cfg.vocab_size, cfg.text_len, ctx, cfg.text_layers, cfg.heads)
            self.null_context = nn.Parameter(torch.randn(1, ctx) * 0.02)  # the empty prompt's one token
            self.text_emb = nn.Linear(ctx, emb)
        widths = [base * m for m in cfg.channel_mults]
        last = len(widths) - 1
        self.stem = nn.Conv2d(cfg.channels, base, 3, padding=1)
        self.down, skips, ch = nn.ModuleList(), [base], base
        for i, w in enumerate(widths):
            for _ in range(cfg.blocks_per_level):
                self.down.append(nn.ModuleList([ResBlock(ch, w, emb, g, cfg.dropout),
                                                *([AttnBlock(w, cfg.heads, g, ctx)] if i == last else [])]))
                ch = w
                skips.append(ch)
            if i < last:
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                skips.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb, g, cfg.dropout), AttnBlock(ch, cfg.heads, g, ctx),
                                  ResBlock(ch, ch, emb, g, cfg.dropout)])
        self.up = nn.ModuleList()
        for i in reversed(range(len(widths))):
            for _ in range(cfg.blocks_per_level + 1):
                self.up.append(nn.ModuleList([ResBlock(ch + skips.pop(), widths[i], emb, g, cfg.dropout),
                                              *([AttnBlock(widths[i], cfg.heads, g, ctx)] if i == last else [])]))
                ch = widths[i]
            if i > 0:
                self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"),
                                              nn.Conv2d(ch, ch, 3, padding=1)]))
        self.out = nn.Sequential(nn.GroupNorm(g, ch), nn.SiLU(), nn.Conv2d(ch, cfg.channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def condition(self, labels: torch.Tensor | None, tokens: torch.Tensor | None, like: torch.Tensor):
        """The condition's embedding ``(B, emb)`` (or None) and, for text, its context ``(B, L, width)``
        and mask ``(B, L)``. Label -1 and an all-padding prompt row are the learned null."""
        cfg = self.config
        if cfg.conditioning == "class":
            if labels is None:
                raise AigcError("a class-conditional diffusion model needs labels (-1 = unconditional)")
            idx = torch.where(labels < 0, torch.full_like(labels, cfg.n_classes), labels)
            return self.class_emb(idx.to(like.device)), None, None
        if cfg.conditioning == "text":
            if tokens is None:
                raise AigcError("a text-conditional diffusion model needs prompt tokens (all padding = unconditional)")
            context, mask = self.text(tokens.to(like.device))  # (B, L, width), (B, L)
            null = ~mask.any(1)  # (B,) rows of the empty prompt
            first = torch.zeros_like(mask)
            first[:, 0] = True
            context = torch.where(null[:, None, None] & first[..., None], self.null_context.to(context.dtype), context)
            mask = torch.where(null[:, None], first, mask)
            pooled = (context * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # (B, width)
            return self.text_emb(pooled), context, mask
        return None, None, None

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None,
                tokens: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time(timestep_embedding(t.to(x.device), self.config.base_channels).to(x.dtype))  # (B, emb)
        cond, context, mask = self.condition(labels, tokens, x)
        if cond is not None:
            emb = emb + cond
        h, skips = self.stem(x), []
        skips.append(h)
        for layer in self.down:
            h = self._run(layer, h, emb, context, mask)
            skips.append(h)
        h = self._run(self.mid, h, emb, context, mask)
        for layer in self.up:
            if isinstance(layer[0], ResBlock):
                h = torch.cat([h, skips.pop()], dim=1)
            h = self._run(layer, h, emb, context, mask)
        return self.out(h)

    @staticmethod
    def _run(layers: nn.ModuleList, h, emb, context, mask):
        for m in layers:
            if isinstance(m, ResBlock):
                h = m(h, emb)
            elif isinstance(m, AttnBlock):
                h = m(h, context, mask)
            else:
                h = m(h)
        return h


class DDPM(nn.Module):
    """The trained UNet (``net``) and, with ``ema_decay`` > 0, its EMA (``ema``) used for sampling."""

    family = "ddpm"

    def __init__(self, config: DDPMConfig):
        super().__init__()
        config.validate()
        if config.conditioning == "class" and config.n_classes < 2:
            raise AigcError("model.conditioning = 'class' needs labelled data with at least 2 classes")
        if config.conditioning == "text" and config.vocab_size < 2:
            raise AigcError("model.conditioning = 'text' needs captioned data (a caption vocabulary)")
        self.config = config
        self.net = UNet(config)
        self.ema = copy.deepcopy(self.net) if config.ema_decay > 0 else None
        if self.ema is not None:
            self.ema.requires_grad_(False)
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.int64))

    @property
    def sampler_net(self) -> UNet:
        """The weights to sample with: the EMA when there is one."""
        return self.ema if self.ema is not None else self.net

    @torch.no_grad()
    def update_ema(self) -> None:
        """ema <- d * ema + (1 - d) * net, ``d = min(ema_decay, (1 + n) / (10 + n))`` after n updates
        (the warm-up of TensorFlow's ExponentialMovingAverage); ``ema_updates`` is checkpointed with the weights."""
        if self.ema is None:
            return
        n = int(self.ema_updates)
        decay = min(self.config.ema_decay, (1 + n) / (10 + n))
        self.ema_updates += 1
        for e, p in zip(self.ema.parameters(), self.net.parameters()):
            e.lerp_(p, 1.0 - decay)

    def forward(self, x, t, labels=None, tokens=None) -> torch.Tensor:
        """The trained network's prediction; see :class:`UNet`."""
        return self.net(x, t, labels, tokens)
