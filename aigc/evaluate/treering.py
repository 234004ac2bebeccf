"""Detecting the Tree-Ring watermark of :mod:`aigc.generate.treering` (Wen et al. 2023, section 3.3).

An image goes back to its starting noise by DDIM inversion (Song et al. 2021; Mokady et al. 2023):
the deterministic DDIM update run from the clean image up the noise levels, the net asked
unconditionally (the detector does not know the prompt). In the unitary Fourier transform of the
key's channel, each frequency of the disc gives real numbers that are independent N(0, s^2) for
noise drawn without the key: the real and imaginary parts of one coefficient of each conjugate
pair (variance s^2 / 2 each), and the real part alone for a self-conjugate one (variance s^2).
``s^2`` is estimated from the frequencies outside the disc, which the key never touched.

The test is the key's matched filter: with the key's value k_i on each number y_i (variance v_i),

    z = sum_i k_i y_i / v_i / sqrt(sum_i k_i^2 / v_i) / s,   p = P(Z >= z)

standard normal without the key. The paper scores the distance sum_i |y_i - k_i|^2 instead (a
noncentral chi-squared test), which needs the inversion to give the noise back closely; in a
pixel-space model whose images are mostly saturated background (Fashion-MNIST) clamping to [-1, 1]
loses much of it (the disc comes back at a correlation of about 0.45 on our DDPM), and the
correlation test stays calibrated where the distance test only sees the error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from aigc.errors import AigcError
from aigc.generate.diffusion import sampler_for
from aigc.generate.treering import TreeRingKey, ring_index

P_THRESHOLD = 0.5 * math.erfc(4 / math.sqrt(2))  # z >= 4 (p about 3.2e-5), the text watermark's threshold


@dataclass
class ImageDetection:
    """The Tree-Ring test of one image: ``z`` (the matched filter's z-score), its one-sided ``p_value``
    and ``verdict`` ("watermarked" when p <= threshold, else "not watermarked")."""

    z: float
    p_value: float
    verdict: str


def invert(model, images: torch.Tensor, steps: int = 50, refine: int = 0) -> torch.Tensor:
    """DDIM inversion: images ``(B, C, S, S)`` float in [-1, 1] -> their starting noise ``x_T``, same shape,
    with ``steps`` DDIM steps on the model's EMA weights, unconditional, no clipping.

    Raises:
        AigcError: ``steps`` outside [1, T].
    """
    sampler = sampler_for(model, "ddim")
    sampler.clip = False
    net = model.sampler_net
    device = next(net.parameters()).device
    up = sampler.set_timesteps(steps)[::-1]  # ascending noise levels
    x = images.to(device).float()
    null = torch.full((len(x),), -1, dtype=torch.long, device=device) if model.config.conditioning == "class" else None
    tokens = None
    if model.config.conditioning == "text":
        tokens = torch.zeros((len(x), model.config.text_len), dtype=torch.long, device=device)
    was = net.training
    net.eval()
    try:
        below = None  # the level x is at (None: clean)
        for t in up:
            ts = torch.full((len(x),), t, dtype=torch.long, device=device)
            a_s, a_t = sampler.schedule.alpha_bar(below), sampler.schedule.alpha_bar(t)
            guess = x
            for _ in range(1 + refine):  # x_t with DDIM(x_t) = x_s: eps at the guess, the update solved for x_t
                with torch.no_grad():
                    out = net(guess, ts, null, tokens).float()
                _, eps = sampler.predict(out, t, guess)
                guess = math.sqrt(a_t / a_s) * (x - math.sqrt(1 - a_s) * eps) + math.sqrt(1 - a_t) * eps
            x, below = guess, t
    finally:
        net.train(was)
    return x.cpu()


def _parts(key: TreeRingKey, noise: torch.Tensor, inside: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The independent real numbers of the key's channel's Fourier transform, inside or outside the disc:
    values ``(B, d)``, their variances under the null ``(d,)`` and the key's values there ``(d,)``."""
    size = key.image_size
    f = torch.fft.fftshift(torch.fft.fft2(noise[:, key.channel].double(), norm="ortho"), dim=(-2, -1))
    k = torch.arange(size) - size // 2
    ky, kx = k[:, None].expand(size, size), k[None, :].expand(size, size)
    # one of each conjugate pair: the mirror (-ky, -kx) of (ky, kx); self-conjugate where the mirror is itself
    mirror_y, mirror_x = (-ky + size // 2) % size, (-kx + size // 2) % size
    index = torch.arange(size * size).view(size, size)
    mirror = index[mirror_y, mirror_x]
    first, self_conj = index <= mirror, index == mirror
    region = (ring_index(size) < key.radius) == inside
    pick = (first & region).flatten()
    sc = self_conj.flatten()[pick]
    flat = f.flatten(1)[:, pick]
    target = key.pattern().double().flatten()[pick] if inside else torch.zeros(int(pick.sum()), dtype=torch.float64)
    values = torch.cat([flat.real, flat.imag[:, ~sc]], 1)
    var = torch.cat([torch.where(sc, 1.0, 0.5).double(), torch.full((int((~sc).sum()),), 0.5, dtype=torch.float64)])
    return values, var, torch.cat([target, torch.zeros(int((~sc).sum()), dtype=torch.float64)])


def detect_noise(key: TreeRingKey, noise: torch.Tensor, threshold: float = P_THRESHOLD) -> list[ImageDetection]:
    """Test recovered starting noise ``(B, C, S, S)`` (from :func:`invert`) for ``key``'s rings."""
    outside, out_var, _ = _parts(key, noise, False)
    scale = ((outside ** 2) / out_var).mean(1).sqrt()  # s per image, (B,)
    values, var, target = _parts(key, noise, True)
    z = (values * target / var).sum(1) / (target ** 2 / var).sum().sqrt() / scale
    out = []
    for v in z.tolist():
        p = 0.5 * math.erfc(v / math.sqrt(2))
        out.append(ImageDetection(v, p, "watermarked" if p <= threshold else "not watermarked"))
    return out


def detect_images(model, key: TreeRingKey, images: torch.Tensor, steps: int = 50,
                  threshold: float = P_THRESHOLD) -> list[ImageDetection]:
    """Test images ``(B, C, S, S)`` in [-1, 1] for ``key``'s Tree-Ring watermark: DDIM inversion with
    ``steps`` steps, then :func:`detect_noise`.

    Raises:
        AigcError: a model that is not a diffusion model, or one of another image shape than the key's.
    """
    if getattr(model.config, "family", "ddpm") != "ddpm" or not hasattr(model, "sampler_net"):
        raise AigcError("the image watermark is read back by DDIM inversion: it needs the diffusion model that drew it")
    key.check_model(model.config)
    if tuple(images.shape[1:]) != (key.channels, key.image_size, key.image_size):
        raise AigcError(f"images of shape {tuple(images.shape[1:])}: the key is for "
                        f"{key.channels}x{key.image_size}x{key.image_size}")
    return detect_noise(key, invert(model, images, steps), threshold)
