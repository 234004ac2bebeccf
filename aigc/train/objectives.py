"""Training objectives: functions ``(model, batch) -> (loss, logs)``.

The loop knows nothing of model families beyond these functions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from aigc.generate.schedulers import NoiseSchedule


IGNORE_INDEX = -100  # a target that is not trained on (chat data: tokens outside assistant turns)


def lm_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """Next-token cross-entropy, mean over the counted targets, in nats.

    Args:
        batch: inputs ``x`` and targets ``y``, each ``(B, T) int64``; ``y[:, t]`` is the token after
            ``x[:, t]``, or -100 where it is not trained on (then it counts neither in the sum nor
            in the mean). A batch with no counted target has loss 0 (and no gradient).
    Returns:
        scalar loss (float32) and no logs (the loop logs the loss itself; no host sync here, so
        ``train.compile`` traces the model and this loss as one graph).
    """
    x, y = batch
    logits = model(x)  # (B, T, V)
    y = y.reshape(-1)
    total = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y, ignore_index=IGNORE_INDEX, reduction="sum")
    loss = total / (y != IGNORE_INDEX).sum().clamp(min=1)
    return loss, {}


def vae_loss(model, batch, gen: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """VAE loss per image in nats: reconstruction + beta * KL (the negative ELBO when beta = 1).

    Args:
        batch: images ``(B, C, S, S)`` float32 in [-1, 1] and labels ``(B,)`` int64 (or None).
        gen: generator of the reparameterisation noise.
    Returns:
        scalar loss and logs: ``elbo`` (always with beta = 1), ``recon`` and ``kl``, each a mean per image.
    """
    x, y = batch
    out, mu, logvar = model(x, y, gen)
    recon, kl = model.loss_terms(x, out, mu, logvar)
    loss = (recon + model.config.beta * kl).mean()
    return loss, {"elbo": -(recon + kl).mean().item(), "recon": recon.mean().item(), "kl": kl.mean().item()}


def gan_d_loss(model, batch, gen: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """Discriminator loss on a real batch and as many fakes (generated with the batch's labels).

    hinge (Lim & Ye 2017): ``E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]``;
    ns (Goodfellow et al. 2014): ``E[softplus(-D(x))] + E[softplus(D(G(z)))]``, i.e. binary cross-entropy.
    Logs the mean real and fake logits (``d_real``, ``d_fake``).
    """
    x, y = batch
    with torch.no_grad():
        fake = model.generator(model.noise(len(x), gen), y)
    real_logits = model.discriminator(x, y).float()
    fake_logits = model.discriminator(fake, y).float()
    if model.config.loss == "hinge":
        loss = F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    else:
        loss = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    return loss, {"d_real": real_logits.mean().item(), "d_fake": fake_logits.mean().item()}


def gan_g_loss(model, batch, gen: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """Generator loss: hinge ``-E[D(G(z))]``; ns (non-saturating) ``E[softplus(-D(G(z)))]``."""
    x, y = batch
    logits = model.discriminator(model.generator(model.noise(len(x), gen), y), y).float()
    loss = -logits.mean() if model.config.loss == "hinge" else F.softplus(-logits).mean()
    return loss, {}


_SCHEDULES: dict[tuple, NoiseSchedule] = {}


def diffusion_loss(model, batch, gen: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """Denoising loss (Ho et al. 2020, eq. 14, "L_simple"): ``|| target - net(x_t, t, c) ||^2`` averaged
    over pixels, with ``t ~ U{0, .., T-1}``, ``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps`` and the target
    ``eps`` or ``v = sqrt(a_t) eps - sqrt(1 - a_t) x_0`` (Salimans & Ho 2022). The condition of each
    example is dropped to the learned null with probability ``p_uncond`` (classifier-free guidance).

    Args:
        batch: images ``(B, C, S, S)`` float32 in [-1, 1] and the condition: labels ``(B,)`` int64,
            prompt tokens ``(B, L)`` int64, or None.
        gen: generator of t, the noise and the condition dropout (CPU).
    Returns:
        scalar loss (float32) and no logs (no host sync).
    """
    x, cond = batch
    cfg = model.config
    key = (cfg.timesteps, cfg.beta_schedule, cfg.beta_start, cfg.beta_end, cfg.zero_terminal_snr)
    schedule = _SCHEDULES.get(key) or _SCHEDULES.setdefault(key, NoiseSchedule.of(cfg))
    b = len(x)
    t = torch.randint(0, cfg.timesteps, (b,), generator=gen).to(x.device)
    noise = torch.randn(x.shape, generator=gen).to(x.device)
    drop = (torch.rand(b, generator=gen) < cfg.p_uncond).to(x.device)
    labels = tokens = None
    if cfg.conditioning == "class":
        labels = torch.where(drop, torch.full_like(cond, -1), cond)
    elif cfg.conditioning == "text":
        tokens = torch.where(drop[:, None], torch.zeros_like(cond), cond)
    x_t = schedule.add_noise(x, noise, t)
    target = noise if cfg.prediction == "epsilon" else schedule.velocity(x, noise, t)
    out = model(x_t, t, labels, tokens)
    return F.mse_loss(out.float(), target), {}
