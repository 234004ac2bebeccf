"""The inference engine: token ids in, token ids out, with a cache.

:class:`Engine` prefills the prompt once, then feeds one token per step through
``model(idx, cache=cache)``: a :class:`~aigc.models.transformer.KVCache` for the
GPT, the recurrent state for the LSTM. :func:`naive_generate` recomputes the
whole (cropped) context every step with no cache; it is the reference the engine
is tested against (greedy outputs must match token for token).

When a GPT's context fills up, the engine keeps the last 3/4 of ``block_size``
tokens and prefills them into a fresh cache (the naive reference slides by one
token instead, so the two agree only while the sequence fits the context).
"""

from __future__ import annotations

from typing import Iterator

import torch

from aigc.generate.sampling import SamplingParams, sample_next


def _counts(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Occurrences of each token per row: ``ids (B, T)`` -> ``(B, V)`` int64."""
    counts = torch.zeros(ids.size(0), vocab_size, dtype=torch.long, device=ids.device)
    return counts.scatter_add_(1, ids, torch.ones_like(ids))


class Engine:
    """Cached autoregressive generation for any aigc text model.

    Args:
        model: a model with ``new_cache(batch_size)`` and ``forward(idx, cache=...)``
            returning logits ``(B, T, V)``; ``context_length`` None for recurrent models.
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.device = next(model.parameters()).device

    def _prefill(self, ids: torch.Tensor):
        cache = self.model.new_cache(ids.size(0))
        logits = self.model(ids, cache=cache)  # (B, T, V)
        return cache, logits[:, -1, :]

    @torch.inference_mode()
    def generate(self, prompt: list[int], num_samples: int = 1, max_new_tokens: int = 100,
                 params: SamplingParams = SamplingParams(), seed: int | None = None) -> Iterator[torch.Tensor]:
        """Yield the next token of every sample, ``(num_samples,) int64`` on CPU, once per step.

        The caller stops consuming when it has what it needs (stop tokens and stop
        strings are its business); closing the iterator frees the cache.

        Raises:
            ValueError: an empty prompt, or a prompt longer than the model's context.
        """
        if not prompt:
            raise ValueError("prompt must hold at least one token")
        limit = self.model.context_length
        if limit is not None and len(prompt) > limit:
            raise ValueError(f"prompt of {len(prompt)} tokens exceeds the context of {limit}")
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed if seed is not None else torch.seed())
        ids = torch.tensor([prompt] * num_samples, dtype=torch.long, device=self.device)  # (B, T)
        counts = _counts(ids, self.model_vocab)
        cache, logits = self._prefill(ids)
        history = ids
        for _ in range(max_new_tokens):
            nxt = sample_next(logits, counts, params, generator)  # (B,)
            yield nxt.cpu()
            counts.scatter_add_(1, nxt[:, None], torch.ones_like(nxt[:, None]))
            history = torch.cat([history, nxt[:, None]], dim=1)
            if limit is not None and cache.pos >= limit:  # context full: restart from the recent tokens
                cache, logits = self._prefill(history[:, -(3 * limit // 4):])
            else:
                logits = self.model(nxt[:, None], cache=cache)[:, -1, :]

    @property
    def model_vocab(self) -> int:
        return self.model.config.vocab_size


@torch.inference_mode()
def naive_generate(model: torch.nn.Module, prompt: list[int], max_new_tokens: int,
                   params: SamplingParams = SamplingParams(temperature=0.0),
                   seed: int | None = None) -> list[int]:
    """Reference generation without a cache: recompute the last ``block_size`` tokens every step.

    Returns the new token ids of one sample (a list of int).
    """
    device = next(model.parameters()).device
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else torch.seed())
    idx = torch.tensor([prompt], dtype=torch.long, device=device)  # (1, T)
    limit = model.context_length
    out = []
    for _ in range(max_new_tokens):
        context = idx if limit is None else idx[:, -limit:]
        logits = model(context)[:, -1, :]  # (1, V)
        nxt = sample_next(logits, _counts(idx, model.config.vocab_size), params, generator)
        idx = torch.cat([idx, nxt[:, None]], dim=1)
        out.append(int(nxt))
    return out
