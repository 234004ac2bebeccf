"""Tunes measured as music: do they parse, do their bars fill the meter, do their notes keep to the key,
how close are their pitch-class, interval and duration histograms to held-out tunes, and how long a run
of bars they copy from the training tunes.

The histogram overlap follows Yang & Lerch (2020), "On the evaluation of generative models in music"
(Neural Computing and Applications 32): they compare the distributions of per-piece features of a
generated and a reference set by their overlapping area. We pool every note of a set into one
normalised histogram per feature and report the overlapping area ``sum_i min(p_i, q_i)`` (1 = the same
distribution, 0 = disjoint), a simpler variant of theirs.
"""

from __future__ import annotations

import collections
import random
import re

import numpy as np
from tqdm import tqdm

from aigc.data.abc import meter_fit, parse_header
from aigc.errors import AigcError
from aigc.generate.music import parse_tune

DURATIONS = [0.25, 1 / 3, 0.5, 2 / 3, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0]  # quarter lengths; anything else is "other"
INTERVALS = 25  # -12 .. +12 semitones, larger leaps clipped


def tune_features(text: str) -> dict | None:
    """What one tune contributes to the metrics, or None when it does not parse.

    Returns:
        ``{"fit", "bars"}`` (:func:`aigc.data.abc.meter_fit`), ``in_key`` and ``notes`` (notes whose pitch
        class is in the scale of music21's key estimate, Krumhansl-Schmuckler, and all notes), and the
        histograms ``pitch_class`` (12,), ``interval`` (25,) and ``duration`` (11,) as counts.
    """
    try:
        tune = parse_tune(text)
    except AigcError:
        return None
    fit, bars = meter_fit(tune.text)
    notes = [n for n in tune.score.flatten().notes]
    pitches = [max(n.pitches).midi for n in notes]
    try:
        key = tune.score.analyze("key")
        scale = {p.pitchClass for p in key.pitches}
    except Exception:  # noqa: BLE001  too few notes to estimate a key
        scale = set()
    pc = np.bincount([p % 12 for p in pitches], minlength=12)
    steps = np.clip(np.diff(pitches), -12, 12) + 12 if len(pitches) > 1 else np.array([], dtype=int)
    iv = np.bincount(steps.astype(int), minlength=INTERVALS)
    du = np.zeros(len(DURATIONS) + 1)
    for n in notes:
        ql = float(n.quarterLength)
        k = next((i for i, d in enumerate(DURATIONS) if abs(ql - d) < 1e-6), len(DURATIONS))
        du[k] += 1
    return {"fit": fit, "bars": bars, "in_key": sum(p % 12 in scale for p in pitches), "notes": len(pitches),
            "pitch_class": pc, "interval": iv, "duration": du}


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Overlapping area of two histograms after normalising each to sum 1 (0 when either is empty)."""
    if a.sum() == 0 or b.sum() == 0:
        return 0.0
    return float(np.minimum(a / a.sum(), b / b.sum()).sum())


def bars_text(tune: str) -> list[str]:
    """The bars of a normalised tune as text (spaces removed), for matching against training tunes."""
    _, body = parse_header(tune, "tune")
    return [b for b in (re.sub(r"\s+", "", x) for x in re.split(r"[|:\]\[]+", body)) if b]


class BarIndex:
    """Every training tune's bars, to find the longest run of consecutive bars a tune shares with one."""

    def __init__(self, tunes: list[str]):
        self.tunes = [bars_text(t) for t in tunes if _has_header(t)]
        self.where: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
        for i, bars in enumerate(self.tunes):
            for j, bar in enumerate(bars):
                self.where[bar].append((i, j))

    def longest_run(self, tune: str) -> int:
        """The most consecutive bars of ``tune`` found consecutively in one training tune."""
        bars = bars_text(tune) if _has_header(tune) else []
        best = 0
        for k, bar in enumerate(bars):
            for i, j in self.where.get(bar, ())[:2000]:  # a very common bar: the first 2,000 places suffice
                n = 1
                while k + n < len(bars) and j + n < len(self.tunes[i]) and bars[k + n] == self.tunes[i][j + n]:
                    n += 1
                best = max(best, n)
        return best


def _has_header(tune: str) -> bool:
    try:
        header, _ = parse_header(tune, "tune")
    except AigcError:
        return False
    return header is not None and bool(header.key)


def music_metrics(tunes: list[str], reference: list[dict], index: BarIndex, progress: bool = False,
                  desc: str = "scoring") -> dict:
    """The metrics of a set of tunes against reference features (:func:`tune_features` of held-out tunes)
    and the training tunes' :class:`BarIndex`.

    Returns:
        ``parse_share``, ``meter_share`` (bars that fill the meter, over parsed tunes), ``in_key_share``,
        ``pitch_class_overlap``, ``interval_overlap``, ``duration_overlap``, ``longest_copied_bars`` (mean
        over tunes) and ``longest_copied_bars_max``, and ``tunes``.
    """
    feats = [f for f in (tune_features(t) for t in tqdm(tunes, desc=desc, unit="tune", disable=not progress))
             if f is not None]
    runs = [index.longest_run(t) for t in tunes]
    out = {"tunes": len(tunes), "parse_share": len(feats) / max(len(tunes), 1)}
    out["meter_share"] = sum(f["fit"] for f in feats) / max(sum(f["bars"] for f in feats), 1)
    out["in_key_share"] = sum(f["in_key"] for f in feats) / max(sum(f["notes"] for f in feats), 1)
    for name in ("pitch_class", "interval", "duration"):
        mine = sum((f[name] for f in feats), np.zeros_like(reference[0][name], dtype=float))
        ref = sum((f[name] for f in reference), np.zeros_like(reference[0][name], dtype=float))
        out[f"{name}_overlap"] = overlap(mine, ref)
    out["longest_copied_bars"] = float(np.mean(runs)) if runs else 0.0
    out["longest_copied_bars_max"] = max(runs, default=0)
    return out


def markov_tunes(train: list[str], prompts: list[str], seed: int, max_chars: int = 600) -> list[str]:
    """The floor: a first-order Markov chain over ABC characters fitted on ``train`` (add-one smoothing
    over the characters seen), sampled after each prompt until the end-of-tune mark or ``max_chars``."""
    end = "\x00"  # the end of a tune, as the models' end-of-text token
    chars = sorted({c for t in train for c in t} | {end})
    ids = {c: i for i, c in enumerate(chars)}
    counts = np.ones((len(chars), len(chars)))
    for t in train:
        seq = [ids[c] for c in t + end]
        np.add.at(counts, (seq[:-1], seq[1:]), 1)
    probs = counts / counts.sum(axis=1, keepdims=True)
    rng = random.Random(seed)
    out = []
    for prompt in prompts:
        if any(c not in ids for c in prompt):
            raise AigcError(f"prompt {prompt!r}: holds a character the training tunes do not")
        text, prev = prompt, ids[prompt[-1]] if prompt else ids["\n"]
        while len(text) - len(prompt) < max_chars:
            prev = rng.choices(range(len(chars)), weights=probs[prev])[0]
            if chars[prev] == end:
                break
            text += chars[prev]
        out.append(text)
    return out


__all__ = ["BarIndex", "markov_tunes", "music_metrics", "overlap", "tune_features"]
