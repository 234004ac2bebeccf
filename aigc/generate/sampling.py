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
   probability mass reaches p (the most likely token is always kept);
6. one draw per sample from the softmax by inverse-CDF sampling (:func:`draw`).

The settings are the fields of one :class:`~aigc.config.SampleConfig`, the object that
flows from the CLI, the server or the API down to here.
"""

from __future__ import annotations

import torch

from aigc.config import SampleConfig


def penalize(logits: torch.Tensor, counts: torch.Tensor, params: SampleConfig) -> torch.Tensor:
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
        logits = logits.masked_fill(outside_nucleus(logits, top_p), float("-inf"))
    return logits


def outside_nucleus(logits: torch.Tensor, top_p: float | torch.Tensor) -> torch.Tensor:
    """The tokens top-p drops: ``logits (B, V)``, ``top_p`` a float or ``(B, 1)`` -> bool ``(B, V)``.

    A token is dropped when the probability of the strictly more likely tokens already
    reaches p (so the most likely token is always kept). Only the top k tokens are sorted,
    k = 256 and growing x4 until the nucleus of every row fits (every token beyond the
    top k is then outside it); rows with p >= 1 need no nucleus.
    """
    probs = torch.softmax(logits, dim=-1)
    V = probs.size(-1)
    k = min(V, 256)
    while True:
        top, order = torch.topk(probs, k, dim=-1)  # (B, k), most likely first
        cum = torch.cumsum(top, dim=-1)
        if k == V or bool(((cum[:, -1:] >= top_p) | (torch.as_tensor(top_p) >= 1.0)).all()):
            break
        k = min(V, 4 * k)
    kept = (cum - top) < top_p  # mass of strictly more likely tokens below p; the first is always kept
    return ~torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, kept)


Generators = torch.Generator | list[torch.Generator] | None  # one for all rows, or one per row


def sample_next(logits: torch.Tensor, counts: torch.Tensor, params: SampleConfig,
                generator: Generators) -> torch.Tensor:
    """Pick the next token for each row: ``logits (B, V)`` -> ids ``(B,)`` int64. ``generator``: one
    for all rows, or a list of one per row (row i then draws only from its own)."""
    logits = penalize(logits.float(), counts, params)
    if params.temperature == 0:
        return torch.argmax(logits, dim=-1)
    logits = filter_logits(logits / params.temperature, params.top_k, params.top_p)
    probs = torch.softmax(logits, dim=-1)
    return draw(probs, uniforms(probs.size(0), generator, probs.device))


def uniforms(n: int, generator: Generators, device) -> torch.Tensor:
    """``n`` uniform numbers in [0, 1), float64: one per sample drawn, from ``generator`` or, given a
    list of ``n`` generators, one from each."""
    if isinstance(generator, list):
        return torch.cat([torch.rand(1, generator=g, dtype=torch.float64, device=device) for g in generator])
    return torch.rand(n, generator=generator, dtype=torch.float64, device=device)


def row_generators(seed: int | None, n: int, device) -> list[torch.Generator]:
    """The generators of ``n`` samples: sample i seeded ``seed + i`` (a fresh random seed when None),
    so sample i of a batch draws what a lone sample seeded ``seed + i`` draws."""
    base = seed if seed is not None else torch.seed() % (2**63 - n)
    out = []
    for i in range(n):
        g = torch.Generator(device=device)
        g.manual_seed(base + i)
        out.append(g)
    return out


def token_logprobs(logits: torch.Tensor, counts: torch.Tensor, params: SampleConfig) -> torch.Tensor:
    """The log-probabilities a token is drawn from, before top-k / top-p truncation: the penalties,
    then the temperature (OpenAI's logprobs are of the distribution after them); temperature 0
    (greedy) is scored at temperature 1. ``logits (B, V)`` (masked tokens -inf) -> ``(B, V)`` float32."""
    logits = penalize(logits.float(), counts, params)
    return torch.log_softmax(logits / (params.temperature or 1.0), dim=-1)


def draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: row i picks the first token whose cumulative probability exceeds ``u[i]``.

    ``probs (B, V)`` (rows need not be normalised), ``u (B,)`` float64 in [0, 1) -> ids ``(B,)``
    int64. One random number per row (``torch.multinomial`` spends about V random numbers per
    draw, the bulk of a small model's decoding time); tokens of zero probability are never
    picked. The cumulative sum runs in float64 so the CDF of a 100k vocabulary stays exact enough.
    """
    cdf = torch.cumsum(probs.double(), dim=-1)  # (B, V)
    target = (u * cdf[:, -1])[:, None]  # (B, 1)
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_(max=probs.size(-1) - 1)


def sample_groups(logits: torch.Tensor, counts: torch.Tensor,
                  groups: list[tuple[SampleConfig, int, Generators]]) -> torch.Tensor:
    """:func:`sample_next` for a batch made of several requests, each with its own settings.

    ``groups`` lists consecutive row groups ``(params, rows, generator or one per row)``; ``logits`` and
    ``counts`` are ``(B, V)`` with B = the sum of the rows. The penalties, temperature and
    filters run once over the whole batch with per-row settings; each group then draws
    with its own generator. Every row gets exactly what :func:`sample_next` would give it
    alone (the same float operations, row by row). Returns ``(B,)`` int64.
    """
    rows = [n for _, n, _ in groups]

    def per_row(values, dtype=torch.float32):  # one value per group -> (B, 1)
        return torch.tensor(values, dtype=dtype, device=logits.device).repeat_interleave(
            torch.tensor(rows, device=logits.device))[:, None]

    ps = [p for p, _, _ in groups]
    logits = logits.float()
    rep = per_row([p.repetition_penalty for p in ps])
    if (rep != 1.0).any():
        scaled = torch.where(logits > 0, logits / rep, logits * rep)
        logits = torch.where((counts > 0) & (rep != 1.0), scaled, logits)
    if any(p.presence_penalty or p.frequency_penalty for p in ps):
        use = per_row([bool(p.presence_penalty or p.frequency_penalty) for p in ps], torch.bool)
        penalized = logits - per_row([p.presence_penalty for p in ps]) * (counts > 0).to(logits.dtype) \
            - per_row([p.frequency_penalty for p in ps]) * counts.to(logits.dtype)
        logits = torch.where(use, penalized, logits)
    temperature = per_row([p.temperature for p in ps])
    greedy = torch.argmax(logits, dim=-1)  # (B,)
    logits = logits / torch.where(temperature == 0, torch.ones_like(temperature), temperature)
    V = logits.size(-1)
    top_k = per_row([p.top_k if 0 < p.top_k < V else 0 for p in ps], torch.long)
    if (top_k > 0).any():
        kmax = int(top_k.max())
        kth = torch.topk(logits, kmax, dim=-1).values.gather(1, (top_k - 1).clamp(min=0))  # (B, 1)
        logits = logits.masked_fill((top_k > 0) & (logits < kth), float("-inf"))
    top_p = per_row([p.top_p for p in ps])
    if (top_p < 1.0).any():
        logits = logits.masked_fill(outside_nucleus(logits, top_p) & (top_p < 1.0), float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    u = torch.cat([uniforms(n, generator, logits.device) if p.temperature != 0
                   else torch.zeros(n, dtype=torch.float64, device=logits.device) for p, n, generator in groups])
    return torch.where(temperature[:, 0] == 0, greedy, draw(probs, u))
