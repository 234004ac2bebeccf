"""Log-probabilities in OpenAI's two shapes, and the request fields that ask for them.

- ``/v1/completions`` (the legacy shape): ``{"tokens", "token_logprobs", "top_logprobs",
  "text_offset"}``, four lists over the tokens (with ``echo``, the prompt's first), ``top_logprobs``
  a ``{token text: logprob}`` per token;
- ``/v1/chat/completions``: ``{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}``.

Values come from :mod:`aigc.generate.logprobs` and are always finite.
"""

from __future__ import annotations

from aigc.generate.logprobs import MAX_TOP, TokenLogprob
from aigc.generate.text import TextModel
from aigc.serve.errors import APIError


def check_top(k: int | None, param: str) -> None:
    """Raises :class:`APIError` 400 unless ``k`` is None or 0 to :data:`MAX_TOP`."""
    if k is not None and not 0 <= k <= MAX_TOP:
        raise APIError(400, f"{param} = {k}: expected 0 to {MAX_TOP}", param=param)


def _text(tm: TextModel, token: int) -> str:
    """A token's text; a token that is only part of a character is written as its bytes, as OpenAI
    does: ``bytes:\\xe6\\x98``."""
    raw = tm.token_bytes[token] if tm.token_bytes is not None and token < len(tm.token_bytes) else None
    if raw:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
    texts = tm.token_texts
    return texts[token] if token < len(texts) else ""


def completion_logprobs(tm: TextModel, entries: list[TokenLogprob], offset: int = 0) -> dict:
    """The legacy shape of ``entries``; ``offset``: the characters before the first token.
    ``text_offset`` counts characters of the decoded text (special tokens and a character's later
    bytes add none)."""
    tokens, offsets, raw = [], [], bytearray()
    for e in entries:  # a token's offset: the characters its earlier tokens' bytes decode to
        offsets.append(offset + len(raw.decode("utf-8", errors="ignore")))
        tokens.append(_text(tm, e.token))
        raw += tm.token_bytes[e.token] if tm.token_bytes is not None and e.token < len(tm.token_bytes) \
            else tokens[-1].encode()
    return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{_text(tm, t): lp for t, lp in e.top} for e in entries], "text_offset": offsets}


def _entry(tm: TextModel, token: int, logprob: float) -> dict:
    text = _text(tm, token)
    raw = tm.token_bytes[token] if tm.token_bytes is not None and token < len(tm.token_bytes) else b""
    return {"token": text, "logprob": logprob, "bytes": list(raw or text.encode())}


def chat_logprobs(tm: TextModel, entries: list[TokenLogprob]) -> dict:
    """The chat shape of ``entries``."""
    return {"content": [{**_entry(tm, e.token, e.logprob), "top_logprobs": [_entry(tm, t, lp) for t, lp in e.top]}
                        for e in entries], "refusal": None}
