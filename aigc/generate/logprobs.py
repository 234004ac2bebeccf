"""Log-probabilities of tokens (generated and prompt) and the per-request engine hook.

A generated token is scored by the distribution it was drawn from: the model's logits after the
penalties and the temperature (temperature 0 scored at 1), before top-k / top-p truncation, with
the tokens a grammar or token healing forbade at probability 0
(:func:`~aigc.generate.sampling.token_logprobs`). A prompt token is scored by the model alone
(no penalties, temperature 1): the numbers of next-token cross-entropy, ``aigc eval``'s loss.

Log-probabilities are finite: a probability of 0 (a forbidden token) is reported as
:data:`FLOOR` (-9999.0, vLLM's convention), never as -inf, which JSON cannot carry.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FLOOR = -9999.0
MAX_TOP = 20  # the most alternatives a token reports (OpenAI's top_logprobs maximum)


@dataclass
class TokenLogprob:
    """One token and how likely it was.

    Attributes:
        token: its id.
        logprob: its natural-log probability (>= :data:`FLOOR`); None for a token nothing predicts.
        top: the ``k`` most likely tokens at its position, ``(id, logprob)``, most likely first.
    """

    token: int
    logprob: float | None
    top: list[tuple[int, float]]


def _finite(x: float) -> float:
    return max(float(x), FLOOR)


def pick(scores: torch.Tensor, tokens: torch.Tensor, k: int) -> list[TokenLogprob]:
    """``scores (B, V)`` log-probabilities, ``tokens (B,)`` the token taken at each row -> one
    :class:`TokenLogprob` per row with the ``k`` most likely alternatives."""
    chosen = scores.gather(1, tokens.long()[:, None])[:, 0].tolist()
    if k:
        vals, ids = torch.topk(scores, min(k, scores.size(-1)), dim=-1)
        tops = [[(int(i), _finite(v)) for i, v in zip(r_ids, r_vals)] for r_ids, r_vals in zip(ids.tolist(), vals.tolist())]
    else:
        tops = [[] for _ in chosen]
    return [TokenLogprob(int(t), _finite(c), top) for t, c, top in zip(tokens.tolist(), chosen, tops)]


@torch.inference_mode()
def score_prompt(model: torch.nn.Module, ids: list[int], k: int) -> list[TokenLogprob]:
    """The log-probability of each prompt token after the ones before it, ``ids[1:]`` (``ids[0]`` is
    the document-start token, which nothing predicts), with ``k`` alternatives each.

    Runs the whole prompt through ``model`` once (``(1, T)`` -> logits ``(1, T, V)``); the prompt
    must fit the model's context.
    """
    device = next(model.parameters()).device
    x = torch.tensor([ids], dtype=torch.long, device=device)
    logits = model(x)[0, :-1].float()  # (T-1, V): position t predicts ids[t+1]
    scores = torch.log_softmax(logits, dim=-1).cpu()
    return pick(scores, torch.tensor(ids[1:]), k)


class RequestHook:
    """The engine hook of one request of ``n`` samples (see :mod:`aigc.generate.engine`): a watermark's
    bias, a grammar's masks, and the log-probabilities of each step's tokens.

    Args:
        n: samples.
        top: alternatives per token when log-probabilities are wanted (0 to :data:`MAX_TOP`);
            None: not wanted.
        grammar: a :class:`~aigc.generate.grammar.GrammarState`, or None.
        watermark: a :class:`~aigc.generate.watermark.WatermarkState`, or None.

    Attributes:
        last: after each draw, one :class:`TokenLogprob` per sample (None unless ``top`` is set).
    """

    def __init__(self, n: int, top: int | None = None, grammar=None, watermark=None):
        self.top, self.grammar, self.watermark = top, grammar, watermark
        self.wants_scores = top is not None
        self.last: list[TokenLogprob] | None = None

    def bias(self, logits: torch.Tensor) -> torch.Tensor | None:
        return self.watermark.bias(logits) if self.watermark is not None else None

    def allowed(self) -> torch.Tensor | None:
        return self.grammar.allowed() if self.grammar is not None else None

    def took(self, nxt: torch.Tensor, scores: torch.Tensor | None) -> None:
        if self.grammar is not None:
            self.grammar.advance(nxt.tolist())
        if self.watermark is not None:
            self.watermark.advance(nxt.tolist())
        if scores is not None:
            self.last = pick(scores, nxt, self.top)
