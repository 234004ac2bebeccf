"""DCGAN: a convolutional generator and discriminator (Radford, Metz & Chintala 2016).

Departures and options beyond the paper:

- sized for 28x28 (Fashion-MNIST: 7 -> 14 -> 28) as well as 32 and 64 pixels (4 -> 8 -> ...);
  a linear layer maps z to the first feature map instead of a 1x1 transposed conv;
- ``spectral_norm``: every discriminator weight divided by its largest singular value
  (Miyato et al. 2018), and no batch norm in D;
- ``loss``: the non-saturating loss of Goodfellow et al. 2014 (``ns``) or the hinge loss
  (Lim & Ye 2017; Miyato et al. 2018);
- ``ema_decay``: an exponential moving average of G's weights, used for sampling
  (Yazici et al. 2019; Karras et al. 2018), with a warm-up so early samples are not noise;
- class-conditional (``conditional``): G sees a label embedding concatenated to z;
  D is a projection discriminator (Miyato & Koyama 2018): ``D(x, y) = w.h + embed(y).h``.

Shapes for 28x28, g_width = d_width = 64, z_dim = 100 (B = batch)::

    G: z (B, 100) [+ embed(y) (B, 100)] -> linear -> (B, 128, 7, 7) -> BN, ReLU
       -> convT 4x4/2 -> (B, 64, 14, 14) -> BN, ReLU -> convT 4x4/2 -> (B, 1, 28, 28) -> tanh
    D: x (B, 1, 28, 28) -> conv 4x4/2 -> (B, 64, 14, 14) -> LReLU(0.2)
       -> conv 4x4/2 -> (B, 128, 7, 7) [-> BN] -> LReLU -> flatten (B, 6272) -> linear -> (B,) logits
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _sn

from aigc.errors import AigcError


def pyramid(image_size: int) -> tuple[int, int]:
    """(base, levels): the smallest feature map side (>= 4) and the number of 2x steps to ``image_size``."""
    levels = 0
    while image_size % (2 ** (levels + 1)) == 0 and image_size // 2 ** (levels + 1) >= 4:
        levels += 1
    return image_size // 2 ** levels, levels


@dataclass
class DCGANConfig:
    """A DCGAN; the training options (loss, EMA) live here too, so a checkpoint says how it was trained."""

    image_size: int = 28  # output side in pixels: 28, 32, 64 (any side = base * 2**levels with base >= 4)
    channels: int = 1  # 1 = grayscale, 3 = RGB
    z_dim: int = 100  # latent noise dimension
    g_width: int = 64  # channels of G's last hidden layer; doubles at each coarser level
    d_width: int = 64  # channels of D's first layer; doubles at each coarser level
    spectral_norm: bool = True  # spectral normalisation of D's weights (Miyato et al. 2018)
    loss: str = "hinge"  # hinge | ns (non-saturating)
    ema_decay: float = 0.999  # EMA of G's weights for sampling (0 = off)
    conditional: bool = False  # class-conditional G and projection D
    n_classes: int = 0  # set from the data when conditional
    classes: list[str] = field(default_factory=list)  # class names, set from the data

    def validate(self) -> None:
        base, levels = pyramid(self.image_size) if self.image_size > 0 else (0, 0)
        if self.image_size < 8 or levels < 1:
            raise AigcError(f"model.image_size = {self.image_size}: expected a side like 28, 32 or 64 "
                            "(a base of at least 4 pixels doubled one or more times)")
        if self.channels not in (1, 3):
            raise AigcError(f"model.channels = {self.channels}: expected 1 (grayscale) or 3 (RGB)")
        for name in ("z_dim", "g_width", "d_width"):
            if not 1 <= getattr(self, name) <= 4096:
                raise AigcError(f"model.{name} = {getattr(self, name)}: expected an integer in [1, 4096]")
        if self.loss not in ("hinge", "ns"):
            raise AigcError(f"model.loss = {self.loss!r}: expected 'hinge' or 'ns' (non-saturating)")
        if not 0 <= self.ema_decay < 1:
            raise AigcError(f"model.ema_decay = {self.ema_decay}: expected a number in [0, 1) (0 = off)")
        if self.n_classes < 0 or (self.classes and len(self.classes) != self.n_classes):
            raise AigcError(f"model.n_classes = {self.n_classes} does not match the {len(self.classes)} class names")


class Generator(nn.Module):
    """z ``(B, z_dim)`` (+ labels ``(B,) int64``) -> images ``(B, channels, S, S)`` in [-1, 1]."""

    def __init__(self, cfg: DCGANConfig):
        super().__init__()
        base, levels = pyramid(cfg.image_size)
        widths = [cfg.g_width * 2 ** (levels - 1 - i) for i in range(levels)]  # e.g. [128, 64]
        self.base, self.width0 = base, widths[0]
        self.embed = nn.Embedding(cfg.n_classes, cfg.z_dim) if cfg.conditional else None
        z_in = cfg.z_dim * (2 if cfg.conditional else 1)
        self.fc = nn.Linear(z_in, widths[0] * base * base, bias=False)
        self.bn0 = nn.BatchNorm2d(widths[0])
        ups = []
        for i in range(levels - 1):
            ups += [nn.ConvTranspose2d(widths[i], widths[i + 1], 4, 2, 1, bias=False), nn.BatchNorm2d(widths[i + 1]),
                    nn.ReLU(inplace=True)]
        ups += [nn.ConvTranspose2d(widths[-1], cfg.channels, 4, 2, 1), nn.Tanh()]
        self.ups = nn.Sequential(*ups)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(y)], dim=1)  # (B, 2 z_dim)
        h = self.fc(z).view(-1, self.width0, self.base, self.base)  # (B, W0, base, base)
        return self.ups(torch.relu(self.bn0(h)))  # (B, C, S, S)


class Discriminator(nn.Module):
    """images ``(B, C, S, S)`` (+ labels) -> realness logits ``(B,)`` float32."""

    def __init__(self, cfg: DCGANConfig):
        super().__init__()
        sn = _sn if cfg.spectral_norm else (lambda m: m)
        base, levels = pyramid(cfg.image_size)
        widths = [cfg.d_width * 2 ** i for i in range(levels)]  # e.g. [64, 128]
        layers, cin = [], cfg.channels
        for i, w in enumerate(widths):
            layers.append(sn(nn.Conv2d(cin, w, 4, 2, 1, bias=cfg.spectral_norm or i == 0)))
            if i > 0 and not cfg.spectral_norm:
                layers.append(nn.BatchNorm2d(w))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            cin = w
        self.convs = nn.Sequential(*layers)
        features = widths[-1] * base * base
        self.out = sn(nn.Linear(features, 1))
        self.embed = sn(nn.Embedding(cfg.n_classes, features)) if cfg.conditional else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.convs(x).flatten(1)  # (B, F)
        logits = self.out(h).squeeze(1)  # (B,)
        if self.embed is not None:
            logits = logits + (self.embed(y) * h).sum(1)  # projection term
        return logits


class DCGAN(nn.Module):
    """Generator, discriminator and (with ``ema_decay``) the EMA generator used for sampling."""

    family = "dcgan"

    def __init__(self, config: DCGANConfig):
        super().__init__()
        config.validate()
        if config.conditional and config.n_classes < 2:
            raise AigcError("model.conditional = true needs labelled data with at least 2 classes")
        self.config = config
        self.generator = Generator(config)
        self.discriminator = Discriminator(config)
        self.init_weights()
        self.ema = copy.deepcopy(self.generator) if config.ema_decay > 0 else None
        if self.ema is not None:
            self.ema.requires_grad_(False)
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.int64))

    def init_weights(self) -> None:
        """N(0, 0.02) for conv/linear weights, N(1, 0.02) for BN scales, zero biases (Radford et al. 2016)."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
                w = m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
                nn.init.normal_(w, 0.0, 0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    @torch.no_grad()
    def update_ema(self) -> None:
        """ema <- d * ema + (1 - d) * G for weights, BN running statistics copied.

        ``d = min(ema_decay, (1 + n) / (10 + n))`` after n updates: a short average early in
        training, when the first weights are noise (the warm-up of TensorFlow's
        ExponentialMovingAverage with num_updates).
        """
        if self.ema is None:
            return
        n = int(self.ema_updates)
        decay = min(self.config.ema_decay, (1 + n) / (10 + n))
        self.ema_updates += 1
        for e, g in zip(self.ema.parameters(), self.generator.parameters()):
            e.lerp_(g, 1.0 - decay)
        for e, g in zip(self.ema.buffers(), self.generator.buffers()):
            e.copy_(g)

    def noise(self, n: int, gen: torch.Generator | None = None) -> torch.Tensor:
        """z ~ N(0, I): ``(n, z_dim)`` float32 on the model's device (drawn on CPU for determinism)."""
        return torch.randn(n, self.config.z_dim, generator=gen).to(self.generator.fc.weight.device)

    @torch.no_grad()
    def generate(self, n: int, labels: torch.Tensor | None = None, gen: torch.Generator | None = None,
                 z: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` images ``(n, C, S, S)`` float32 in [-1, 1] from the EMA generator (G without EMA)."""
        g = self.ema if self.ema is not None else self.generator
        was = g.training
        g.eval()
        z = self.noise(n, gen) if z is None else z
        out = g(z, None if labels is None else labels.to(z.device))
        g.train(was)
        return out
