"""Turning next-token logits into a token: penalties, temperature, top-k, top-p.

Applied in this order to logits ``(B, V)`` float32:

1. repetition penalty (Keskar et al. 2019, CTRL): for every token already in the
   sequence, a positive logit is divided by the penalty and a negative one
   multiplied by it;
2. presence / frequency penalties (OpenAI API): logit -= presence * [count > 0]
   + frequency * count;
3. temperature: logits / T; T = 0 means greedy (argmax), skipping the rest;
4. top-k: keep the k largest logits;
5. top-p (Holtzman et al. 2020, nucleus): keep the smallest set of tokens whose
   probability mass reaches p (the most likely token is always kept).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SamplingParams:
    """How to pick each next token (see the module docstring for the order of operations)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


def penalize(logits: torch.Tensor, counts: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Apply repetition/presence/frequency penalties; ``counts (B, V)`` = occurrences so far."""
    if params.repetition_penalty != 1.0:
        seen = counts > 0
        scaled = torch.where(logits > 0, logits / params.repetition_penalty, logits * params.repetition_penalty)
        logits = torch.where(seen, scaled, logits)
    if params.presence_penalty or params.frequency_penalty:
        logits = logits - params.presence_penalty * (counts > 0).to(logits.dtype) \
            - params.frequency_penalty * counts.to(logits.dtype)
    return logits


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside top-k / the top-p nucleus to -inf. ``logits (B, V)``."""
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs  # mass of strictly more likely tokens
        drop_sorted = mass_before >= top_p  # the first token always has mass_before = 0: kept
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, counts: torch.Tensor, params: SamplingParams,
                generator: torch.Generator | None) -> torch.Tensor:
    """Pick the next token for each row: ``logits (B, V)`` -> ids ``(B,)`` int64."""
    logits = penalize(logits.float(), counts, params)
    if params.temperature == 0:
        return torch.argmax(logits, dim=-1)
    logits = filter_logits(logits / params.temperature, params.top_k, params.top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
