"""The inference engine: token ids in, token ids out, with a cache.

The engine knows token ids and the numeric sampling settings, nothing of tokenization,
strings, stop rules or HTTP.

:class:`Engine` prefills the prompt once, then feeds one token per step through
``model(idx, cache=cache)``: a :class:`~aigc.models.transformer.KVCache` for the
GPT, the recurrent state for the LSTM. :func:`naive_generate` recomputes the
whole (cropped) context every step with no cache; it is the reference the engine
is tested against (greedy outputs must match token for token).

When a GPT's context fills up, the engine keeps the last 3/4 of ``block_size``
tokens and prefills them into a fresh cache (the naive reference slides by one
token instead, so the two agree only while the sequence fits the context).

:class:`BatchEngine` is continuous batching for a server (the idea of Orca, Yu et
al. 2022, and vLLM): requests join and leave between decoding steps, and one
forward pass per step decodes every live sequence together, each row of a
per-row cache at its own position.

**Seeds.** Sample i of a request seeded ``s`` draws from its own generator seeded ``s + i``
(:func:`~aigc.generate.sampling.row_generators`), so it is the sample a lone request seeded
``s + i`` makes (up to the float rounding of batched matrix products).

**Hooks.** A request may pass a ``hook``, a plain object with:

- ``bias(logits (n, V))`` -> float ``(n, V)`` or None: added to the logits before sampling (a
  watermark's green tokens);
- ``allowed()`` -> bool ``(n, V)`` or None: the tokens each sample may take next (a grammar),
  applied as -inf logits before sampling;
- ``wants_scores`` (bool) and ``took(nxt (n,) int64, logprobs (n, V) float32 or None)``: called
  after each draw, with the log-probabilities the tokens were drawn from
  (:func:`~aigc.generate.sampling.token_logprobs`) when it wants them.
"""

from __future__ import annotations

from typing import Iterator

import torch

from aigc.config import SampleConfig
from aigc.generate.compiled import CompiledDecoder
from aigc.generate.sampling import row_generators, sample_groups, sample_next, token_logprobs


def _counts(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Occurrences of each token per row: ``ids (B, T)`` -> ``(B, V)`` int64."""
    counts = torch.zeros(ids.size(0), vocab_size, dtype=torch.long, device=ids.device)
    return counts.scatter_add_(1, ids, torch.ones_like(ids))


def _constrain(logits: torch.Tensor, hook) -> torch.Tensor:
    """``logits (n, V)`` with ``hook``'s bias added (a watermark) and the tokens it does not allow
    now set to -inf (a grammar)."""
    if hook is None:
        return logits
    bias = hook.bias(logits)
    if bias is not None:
        logits = logits.float() + bias.to(logits.device)
    allowed = hook.allowed()
    return logits if allowed is None else logits.masked_fill(~allowed.to(logits.device), float("-inf"))


def _tell(hook, nxt: torch.Tensor, logits: torch.Tensor, counts: torch.Tensor, params: SampleConfig) -> None:
    """Give ``hook`` the drawn tokens ``nxt (n,)`` and, if it wants them, their distribution."""
    if hook is not None:
        hook.took(nxt.cpu(), token_logprobs(logits, counts, params).cpu() if hook.wants_scores else None)


class Engine:
    """Cached autoregressive generation for any aigc text model.

    Args:
        model: a model with ``new_cache(batch_size)`` and ``forward(idx, cache=...)``
            returning logits ``(B, T, V)``; ``context_length`` None for recurrent models.
        compiled: decode through a :class:`~aigc.generate.compiled.CompiledDecoder` (the gpt
            family; the prompt's prefill stays eager).
    """

    def __init__(self, model: torch.nn.Module, compiled: bool = False):
        self.model = model
        self.device = next(model.parameters()).device
        self.decoder = CompiledDecoder(model) if compiled else None

    def _decode_cache(self, cache, rows: int):
        """The cache the decode steps write: the prefilled one, or its static copy for the compiled step."""
        return self.decoder.cache_from(cache, rows) if self.decoder is not None else cache

    def _step(self, nxt: torch.Tensor, cache) -> torch.Tensor:
        """Logits ``(B, V)`` after one new token per row, ``nxt (B,)``."""
        if self.decoder is not None:
            return self.decoder(nxt[:, None], cache)[:, -1, :]
        return self.model(nxt[:, None], cache=cache)[:, -1, :]

    def _prefill(self, ids: torch.Tensor, max_len: int | None = None):
        cache = self.model.new_cache(ids.size(0), max_len)  # sized to the request, not the whole context
        logits = self.model(ids, cache=cache)  # (B, T, V)
        return cache, logits[:, -1, :]

    @torch.inference_mode()
    def generate(self, prompt: list[int], num_samples: int = 1, settings: SampleConfig | None = None,
                 seed: int | None = None, first_allowed: torch.Tensor | None = None,
                 hook=None) -> Iterator[torch.Tensor]:
        """Yield the next token of every sample, ``(num_samples,) int64`` on CPU, once per step,
        for at most ``settings.max_new_tokens`` steps (the engine reads the numeric settings only:
        penalties, temperature, top-k, top-p; stop strings are the caller's).

        The caller stops consuming when it has what it needs (stop tokens and stop
        strings are its business); closing the iterator frees the cache.
        ``first_allowed`` (bool ``(V,)``): the tokens the first new token may be (token healing).
        Sample i draws from a generator seeded ``seed + i``; ``hook``: see the module docstring.

        Raises:
            ValueError: an empty prompt, or a prompt longer than the model's context.
        """
        if not prompt:
            raise ValueError("prompt must hold at least one token")
        limit = self.model.context_length
        if limit is not None and len(prompt) > limit:
            raise ValueError(f"prompt of {len(prompt)} tokens exceeds the context of {limit}")
        params = settings or SampleConfig()
        max_new_tokens = params.max_new_tokens
        generators = row_generators(seed, num_samples, self.device)
        ids = torch.tensor([prompt] * num_samples, dtype=torch.long, device=self.device)  # (B, T)
        counts = _counts(ids, self.model_vocab)
        room = min(limit, len(prompt) + max_new_tokens) if limit is not None else None  # cache positions
        cache, logits = self._prefill(ids, room)
        filled, cache = len(prompt), self._decode_cache(cache, num_samples)  # positions in the cache
        if first_allowed is not None:
            logits = logits.masked_fill(~first_allowed.to(logits.device), float("-inf"))
        history = ids
        for _ in range(max_new_tokens):
            logits = _constrain(logits, hook)
            nxt = sample_next(logits, counts, params, generators)  # (B,)
            _tell(hook, nxt, logits, counts, params)
            yield nxt.cpu()
            counts.scatter_add_(1, nxt[:, None], torch.ones_like(nxt[:, None]))
            history = torch.cat([history, nxt[:, None]], dim=1)
            if limit is not None and filled >= room:  # context full: restart from the recent tokens
                room = limit
                cache, logits = self._prefill(history[:, -(3 * limit // 4):], room)
                filled, cache = cache.pos, self._decode_cache(cache, num_samples)
            else:
                logits = self._step(nxt, cache)
                filled += 1

    @property
    def model_vocab(self) -> int:
        return self.model.config.vocab_size


@torch.inference_mode()
def naive_generate(model: torch.nn.Module, prompt: list[int], settings: SampleConfig,
                   seed: int | None = None) -> list[int]:
    """Reference generation without a cache: recompute the last ``block_size`` tokens every step,
    for ``settings.max_new_tokens`` steps.

    Returns the new token ids of one sample (a list of int).
    """
    params, max_new_tokens = settings, settings.max_new_tokens
    device = next(model.parameters()).device
    generators = row_generators(seed, 1, device)
    idx = torch.tensor([prompt], dtype=torch.long, device=device)  # (1, T)
    limit = model.context_length
    out = []
    for _ in range(max_new_tokens):
        context = idx if limit is None else idx[:, -limit:]
        logits = model(context)[:, -1, :]  # (1, V)
        nxt = sample_next(logits, _counts(idx, model.config.vocab_size), params, generators)
        idx = torch.cat([idx, nxt[:, None]], dim=1)
        out.append(int(nxt))
    return out


class RowsFull(Exception):
    """A :class:`BatchEngine` has no free rows for a new sequence now; retry after others finish."""


class Sequence:
    """The ``n`` samples of one request inside a :class:`BatchEngine`.

    Iterate it like :meth:`Engine.generate`: each ``next`` returns the next token of every
    sample, ``(n,) int64`` on CPU, once :meth:`BatchEngine.step` has produced it.
    ``close`` frees its rows.
    """

    def __init__(self, engine: "BatchEngine", n: int, params: SampleConfig, generators: list[torch.Generator],
                 ids: torch.Tensor, hook=None):
        self.engine, self.n, self.params, self.generators, self.hook = engine, n, params, generators, hook
        self.history = ids  # (n, T): the recent tokens, for a re-prefill when the context is full
        self.row = 0  # first of its n rows in the engine's cache
        self.pending: torch.Tensor | None = None  # sampled, not yet taken by the caller
        self.last: torch.Tensor | None = None  # (n,) the token to feed at the next step
        self.error: Exception | None = None  # raised by its hook during a shared step, for its caller
        self.closed = False

    def _got(self, nxt: torch.Tensor) -> None:
        """Record the sampled tokens ``(n,)``."""
        limit = self.engine.model.context_length
        if limit is not None:  # only a model with a context limit needs the recent tokens back
            self.history = torch.cat([self.history, nxt[:, None]], dim=1)[:, -limit:]
        self.pending = self.last = nxt

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        if self.closed:
            raise StopIteration
        if self.error is not None:  # its hook failed in a shared step: this sequence fails, alone
            error, self.error = self.error, None
            raise error
        if self.pending is None:
            raise RuntimeError("BatchEngine.step() has not produced this sequence's next token yet")
        out, self.pending = self.pending, None
        return out.cpu()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.engine._remove(self)


class BatchEngine:
    """Continuous batching: many requests decode together, one forward pass per step.

    :meth:`add` prefills a request's prompt alone and copies its cache into ``n`` free rows
    of a shared per-row cache (grown on demand up to ``max_rows``). :meth:`step` feeds the
    last token of every live sequence in one ``(B, 1)`` forward pass, applies every
    request's penalties and filters in one pass with per-row settings
    (:func:`~aigc.generate.sampling.sample_groups`), and lets each request draw with its own
    generator, the way :meth:`Engine.generate` does: a seed gives the same tokens as
    generating alone (up to the float rounding of batched matrix products). A finished
    sequence's rows are freed and the rows after it moved down, so live rows stay
    contiguous. A sequence whose context is full is re-prefilled from its last 3/4
    ``block_size`` tokens, as in :class:`Engine`.

    Not thread-safe: one thread adds, steps and closes.
    """

    def __init__(self, model: torch.nn.Module, max_rows: int = 64):
        self.model, self.max_rows = model, max_rows
        self.device = next(model.parameters()).device
        self.cache = None  # the per-row cache, allocated at the first add
        self.counts = torch.zeros(0, model.config.vocab_size, dtype=torch.long, device=self.device)  # (rows, V)
        self.seqs: list[Sequence] = []
        self.rows = 0  # rows in use: [0, rows)

    @torch.inference_mode()
    def add(self, prompt: list[int], n: int = 1, settings: SampleConfig | None = None,
            seed: int | None = None, first_allowed: torch.Tensor | None = None, hook=None) -> Sequence:
        """Prefill ``prompt`` for ``n`` samples; the first tokens are ready to take at once. The
        sequence runs until its caller closes it (``settings.max_new_tokens`` is the caller's to count).

        ``first_allowed`` (bool ``(V,)``): the tokens the first new token may be (token healing).
        Sample i draws from a generator seeded ``seed + i``; ``hook``: see the module docstring.

        Raises:
            RowsFull: fewer than ``n`` rows free (the caller retries later).
            ValueError: an empty prompt, one longer than the context, or ``n`` > ``max_rows``.
        """
        if not prompt:
            raise ValueError("prompt must hold at least one token")
        limit = self.model.context_length
        if limit is not None and len(prompt) > limit:
            raise ValueError(f"prompt of {len(prompt)} tokens exceeds the context of {limit}")
        if n > self.max_rows:
            raise ValueError(f"{n} samples need more rows than the engine's {self.max_rows}")
        if self.rows + n > self.max_rows:
            raise RowsFull(f"{self.rows} of {self.max_rows} rows in use")
        params = settings or SampleConfig()
        ids = torch.tensor([prompt] * n, dtype=torch.long, device=self.device)  # (n, T)
        seq = Sequence(self, n, params, row_generators(seed, n, self.device), ids, hook)
        single = self.model.new_cache(1)
        logits = self.model(ids[:1], cache=single)[:, -1, :].repeat(n, 1)  # (n, V): the prompt once
        if self.cache is None:
            self.cache = self.model.new_cache(n, per_row=True)
        self.cache.grow(self.rows + n)
        self.cache.write_rows(self.rows, single, n)
        if self.counts.size(0) < self.rows + n:
            self.counts = torch.cat([self.counts, self.counts.new_zeros(self.rows + n - self.counts.size(0),
                                                                         self.counts.size(1))])
        rows = slice(self.rows, self.rows + n)
        self.counts[rows] = _counts(ids, self.counts.size(1))
        seq.row, self.rows = self.rows, self.rows + n
        self.seqs.append(seq)
        try:
            if first_allowed is not None:
                logits = logits.masked_fill(~first_allowed.to(logits.device), float("-inf"))
            logits = _constrain(logits, hook)
            nxt = sample_next(logits, self.counts[rows], params, seq.generators)
            _tell(hook, nxt, logits, self.counts[rows], params)
        except BaseException:  # its hook refused (a grammar dead end): free its rows, the others go on
            seq.close()
            raise
        self._count(rows, nxt)
        seq._got(nxt)
        return seq

    def _count(self, rows: slice, nxt: torch.Tensor) -> None:
        self.counts[rows].scatter_add_(1, nxt[:, None], torch.ones_like(nxt[:, None]))

    @torch.inference_mode()
    def step(self) -> None:
        """Decode one token for every live sequence (each must have taken its last one).

        Raises:
            RuntimeError: a sequence has not taken its previous token.
        """
        if not self.seqs:
            return
        if any(s.pending is not None for s in self.seqs):
            raise RuntimeError("BatchEngine.step() before every sequence took its token")
        limit = self.model.context_length
        for s in self.seqs:  # context full: refill the rows from the recent tokens (the last one is fed below)
            if limit is not None and self.cache.row_full(s.row):
                recent = s.history[:, -(3 * limit // 4):]  # (n, T')
                fresh = self.model.new_cache(s.n)
                self.model(recent[:, :-1], cache=fresh)
                self.cache.write_rows(s.row, fresh, s.n)
        idx = torch.cat([s.last for s in self.seqs])[:, None]  # (B, 1)
        logits = self.model(idx, cache=self.cache)[:, -1, :]  # (B, V)
        B = self.rows
        for s in self.seqs:  # a hook that fails fails its own sequence (at its next take), not the batch
            if s.hook is not None and s.error is None:
                try:
                    logits[s.row:s.row + s.n] = _constrain(logits[s.row:s.row + s.n], s.hook)
                except Exception as e:  # noqa: BLE001 - handed to the sequence's caller
                    s.error = e
        nxt = sample_groups(logits, self.counts[:B], [(s.params, s.n, s.generators) for s in self.seqs])  # (B,)
        for s in self.seqs:
            if s.hook is not None and s.error is None:
                rows = slice(s.row, s.row + s.n)
                try:
                    _tell(s.hook, nxt[rows], logits[rows], self.counts[rows], s.params)
                except Exception as e:  # noqa: BLE001 - handed to the sequence's caller
                    s.error = e
        self._count(slice(0, B), nxt)
        for s in self.seqs:
            s._got(nxt[s.row:s.row + s.n])

    @torch.inference_mode()
    def _remove(self, seq: Sequence) -> None:
        i = self.seqs.index(seq)
        del self.seqs[i]
        row = seq.row
        for later in self.seqs[i:]:  # keep live rows contiguous
            self.cache.move_rows(later.row, row, later.n)
            self.counts[row:row + later.n] = self.counts[later.row:later.row + later.n].clone()
            later.row, row = row, row + later.n
        self.rows -= seq.n
