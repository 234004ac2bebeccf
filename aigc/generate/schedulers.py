"""Noise schedules and diffusion samplers as plain objects (no ``nn.Module``, no random state).

A :class:`NoiseSchedule` is the forward process ``q(x_t | x_0) = N(sqrt(a_t) x_0, (1 - a_t) I)``
with ``a_t = alpha_bar_t = prod_{s <= t} (1 - beta_s)`` for ``t = 0 .. T-1``. A sampler walks it
backwards over a subset of its timesteps:

    sampler.set_timesteps(steps)                 # self.timesteps: descending ints in [0, T)
    for t in sampler.timesteps:
        out = net(x, t)                          # epsilon or v
        x = sampler.step(out, t, x, noise)       # noise: a draw the caller makes (per-sample seeds)

After the last timestep the sampler lands on the clean image (alpha_bar = 1); no negative
timestep is ever formed. Randomness comes in only through the ``noise`` a caller passes, so a
sampler holds no generator and no device; DPM-Solver++ keeps its previous data prediction
between steps (reset by :meth:`Sampler.set_timesteps`).

References: DDPM, Ho et al. 2020 (linear betas, ancestral sampling with the posterior
variance); Nichol & Dhariwal 2021 (cosine schedule); DDIM, Song et al. 2021 (eta);
DPM-Solver++(2M), Lu et al. 2022 (multistep, data prediction); v-prediction, Salimans & Ho
2022; zero terminal SNR and trailing spacing, Lin et al. 2024.
"""

from __future__ import annotations

import math

import torch

from aigc.errors import AigcError

SPACINGS = ("trailing", "leading")


def linear_betas(timesteps: int, start: float, end: float) -> torch.Tensor:
    """``beta_t`` evenly spaced from ``start`` to ``end``: ``(T,)`` float64 (Ho et al. 2020 use 1e-4 .. 0.02, T 1000)."""
    return torch.linspace(start, end, timesteps, dtype=torch.float64)


def cosine_betas(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Betas of ``alpha_bar(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2)`` (Nichol & Dhariwal 2021, eq. 17),
    ``beta_t = 1 - alpha_bar(t + 1) / alpha_bar(t)`` clipped at ``max_beta``: ``(T,)`` float64."""
    f = [math.cos(((i / timesteps) + s) / (1 + s) * math.pi / 2) ** 2 for i in range(timesteps + 1)]
    return torch.tensor([min(1 - f[i + 1] / f[i], max_beta) for i in range(timesteps)], dtype=torch.float64)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale ``sqrt(alpha_bar)`` so the last is exactly 0 and the first unchanged
    (Lin et al. 2024, Algorithm 1): ``(T,)`` float64 -> ``(T,)`` float64, with ``beta_{T-1} = 1``."""
    root = torch.cumprod(1 - betas, 0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    abar = root ** 2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    return 1 - alphas


class NoiseSchedule:
    """``betas`` and ``alphas_cumprod`` (``(T,)`` float64) of a model's forward process."""

    def __init__(self, timesteps: int = 1000, kind: str = "linear", beta_start: float = 1e-4,
                 beta_end: float = 0.02, zero_terminal_snr: bool = False):
        if kind not in ("linear", "cosine"):
            raise AigcError(f"beta schedule {kind!r}: expected 'linear' or 'cosine'")
        betas = linear_betas(timesteps, beta_start, beta_end) if kind == "linear" else cosine_betas(timesteps)
        if zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
        self.timesteps = timesteps
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1 - betas, 0)
        if zero_terminal_snr:
            self.alphas_cumprod[-1] = 0.0  # exactly, not a rounding residue

    @classmethod
    def of(cls, config) -> "NoiseSchedule":
        """The schedule a :class:`~aigc.models.ddpm.DDPMConfig` was trained with."""
        return cls(config.timesteps, config.beta_schedule, config.beta_start, config.beta_end,
                   config.zero_terminal_snr)

    def alpha_bar(self, t: int | None) -> float:
        """``alpha_bar_t`` as a float; ``t = None`` is the clean image (1.0)."""
        return 1.0 if t is None else float(self.alphas_cumprod[t])

    def _coefs(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.alphas_cumprod.to(like.device)[t.to(like.device)].to(like.dtype)  # (B,)
        shape = (-1,) + (1,) * (like.dim() - 1)
        return a.sqrt().view(shape), (1 - a).clamp(min=0).sqrt().view(shape)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) noise``; ``t (B,)`` int64, images ``(B, C, H, W)``."""
        s, n = self._coefs(t, x0)
        return s * x0 + n * noise

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The v target ``sqrt(a_t) noise - sqrt(1 - a_t) x_0`` (Salimans & Ho 2022, section 4)."""
        s, n = self._coefs(t, x0)
        return s * noise - n * x0


class Sampler:
    """The shared part of every sampler: timesteps, and the data / noise predictions from the net's output.

    Args:
        schedule: the model's :class:`NoiseSchedule`.
        prediction: what the net predicts, "epsilon" or "v".
        spacing: "trailing" (``round(T - k T / steps) - 1``, starts at T-1; Lin et al. 2024, table 2)
            or "leading" (``k * (T // steps)``, the DDIM paper's).
        clip: clamp the predicted clean image to [-1, 1] (pixel-space models).
    """

    name = ""
    needs_noise = False  # whether step() uses the caller's noise

    def __init__(self, schedule: NoiseSchedule, prediction: str = "epsilon", spacing: str = "trailing",
                 clip: bool = True):
        if spacing not in SPACINGS:
            raise AigcError(f"timestep spacing {spacing!r}: expected one of {', '.join(SPACINGS)}")
        if prediction not in ("epsilon", "v"):
            raise AigcError(f"prediction {prediction!r}: expected 'epsilon' or 'v'")
        if prediction == "epsilon" and schedule.alpha_bar(schedule.timesteps - 1) == 0.0:
            raise AigcError("a zero-terminal-SNR schedule needs v-prediction: with alpha_bar_T = 0 an epsilon "
                            "prediction says nothing about the image (Lin et al. 2024)")
        self.schedule, self.prediction, self.spacing, self.clip = schedule, prediction, spacing, clip
        self.timesteps: list[int] = []
        self._next: dict[int, int | None] = {}

    def set_timesteps(self, steps: int) -> list[int]:
        """Choose ``steps`` timesteps (1 to T), descending; the step after the last lands on the clean image.

        Raises:
            AigcError: ``steps`` outside [1, T].
        """
        total = self.schedule.timesteps
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= total:
            raise AigcError(f"steps = {steps}: expected an integer from 1 to the model's {total} training timesteps")
        if self.spacing == "leading":
            ts = [k * (total // steps) for k in range(steps)][::-1]
        else:
            ts = [round(total - k * total / steps) - 1 for k in range(steps)]
        self.timesteps = ts
        self._next = {t: (ts[i + 1] if i + 1 < len(ts) else None) for i, t in enumerate(ts)}
        self.reset()
        return ts

    def reset(self) -> None:
        """Forget state carried between steps (multistep samplers)."""

    def prev(self, t: int) -> int | None:
        """The timestep a step from ``t`` lands on (None = the clean image)."""
        if t not in self._next:
            raise AigcError(f"timestep {t} is not among this sampler's timesteps (call set_timesteps first)")
        return self._next[t]

    def predict(self, out: torch.Tensor, t: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The net's output at ``t`` -> (clean image x_0, noise epsilon), both like ``x``.

        With ``clip`` the clean image is clamped to [-1, 1] and the noise recomputed from it, so the
        two stay consistent with ``x``."""
        a = self.schedule.alpha_bar(t)
        sa, sn = math.sqrt(a), math.sqrt(max(1.0 - a, 0.0))
        if self.prediction == "v":
            x0, eps = sa * x - sn * out, sn * x + sa * out
        else:
            x0, eps = (x - sn * out) / sa, out
        if self.clip:
            x0 = x0.clamp(-1, 1)
            if sn > 0:
                eps = (x - sa * x0) / sn
        return x0, eps

    def step(self, out: torch.Tensor, t: int, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """One step from ``x`` at timestep ``t`` to the next timestep (or the clean image)."""
        raise NotImplementedError

    def _noise(self, noise: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        if noise is None:
            raise AigcError(f"the {self.name} sampler draws fresh noise each step; pass noise")
        return noise.to(x.device, x.dtype)


class DDPMSampler(Sampler):
    """Ancestral sampling from the posterior ``q(x_s | x_t, x_0)`` (Ho et al. 2020, eq. 6-7), for any
    subset of timesteps: with ``a = alpha_bar``, ``b = 1 - a_t / a_s``,
    mean ``sqrt(a_s) b / (1 - a_t) x_0 + sqrt(a_t / a_s) (1 - a_s) / (1 - a_t) x_t``,
    variance ``(1 - a_s) / (1 - a_t) b``."""

    name = "ddpm"
    needs_noise = True

    def step(self, out, t, x, noise=None):
        s = self.prev(t)
        a_t, a_s = self.schedule.alpha_bar(t), self.schedule.alpha_bar(s)
        x0, _ = self.predict(out, t, x)
        b = 1.0 - a_t / a_s
        mean = (math.sqrt(a_s) * b / (1 - a_t)) * x0 + (math.sqrt(a_t / a_s) * (1 - a_s) / (1 - a_t)) * x
        var = max((1 - a_s) / (1 - a_t) * b, 0.0)
        return mean if s is None or var == 0 else mean + math.sqrt(var) * self._noise(noise, x)


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021, eq. 12): ``x_s = sqrt(a_s) x_0 + sqrt(1 - a_s - sigma^2) eps + sigma z``
    with ``sigma = eta sqrt((1 - a_s) / (1 - a_t)) sqrt(1 - a_t / a_s)``; eta 0 is deterministic,
    eta 1 has DDPM's variance."""

    name = "ddim"

    def __init__(self, schedule, prediction="epsilon", spacing="trailing", clip=True, eta: float = 0.0):
        super().__init__(schedule, prediction, spacing, clip)
        if not 0.0 <= eta <= 1.0:
            raise AigcError(f"eta = {eta}: expected a number in [0, 1] (0 = deterministic DDIM)")
        self.eta = eta
        self.needs_noise = eta > 0

    def step(self, out, t, x, noise=None):
        s = self.prev(t)
        a_t, a_s = self.schedule.alpha_bar(t), self.schedule.alpha_bar(s)
        x0, eps = self.predict(out, t, x)
        sigma = self.eta * math.sqrt(max((1 - a_s) / (1 - a_t) * (1 - a_t / a_s), 0.0))
        x_s = math.sqrt(a_s) * x0 + math.sqrt(max(1 - a_s - sigma ** 2, 0.0)) * eps
        return x_s + sigma * self._noise(noise, x) if sigma > 0 else x_s


class DPMSolverPP2M(Sampler):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), data prediction, with ``alpha = sqrt(a)``,
    ``sigma = sqrt(1 - a)``, ``lambda = log(alpha / sigma)``, ``h = lambda_s - lambda_t``:

    first order: ``x_s = (sigma_s / sigma_t) x_t + (alpha_s - alpha_t sigma_s / sigma_t) D``, D = x_0(t);
    second order: ``D = (1 + 1 / 2r) x_0(t) - (1 / 2r) x_0(t_prev)``, ``r = h_prev / h``.

    The first step and the last (onto the clean image, where lambda is infinite) are first order.
    """

    name = "dpm++2m"

    def reset(self) -> None:
        self._prev: tuple[torch.Tensor, float] | None = None  # (x_0 of the previous step, its h)

    def _lambda(self, a: float) -> float:
        if a <= 0.0:
            return -math.inf
        if a >= 1.0:
            return math.inf
        return 0.5 * math.log(a / (1 - a))

    def step(self, out, t, x, noise=None):
        s = self.prev(t)
        a_t, a_s = self.schedule.alpha_bar(t), self.schedule.alpha_bar(s)
        x0, _ = self.predict(out, t, x)
        al_t, sg_t = math.sqrt(a_t), math.sqrt(max(1 - a_t, 0.0))
        al_s, sg_s = math.sqrt(a_s), math.sqrt(max(1 - a_s, 0.0))
        h = self._lambda(a_s) - self._lambda(a_t)
        d = x0
        if self._prev is not None and s is not None and math.isfinite(h) and math.isfinite(self._prev[1]):
            r = self._prev[1] / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * self._prev[0]
        self._prev = (x0, h)
        return (sg_s / sg_t) * x + (al_s - al_t * sg_s / sg_t) * d


SAMPLERS = {"ddpm": DDPMSampler, "ddim": DDIMSampler, "dpm++2m": DPMSolverPP2M}


def make_sampler(name: str, schedule: NoiseSchedule, prediction: str, spacing: str = "trailing",
                 eta: float = 0.0, clip: bool = True) -> Sampler:
    """A sampler by name (``ddpm``, ``ddim``, ``dpm++2m``).

    Raises:
        AigcError: an unknown name (listing the known ones), a bad spacing, eta or prediction.
    """
    if name not in SAMPLERS:
        raise AigcError(f"unknown sampler {name!r} (known: {', '.join(SAMPLERS)})")
    if name == "ddim":
        return DDIMSampler(schedule, prediction, spacing, clip, eta)
    return SAMPLERS[name](schedule, prediction, spacing, clip)
