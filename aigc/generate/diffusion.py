"""Sampling a diffusion model: classifier-free guidance, per-sample seeds, inpainting and restoration.

:func:`denoise` is the one loop. It runs a :mod:`aigc.generate.schedulers` sampler over a
:class:`~aigc.models.ddpm.DDPM`'s EMA weights and

- guides with classifier-free guidance (Ho & Salimans 2022): ``u + s (c - u)`` for the
  unconditional prediction u and the conditional one c; scale 0 is u alone and 1 is c alone
  (each one network pass), above 1 both in one batch of 2B;
- draws every random number of image k from its own generator seeded ``seeds[k]``, so image
  k of a batch is the image a batch of one with that seed makes (up to float rounding: batched
  kernels may add in another order, about 1e-7, at most one 8-bit level in a PNG);
- with ``known`` and ``mask`` (1 = regenerate) replaces the kept pixels after every step by the
  known image noised to that step's level and pastes them exactly at the end (replacement-based
  inpainting; RePaint, Lugmayr et al. 2022, without its resampling jumps);
- with ``strength`` < 1 starts from the known image noised to ``strength * T`` and runs only
  the steps below it (SDEdit, Meng et al. 2022).

Every result is checked finite: a NaN is an error, never a black image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from tqdm import tqdm

from aigc.errors import AigcError
from aigc.generate.schedulers import NoiseSchedule, Sampler, make_sampler


@dataclass
class Condition:
    """What to draw, one row per image: class ids ``labels (B,)`` int64 (-1 = none) or prompt
    tokens ``tokens (B, L)`` int64 (a row of zeros = the empty prompt); None for unconditional models."""

    labels: torch.Tensor | None = None
    tokens: torch.Tensor | None = None

    def null(self) -> "Condition":
        """The same rows with the condition dropped (the learned null of classifier-free guidance)."""
        return Condition(None if self.labels is None else torch.full_like(self.labels, -1),
                         None if self.tokens is None else torch.zeros_like(self.tokens))

    @property
    def empty(self) -> bool:
        """True when no row carries a condition (nothing to guide towards)."""
        if self.labels is not None:
            return bool((self.labels < 0).all())
        if self.tokens is not None:
            return not bool((self.tokens != 0).any())
        return True

    def twice(self, other: "Condition") -> "Condition":
        """This condition's rows followed by ``other``'s (one batch for both CFG passes)."""
        cat = (lambda a, b: None if a is None else torch.cat([a, b]))
        return Condition(cat(self.labels, other.labels), cat(self.tokens, other.tokens))


def sampler_for(model, name: str = "ddim", spacing: str = "trailing", eta: float = 0.0) -> Sampler:
    """A sampler over ``model``'s own noise schedule and prediction type."""
    cfg = model.config
    return make_sampler(name, NoiseSchedule.of(cfg), cfg.prediction, spacing, eta)


def draw(generators: list[torch.Generator], shape: tuple[int, ...], device) -> torch.Tensor:
    """Standard normal noise ``(len(generators), *shape)``: row k from ``generators[k]``."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)


def guided(net, x: torch.Tensor, t: int, cond: Condition, scale: float) -> torch.Tensor:
    """The classifier-free-guided prediction ``u + scale (c - u)`` at timestep ``t`` for images ``x (B, C, S, S)``."""
    ts = torch.full((len(x),), t, dtype=torch.long, device=x.device)
    if scale == 0 or cond.empty:
        null = cond.null()
        return net(x, ts, null.labels, null.tokens)
    if scale == 1:
        return net(x, ts, cond.labels, cond.tokens)
    both = cond.twice(cond.null())
    c, u = net(torch.cat([x, x]), torch.cat([ts, ts]), both.labels, both.tokens).chunk(2)
    return u + scale * (c - u)


def check_guidance(scale: float) -> None:
    """Raises AigcError for a guidance scale outside [0, 100]."""
    if not isinstance(scale, (int, float)) or not 0 <= scale <= 100:
        raise AigcError(f"guidance scale {scale}: expected a number from 0 (unconditional) to 100; 1 = conditional "
                        "only, above 1 = guided")


def denoise(model, sampler: Sampler, steps: int, seeds: list[int], cond: Condition, guidance: float = 1.0,
            known: torch.Tensor | None = None, mask: torch.Tensor | None = None, strength: float = 1.0,
            progress: bool = False, imprint=None) -> torch.Tensor:
    """Images ``(len(seeds), C, S, S)`` float32 in [-1, 1] from the model's EMA weights.

    Args:
        steps: sampler steps (1 to T); with ``strength`` < 1 only the last ``round(steps * strength)`` run.
        seeds: one seed per image.
        cond: the condition of each image (see :class:`Condition`).
        guidance: classifier-free guidance scale (0 = unconditional, 1 = conditional, > 1 guided).
        known: images ``(B, C, S, S)`` in [-1, 1] to inpaint (with ``mask``) or restore (with ``strength``).
        mask: ``(B, 1, S, S)`` or ``(B, C, S, S)`` float, 1 where pixels are regenerated, 0 where kept exactly.
        strength: restoration: the noise level to start from, as a share of T (0 < strength <= 1).
        progress: a progress bar on stderr.
        imprint: a function of the starting noise ``(B, C, S, S)`` returning noise of the same shape (a
            watermark: :meth:`aigc.generate.treering.TreeRingKey.imprint`); only when drawing from pure noise.
    Raises:
        AigcError: bad steps, guidance or strength; a sample that is not finite.
    """
    bar = None
    try:
        for done, total, images in denoising(model, sampler, steps, seeds, cond, guidance, known, mask, strength,
                                                 imprint):
            if progress and bar is None:
                bar = tqdm(total=total, desc="denoising", unit="step", leave=False)
            if bar is not None and images is None:
                bar.update(1)
    finally:  # an error or Ctrl-C leaves no half-drawn bar
        if bar is not None:
            bar.close()
    return images


def check_denoising(steps: int, guidance: float, known: torch.Tensor | None, strength: float) -> None:
    """The checks of :func:`denoising`, callable before a job is queued (generators run lazily).

    Raises:
        AigcError: a guidance scale out of range, a strength outside (0, 1], a strength < 1 without an
            image, or one that leaves no step to run.
    """
    check_guidance(guidance)
    if not 0 < strength <= 1:
        raise AigcError(f"strength = {strength}: expected a number in (0, 1] (the share of the noise schedule "
                        "to go back; 1 = from pure noise)")
    if strength < 1:
        if known is None:
            raise AigcError("strength < 1 restores an image: pass the image to restore")
        if round(steps * strength) < 1:
            raise AigcError(f"strength {strength} with {steps} steps runs no step; raise the strength or the steps")


def denoising(model, sampler: Sampler, steps: int, seeds: list[int], cond: Condition, guidance: float = 1.0,
              known: torch.Tensor | None = None, mask: torch.Tensor | None = None,
              strength: float = 1.0, imprint=None) -> Iterator[tuple[int, int, torch.Tensor | None]]:
    """:func:`denoise` one step at a time: yields ``(steps done, steps in all, None)`` after each sampler
    step, then ``(total, total, images)``. The server advances it one step per scheduling round."""
    check_denoising(steps, guidance, known, strength)
    cfg, net = model.config, model.sampler_net
    device = next(net.parameters()).device
    timesteps = sampler.set_timesteps(steps)
    if strength < 1:
        timesteps = timesteps[len(timesteps) - round(steps * strength):]
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    shape = (cfg.channels, cfg.image_size, cfg.image_size)
    x = draw(gens, shape, device)
    if imprint is not None and known is None:
        x = imprint(x)
    schedule = sampler.schedule
    if known is not None:
        known = known.to(device).float()
        t0 = torch.full((len(seeds),), timesteps[0], dtype=torch.long, device=device)
        start = schedule.add_noise(known, x, t0) if strength < 1 else x
        x = start if mask is None else mask * x + (1 - mask) * schedule.add_noise(known, x, t0)
    was = net.training
    net.eval()
    try:
        for i, t in enumerate(timesteps):
            with torch.no_grad():
                out = guided(net, x, t, cond, guidance).float()
                noise = draw(gens, shape, device) if sampler.needs_noise else None
                x = sampler.step(out, t, x, noise)
                if mask is not None:
                    s = sampler.prev(t)
                    if s is None:
                        x = mask * x + (1 - mask) * known  # the kept pixels, exactly
                    else:
                        ts = torch.full((len(seeds),), s, dtype=torch.long, device=device)
                        x = mask * x + (1 - mask) * schedule.add_noise(known, draw(gens, shape, device), ts)
            yield i + 1, len(timesteps), None
    finally:
        net.train(was)
    if not torch.isfinite(x).all():
        raise AigcError("the sampler produced non-finite pixels (NaN or inf); no image written. Try another "
                        "sampler, fewer guidance or float32 (--dtype float32)")
    yield len(timesteps), len(timesteps), x.clamp(-1, 1).cpu()
