"""Detecting the text watermark of :mod:`aigc.generate.watermark` (Kirchenbauer et al. 2023, section 3).

Under the null hypothesis (text written without the key) each scored token is green with
probability ``gamma``, independently, so the green count ``g`` of ``T`` scored tokens gives

    z = (g - gamma T) / sqrt(T gamma (1 - gamma)),   p = P(Z >= z) = erfc(z / sqrt 2) / 2

(a one-sided test on the normal approximation of the binomial). A repeated (context, token) pair
is scored once: repetitive text would otherwise count the same green event many times and
break the independence the test needs. Below :data:`MIN_TOKENS` scored tokens no verdict is
given ("too short to decide").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aigc.generate.watermark import WatermarkKey, is_green

MIN_TOKENS = 16
Z_THRESHOLD = 4.0  # the paper's threshold: a false-positive rate of about 3e-5


@dataclass
class Detection:
    """The watermark test of one text.

    Attributes:
        tokens: tokens scored (unique (context, token) pairs after the prompt).
        green: of them, green.
        z: the z-score (None when no token was scored).
        p_value: one-sided p-value of z (None when no token was scored).
        verdict: "watermarked" (z >= threshold), "not watermarked", or "too short to decide".
    """

    tokens: int
    green: int
    z: float | None
    p_value: float | None
    verdict: str


def detect(key: WatermarkKey, ids: list[int], skip: int = 1, threshold: float = Z_THRESHOLD) -> Detection:
    """Test token ids ``ids`` (the document-start token first) for ``key``'s watermark, scoring the
    tokens from index ``skip`` on (the prompt's tokens before it are context only).

    The context of position i is the ``key.context`` ids before it (fewer at the very start).
    """
    seen, green = set(), 0
    for i in range(max(skip, 1), len(ids)):
        before = ids[max(0, i - 8):i]
        pair = (tuple(before[-key.context:]), ids[i])
        if pair in seen:
            continue
        seen.add(pair)
        green += is_green(key, before, ids[i])
    t = len(seen)
    if t == 0:
        return Detection(0, 0, None, None, "too short to decide")
    z = (green - key.gamma * t) / math.sqrt(t * key.gamma * (1 - key.gamma))
    p = 0.5 * math.erfc(z / math.sqrt(2))
    if t < MIN_TOKENS:
        verdict = "too short to decide"
    else:
        verdict = "watermarked" if z >= threshold else "not watermarked"
    return Detection(t, green, z, p, verdict)
