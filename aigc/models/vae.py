"""A convolutional variational autoencoder (Kingma & Welling 2014), optionally beta-weighted and conditional.

Loss per image, in nats: ``recon + beta * KL(q(z|x) || N(0, I))``; with beta = 1 this is
the negative ELBO. beta > 1 is the beta-VAE of Higgins et al. 2017.

- ``decoder = "bernoulli"``: pixels rescaled to [0, 1] are the targets of a
  per-pixel Bernoulli (binary cross-entropy on logits), as in the paper's MNIST
  experiments; for gray images this is the usual practice, not a normalised density.
- ``decoder = "gaussian"``: a Gaussian on pixels in [-1, 1] with a learned scale
  shared by all pixels (one log-sigma per channel).
- ``conditional``: the one-hot label is appended to the encoder's features and to z
  (the conditional VAE of Sohn et al. 2015).

Shapes for 28x28, width = 32, z_dim = 32::

    encoder: x (B, 1, 28, 28) -> conv 4x4/2 -> (B, 32, 14, 14) -> ReLU -> conv 4x4/2 -> (B, 64, 7, 7) -> ReLU
             -> flatten (B, 3136) [+ one-hot (B, K)] -> linear -> mu, logvar (B, 32) each
    decoder: z (B, 32) [+ one-hot] -> linear -> (B, 64, 7, 7) -> ReLU -> convT -> (B, 32, 14, 14) -> ReLU
             -> convT -> (B, 1, 28, 28) logits (Bernoulli) or means (Gaussian)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from aigc.errors import AigcError
from aigc.models.gan import pyramid


@dataclass
class VAEConfig:
    """A convolutional VAE; ``beta`` and the decoder's likelihood are part of the model."""

    image_size: int = 28  # side in pixels: 28, 32, 64, ...
    channels: int = 1
    z_dim: int = 32  # latent dimension
    width: int = 32  # channels of the first encoder layer; doubles at each coarser level
    decoder: str = "bernoulli"  # bernoulli | gaussian
    beta: float = 1.0  # weight of the KL term (1 = the ELBO; > 1 = beta-VAE)
    conditional: bool = False  # condition encoder and decoder on the class label
    n_classes: int = 0  # set from the data when conditional
    classes: list[str] = field(default_factory=list)  # class names, set from the data

    def validate(self) -> None:
        base, levels = pyramid(self.image_size) if self.image_size > 0 else (0, 0)
        if self.image_size < 8 or levels < 1:
            raise AigcError(f"model.image_size = {self.image_size}: expected a side like 28, 32 or 64")
        if self.channels not in (1, 3):
            raise AigcError(f"model.channels = {self.channels}: expected 1 (grayscale) or 3 (RGB)")
        for name in ("z_dim", "width"):
            if not 1 <= getattr(self, name) <= 4096:
                raise AigcError(f"model.{name} = {getattr(self, name)}: expected an integer in [1, 4096]")
        if self.decoder not in ("bernoulli", "gaussian"):
            raise AigcError(f"model.decoder = {self.decoder!r}: expected 'bernoulli' or 'gaussian'")
        if not 0 <= self.beta <= 1000:
            raise AigcError(f"model.beta = {self.beta}: expected a number in [0, 1000]")
        if self.n_classes < 0 or (self.classes and len(self.classes) != self.n_classes):
            raise AigcError(f"model.n_classes = {self.n_classes} does not match the {len(self.classes)} class names")


class VAE(nn.Module):
    """Encoder q(z|x[,y]), decoder p(x|z[,y]); see the module docstring for shapes."""

    family = "vae"

    def __init__(self, config: VAEConfig):
        super().__init__()
        config.validate()
        if config.conditional and config.n_classes < 2:
            raise AigcError("model.conditional = true needs labelled data with at least 2 classes")
        self.config = config
        base, levels = pyramid(config.image_size)
        widths = [config.width * 2 ** i for i in range(levels)]  # e.g. [32, 64]
        self.base, self.top = base, widths[-1]
        k = config.n_classes if config.conditional else 0
        enc, cin = [], config.channels
        for w in widths:
            enc += [nn.Conv2d(cin, w, 4, 2, 1), nn.ReLU(inplace=True)]
            cin = w
        self.encoder = nn.Sequential(*enc)
        features = widths[-1] * base * base
        self.to_stats = nn.Linear(features + k, 2 * config.z_dim)  # -> mu, logvar
        self.from_z = nn.Linear(config.z_dim + k, features)
        dec = []
        for i in range(levels - 1, 0, -1):
            dec += [nn.ConvTranspose2d(widths[i], widths[i - 1], 4, 2, 1), nn.ReLU(inplace=True)]
        dec.append(nn.ConvTranspose2d(widths[0], config.channels, 4, 2, 1))
        self.decoder = nn.Sequential(*dec)
        self.log_sigma = nn.Parameter(torch.zeros(config.channels)) if config.decoder == "gaussian" else None

    def _onehot(self, y: torch.Tensor | None, like: torch.Tensor) -> list[torch.Tensor]:
        if not self.config.conditional:
            return []
        if y is None:
            raise AigcError("a conditional VAE needs class labels")
        return [F.one_hot(y.to(like.device), self.config.n_classes).to(like.dtype)]

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x ``(B, C, S, S)`` in [-1, 1] -> mu, logvar ``(B, z_dim)`` each."""
        h = self.encoder(x).flatten(1)  # (B, F)
        mu, logvar = self.to_stats(torch.cat([h, *self._onehot(y, h)], 1)).chunk(2, dim=1)
        return mu, logvar.clamp(-30, 20)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """z ``(B, z_dim)`` -> decoder output ``(B, C, S, S)``: Bernoulli logits or Gaussian means."""
        h = self.from_z(torch.cat([z, *self._onehot(y, z)], 1)).view(-1, self.top, self.base, self.base)
        return self.decoder(torch.relu(h))

    def mean_image(self, out: torch.Tensor) -> torch.Tensor:
        """Decoder output -> the mean image in [-1, 1]."""
        return torch.sigmoid(out) * 2 - 1 if self.config.decoder == "bernoulli" else out.clamp(-1, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, gen: torch.Generator | None = None):
        """Reparameterised pass: returns (decoder output, mu, logvar)."""
        mu, logvar = self.encode(x, y)
        eps = torch.randn(mu.shape, generator=gen).to(mu.device)
        z = mu + eps * torch.exp(0.5 * logvar)
        return self.decode(z, y), mu, logvar

    def loss_terms(self, x: torch.Tensor, out: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor):
        """Per-image reconstruction term -log p(x|z) and KL(q || N(0, I)), each ``(B,)`` float32 in nats."""
        if self.config.decoder == "bernoulli":
            recon = F.binary_cross_entropy_with_logits(out.float(), (x.float() + 1) / 2, reduction="none")
        else:
            ls = self.log_sigma.view(1, -1, 1, 1)
            recon = 0.5 * ((x - out.float()) / ls.exp()) ** 2 + ls + 0.5 * math.log(2 * math.pi)
        kl = 0.5 * (mu.float() ** 2 + logvar.float().exp() - 1 - logvar.float())
        return recon.flatten(1).sum(1), kl.sum(1)

    @torch.no_grad()
    def generate(self, n: int, labels: torch.Tensor | None = None, gen: torch.Generator | None = None,
                 z: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` mean images ``(n, C, S, S)`` in [-1, 1] decoded from z ~ N(0, I)."""
        device = self.from_z.weight.device
        z = torch.randn(n, self.config.z_dim, generator=gen).to(device) if z is None else z.to(device)
        return self.mean_image(self.decode(z, labels))
