"""A watermark in the starting noise of a diffusion model (Tree-Ring, Wen et al. 2023, "Tree-Ring
Watermarks: Fingerprints for Diffusion Images that are Invisible and Robust", NeurIPS).

The noise ``x_T`` an image is drawn from is standard normal. Its 2-D Fourier transform (unitary,
``norm="ortho"``, so each coefficient has unit variance too) is overwritten inside a disc of
``radius`` around the zero frequency, on one channel, by a key pattern: one real value per ring
(integer distance from the centre), drawn from the key. The pattern is radially symmetric and
real, so it is Hermitian-symmetric and the noise stays real; its values are N(0, 1), so the noise
keeps its expected energy. The sampler then runs as usual. Detection
(:mod:`aigc.evaluate.treering`) runs DDIM backwards from the image to its noise and tests how
close the disc is to the key.

The key file is the text watermark's (:mod:`aigc.generate.watermark`), with ``scheme =
"treering"`` and the image shape it was made for instead of a tokenizer.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import torch

from aigc.errors import AigcError


@dataclass(frozen=True)
class TreeRingKey:
    """A Tree-Ring key and its settings.

    Attributes:
        key: the secret, 64 hex digits (256 bits).
        scheme: always ``treering``.
        radius: the disc's radius in frequency bins (1 to half the image size minus 1).
        channel: the channel of the noise that carries the rings.
        image_size: the model's image side ``S`` in pixels.
        channels: the model's channels ``C``.
    """

    key: str
    scheme: str = "treering"
    radius: int = 4
    channel: int = 0
    image_size: int = 0
    channels: int = 0

    def validate(self, where: str = "watermark key") -> None:
        """Raises AigcError naming the first bad field."""
        if not isinstance(self.key, str) or len(self.key) != 64 or any(c not in "0123456789abcdef" for c in self.key):
            raise AigcError(f"{where}: key: expected 64 lowercase hex digits")
        if self.scheme != "treering":
            raise AigcError(f"{where}: scheme = {self.scheme!r}: expected 'treering'")
        if isinstance(self.image_size, bool) or not (isinstance(self.image_size, int) and 8 <= self.image_size <= 4096):
            raise AigcError(f"{where}: image_size = {self.image_size!r}: expected the model's image side, 8 to 4096")
        if isinstance(self.channels, bool) or not (isinstance(self.channels, int) and 1 <= self.channels <= 16):
            raise AigcError(f"{where}: channels = {self.channels!r}: expected the model's channels, 1 to 16")
        if isinstance(self.radius, bool) or not (isinstance(self.radius, int) and 1 <= self.radius < self.image_size // 2):
            raise AigcError(f"{where}: radius = {self.radius!r}: expected an integer from 1 to "
                            f"{self.image_size // 2 - 1}")
        if isinstance(self.channel, bool) or not (isinstance(self.channel, int) and 0 <= self.channel < self.channels):
            raise AigcError(f"{where}: channel = {self.channel!r}: expected 0 to {self.channels - 1}")

    def check_model(self, config) -> None:
        """Raises AigcError unless ``config`` (a DDPM config) draws noise of this key's shape."""
        if (config.image_size, config.channels) != (self.image_size, self.channels):
            raise AigcError(f"the watermark key was made for {self.channels}x{self.image_size}x{self.image_size} "
                            f"images; this model makes {config.channels}x{config.image_size}x{config.image_size}")

    def disc(self) -> torch.Tensor:
        """Bool ``(S, S)``: the frequencies within ``radius`` of zero, in fftshift order."""
        return ring_index(self.image_size) < self.radius

    def pattern(self) -> torch.Tensor:
        """Float32 ``(S, S)``: the key's value on each ring of the disc (fftshift order), 0 outside."""
        g = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(bytes.fromhex(self.key) + b"treering")
                                                         .digest()[:8], "little") >> 1)
        values = torch.randn(self.radius, generator=g)
        ring = ring_index(self.image_size)
        return torch.where(ring < self.radius, values[ring.clamp(max=self.radius - 1)], torch.zeros(()))

    def imprint(self, noise: torch.Tensor) -> torch.Tensor:
        """Noise ``(B, C, S, S)`` float -> the same noise with the key's rings in its Fourier disc."""
        x = noise.clone()
        f = torch.fft.fftshift(torch.fft.fft2(x[:, self.channel].double(), norm="ortho"), dim=(-2, -1))
        disc = self.disc().to(f.device)
        f[:, disc] = self.pattern().to(f.device, torch.float64)[disc].to(f.dtype)
        spatial = torch.fft.ifft2(torch.fft.ifftshift(f, dim=(-2, -1)), norm="ortho")
        x[:, self.channel] = spatial.real.to(x.dtype)
        return x


def ring_index(size: int) -> torch.Tensor:
    """Int64 ``(S, S)``: each frequency's distance from zero (fftshift order), rounded to an integer."""
    k = torch.arange(size) - size // 2
    return torch.sqrt((k[:, None] ** 2 + k[None, :] ** 2).double()).round().long()


def new_image_key(config, radius: int = 4, channel: int = 0) -> TreeRingKey:
    """A fresh random Tree-Ring key for a DDPM ``config`` (radius 4 on a 28x28 image covers 49 of
    784 frequencies, about the share of the paper's radius 10 on a 64x64 latent)."""
    k = TreeRingKey(secrets.token_hex(32), "treering", radius, channel, config.image_size, config.channels)
    k.validate()
    return k
