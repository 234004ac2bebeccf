"""What a text request asks for, checked: its settings (this server's limits, then the model's own
checks) and its prompt, encoded as OpenAI does (no token healing; refused over the token limit).
"""

from __future__ import annotations

import warnings

from starlette.concurrency import run_in_threadpool

from aigc.config import SampleConfig
from aigc.errors import AigcError
from aigc.generate.grammar import GrammarError
from aigc.generate.text import Prompt, PromptTooLong, TextModel
from aigc.serve import protocol as P
from aigc.serve.errors import APIError
from aigc.serve.state import ServeLimits


def format_overrides(response_format: dict | None) -> dict:
    """The settings of OpenAI's ``response_format``: ``{"type": "text"}``, ``{"type": "json_object"}``
    or ``{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}``.

    Raises:
        APIError: 400 for an unknown type or a json_schema without a schema object.
    """
    kind = (response_format or {}).get("type", "text")
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"response_format": "json_object"}
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema") \
            if isinstance(response_format.get("json_schema"), dict) else None
        if not isinstance(schema, dict):
            raise APIError(400, "response_format.json_schema.schema: expected a JSON schema object",
                           param="response_format")
        return {"response_format": "json_schema", "json_schema": schema}
    raise APIError(400, f"response_format.type = {kind!r}: expected text, json_object or json_schema",
                   param="response_format")


def settings_of(req: P.SamplingFields, tm: TextModel, max_tokens: int | None, limits: ServeLimits,
                logprobs: bool = False, top: int | None = None) -> SampleConfig:
    """The settings of a completion or chat request: the model's defaults with what it sets replaced.

    Sets ``req.n`` to 1 when it is null; ``max_tokens`` None means the model's default, capped
    by ``limits.max_tokens``; ``logprobs`` with ``top`` alternatives per token.

    Raises:
        APIError: 400 for logit_bias, n, max_tokens or stop beyond this server, a response_format
            the grammar compiler refuses, or a value the model refuses (``param`` names the setting).
    """
    if req.n is None:
        req.n = 1
    if req.logit_bias:
        raise APIError(400, "logit_bias is not supported by this server", param="logit_bias")
    if not 1 <= req.n <= limits.max_n:
        raise APIError(400, f"n = {req.n}: expected 1 to {limits.max_n}", param="n")
    if max_tokens is None:
        max_tokens = min(tm.defaults.max_new_tokens, limits.max_tokens)
    if not 1 <= max_tokens <= limits.max_tokens:
        raise APIError(400, f"max_tokens = {max_tokens}: expected 1 to {limits.max_tokens}",
                       param="max_tokens")
    stop = [req.stop] if isinstance(req.stop, str) else req.stop
    if stop is not None and (len(stop) > 16 or not all(stop)):
        raise APIError(400, "stop: expected up to 16 non-empty strings", param="stop")
    overrides = {"max_new_tokens": max_tokens, "temperature": req.temperature, "top_p": req.top_p,
                 "top_k": req.top_k, "repetition_penalty": req.repetition_penalty, "presence_penalty": req.presence_penalty,
                 "frequency_penalty": req.frequency_penalty, "stop": stop}
    if req.ignore_eos:
        overrides["stop_at_document_end"] = False
    if logprobs:
        overrides.update(logprobs=True, top_logprobs=top or 0)
    overrides.update(format_overrides(req.response_format))
    try:
        return tm.settings(**overrides)
    except GrammarError as e:
        raise APIError(400, f"response_format: {e}", param="response_format") from None
    except AigcError as e:  # a value out of range, named first in the message
        name = str(e).split(" ", 1)[0]
        raise APIError(400, str(e), param=name if name in overrides else None) from None


def too_long(e: PromptTooLong, param: str) -> APIError:
    """The 400 ("context_length_exceeded") answering a prompt over the limit, in this server's words."""
    if e.what == "suffix":
        return APIError(400, "prompt + suffix too long", param="suffix", code="context_length_exceeded")
    size = "is too long" if e.tokens is None else f"has {e.tokens} tokens"
    return APIError(400, f"{param} {size}: this server accepts at most {e.limit} tokens for this model "
                    "(start-of-document token included)", param=param, code="context_length_exceeded")


async def encode_prompt(tm: TextModel, text: str, param: str, limits: ServeLimits) -> Prompt:
    """``text`` encoded as OpenAI does (no token healing), at most ``limits.max_prompt_tokens``
    tokens and at most a GPT's context minus one (``param`` names the field in errors).

    Raises:
        APIError: 400 ("context_length_exceeded") over the limit.
        AigcError: a character the tokenizer cannot encode.
    """
    limit = limits.max_prompt_tokens
    if tm.model.context_length is not None:
        limit = min(limit, tm.model.context_length - 1)
    try:
        return await run_in_threadpool(tm.encode, text, heal=False, limit=limit, what=param)
    except PromptTooLong as e:
        raise too_long(e, param) from None


async def encode_infill(tm: TextModel, prefix: str, suffix: str, limits: ServeLimits) -> Prompt:
    """The fill-in-the-middle prompt between ``prefix`` and ``suffix``, cropped to the context.

    Raises:
        APIError: 400 ("context_length_exceeded") when their characters alone exceed
            ``limits.max_prompt_tokens`` tokens.
        AigcError: a character the tokenizer cannot encode.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # cropped to the context, as the CLI does
            return await run_in_threadpool(tm.encode, prefix, suffix=suffix, limit=limits.max_prompt_tokens,
                                           what="prompt")
    except PromptTooLong as e:
        raise too_long(e, "prompt") from None




def token_prompt(tm: TextModel, ids: list[int], limits: ServeLimits) -> Prompt:
    """A prompt given as token ids: the document-start token in front (unless the ids start with it,
    as ``/tokenize`` gives them), as for a text prompt, so ids and their text get the same answer.

    Raises:
        APIError: 400 for no ids, an id outside the vocabulary, or too many ids.
    """
    vocab = tm.tokenizer.vocab_size
    if not ids:
        raise APIError(400, "prompt: an empty list of token ids", param="prompt")
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise APIError(400, f"prompt: token id {bad[0]} is outside the vocabulary (0 to {vocab - 1})", param="prompt")
    limit = limits.max_prompt_tokens
    if tm.model.context_length is not None:
        limit = min(limit, tm.model.context_length - 1)
    if len(ids) + 1 > limit:
        raise too_long(PromptTooLong("prompt", len(ids) + 1, limit), "prompt")
    start = [] if ids[0] == tm.tokenizer.bos_id else [tm.tokenizer.bos_id]  # /tokenize's ids hold it already
    return Prompt([*start, *ids], "", False)
