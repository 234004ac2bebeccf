"""Request bodies and response shapes of the OpenAI-compatible API.

Field names, defaults and ranges follow OpenAI's API reference (completions,
chat completions, images) so the official clients work unchanged; ``top_k``,
``repetition_penalty``, ``ignore_eos`` and ``response_format`` on completions are extensions that
vLLM and others accept too. Fields we cannot honour (``logit_bias``, ``suffix`` for a model not
trained for fill-in-the-middle, ``best_of`` > n, tools, image URLs) are refused with a 400 rather
than silently ignored. Fields they do not know are ignored, so that clients sending extras of their
own work; aigc's own routes (:class:`Closed`: poems, music) refuse them by name.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """No coercion: ``"4"`` or ``4.5`` is not an integer, ``"yes"`` not a boolean (an int is a float)."""

    model_config = ConfigDict(strict=True)


class Closed(Strict):
    """An aigc route's request (the OpenAI-compatible ones ignore unknown fields, so that clients sending
    extras of their own work): a field it does not know is an error, so a misspelt ``format`` for
    ``formats`` is not silently ignored."""

    model_config = ConfigDict(strict=True, extra="forbid")


class SamplingFields(Strict):
    """Parameters shared by completions and chat completions (``null`` means the default)."""

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    n: int | None = 1
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = False
    stream_options: dict | None = None
    ignore_eos: bool = False  # vLLM's extension: go on past the end-of-document token (benchmarks)
    response_format: dict | None = None  # {"type": "text" | "json_object" | "json_schema", "json_schema": {...}}
    logit_bias: dict | None = None
    user: str | None = None


class CompletionRequest(SamplingFields):
    """``POST /v1/completions``: ``prompt`` is a string, a list of strings (one choice group each), or
    token ids (a list of ints, or a list of such lists). ``logprobs`` k: each token's log-probability
    and its k most likely alternatives (0 to 20); with ``echo`` the prompt's tokens are scored too,
    and ``max_tokens`` 0 then scores the prompt without generating."""

    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = None
    echo: bool | None = False
    suffix: str | None = None
    best_of: int | None = None


class ChatRequest(SamplingFields):
    """``POST /v1/chat/completions``; ``max_completion_tokens`` is the newer name of ``max_tokens``."""

    messages: list[dict]
    max_completion_tokens: int | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = None
    tools: list | None = None
    tool_choice: str | dict | None = None
    functions: list | None = None
    function_call: str | dict | None = None


class PoemRequest(Closed):
    """``POST /v1/poems`` (an aigc extension): regulated verse titled ``theme`` in ``form`` (五言绝句,
    七言绝句, 五言律诗, 七言律诗 or 五绝 ...; default 七言绝句) or a ci to ``tune`` (西江月 ...), ``acrostic`` first characters, ``n`` candidates best first,
    candidate i seeded ``seed + i``, ``strict`` to check every character's tone, ``repeats`` to allow a
    character twice (by default only a 叠字 repeats: regulated verse avoids 重字)."""

    model: str | None = None
    theme: str = Field(min_length=1, max_length=100)
    form: str | None = None
    tune: str | None = None
    acrostic: str = Field(default="", max_length=8)
    n: int = Field(default=1, ge=1, le=16)
    seed: int | None = None
    strict: bool = False
    repeats: bool = False


class MusicRequest(Closed):
    """``POST /v1/music`` (an aigc extension; OpenAI has no music route): ``n`` tunes from a music model
    (``content = "abc"``) after ``prompt``, a tune's header such as ``"M:6/8\\nK:D\\n"`` (fields R: M: L:
    K:; empty = the model chooses), tune i seeded ``seed + i``. ``formats`` chooses what comes back beside
    the ABC text, base64-encoded: ``mid`` (MIDI), ``wav`` (audio, where the server has FluidSynth) and
    ``png`` (a piano roll with C2PA credentials)."""

    model: str | None = None
    prompt: str = Field(default="", max_length=200)
    n: int = Field(default=1, ge=1, le=8)
    seed: int | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=2000)
    temperature: float | None = None
    top_p: float | None = None
    formats: list[Literal["mid", "wav", "png"]] = Field(default_factory=lambda: ["mid"], max_length=3)


class ImageRequest(Strict):
    """``POST /v1/images/generations``: ``prompt`` names the class of a conditional model. Diffusion
    models also take ``steps``, ``guidance_scale``, ``sampler``, ``eta`` and ``spacing`` (unset: the
    model's defaults); image k of a request with ``seed`` s has seed s + k. A text-to-image model reads
    ``prompt`` as a description ("a red dress", "红色的连衣裙"; "" = unconditional). With ``stream`` a
    diffusion model's answer is server-sent events: ``image_generation.progress`` after every sampler
    step (``step``, ``total_steps``), then ``image_generation.completed`` holding ``data``, then ``[DONE]``."""

    prompt: str = ""
    stream: bool = False
    steps: int | None = None
    guidance_scale: float | None = None
    sampler: str | None = None
    eta: float | None = None
    spacing: str | None = None
    model: str | None = None
    n: int | None = 1
    size: str | None = None
    response_format: str | None = "b64_json"
    seed: int | None = None
    quality: str | None = None
    style: str | None = None
    user: str | None = None


class DetectRequest(Strict):
    """``POST /v1/detect``: test ``text`` for the watermark of model ``model``; ``prompt``: the text
    it continues (context only, not scored)."""

    model: str
    text: str
    prompt: str = ""


class TokenizeRequest(Strict):
    """``POST /tokenize``: a prompt, or chat messages rendered with the model's template."""

    model: str
    prompt: str | None = None
    messages: list[dict] | None = None
    add_special_tokens: bool = True


class DetokenizeRequest(Strict):
    """``POST /detokenize``."""

    model: str
    tokens: list[int] = Field(default_factory=list)


def new_id(prefix: str) -> str:
    """An id like OpenAI's: ``cmpl-<hex>``, ``chatcmpl-<hex>``."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    """Unix time in seconds, the ``created`` field."""
    return int(time.time())


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """OpenAI's error JSON: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def encode_sse(obj) -> str:
    """One server-sent event carrying ``obj`` as JSON."""
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def sse_error(exc: Exception) -> str:
    """The error event of a stream that has begun (its 200 is sent): a refusal (ValueError, AigcError)
    is the client's, with its message; anything else is an internal error named by its type and first line."""
    from aigc.errors import AigcError  # protocol.py stays importable without the rest of aigc

    if isinstance(exc, (AigcError, ValueError)):
        return encode_sse(error_body(str(exc)))
    line = str(exc).splitlines()[0] if str(exc) else ""
    return encode_sse(error_body(f"internal error: {type(exc).__name__}: {line}", type_="server_error"))
