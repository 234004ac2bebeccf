"""The text routes: ``/v1/completions``, ``/v1/chat/completions``, ``/tokenize``, ``/detokenize``.

A generating request goes: its settings (:func:`settings_of`: the limits of this server,
then the model's own checks in :meth:`~aigc.generate.text.TextModel.settings`), its prompt
encoded as OpenAI does (no token healing; refused over the token limit, :func:`encode_prompt`),
then one scheduler job decoding in the model's :class:`~aigc.generate.engine.BatchEngine`
(:func:`run_text`), answered as one JSON body or streamed as server-sent events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import warnings
from typing import Callable, Iterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from aigc.config import SampleConfig
from aigc.data.fim import fim_token_ids
from aigc.errors import AigcError
from aigc.generate.engine import BatchEngine
from aigc.generate.text import GenerationStep, Prompt, PromptTooLong, TextModel
from aigc.serve import protocol as P
from aigc.serve.errors import APIError
from aigc.serve.scheduler import Job
from aigc.serve.state import Served, ServeLimits, check_seed, get_served, watch_disconnect

router = APIRouter()


# ------------------------------------------------------------ settings and prompts
def settings_of(req: P.SamplingFields, tm: TextModel, max_tokens: int | None, limits: ServeLimits) -> SampleConfig:
    """The settings of a completion or chat request: the model's defaults with what it sets replaced.

    Sets ``req.n`` to 1 when it is null; ``max_tokens`` None means the model's default, capped
    by ``limits.max_tokens``.

    Raises:
        APIError: 400 for logprobs, logit_bias, n, max_tokens or stop beyond this server, or a
            value the model refuses (``param`` names the setting).
    """
    if req.n is None:
        req.n = 1
    if req.logprobs not in (None, False, 0):
        raise APIError(400, "logprobs are not supported by this server", param="logprobs")
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
    try:
        return tm.settings(**overrides)
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


# ------------------------------------------------------------ running a text job
def text_job(tm: TextModel, engine: BatchEngine, prompts: list[Prompt], n: int, seed: int | None,
             settings: SampleConfig) -> Callable[[], Iterator[tuple[int, GenerationStep]]]:
    """The scheduler job of a text request: ``(prompt index, step)`` for each decoding step of
    each prompt in turn (prompt ``k`` seeded ``seed + k``), decoded in ``engine``."""
    def steps():
        for k, prompt in enumerate(prompts):
            for step in tm.steps(prompt, settings, n, None if seed is None else seed + k, batch=engine):
                yield k, step
    return steps


class Choices:
    """The choices of one text request as they grow (``prompts x n``, prompt-major); records the
    time to first token and the tokens generated in the app's metrics."""

    def __init__(self, served: Served, name: str, job: Job, prompts: int, n: int):
        self.metrics, self.name, self.job, self.n = served.metrics, name, job, n
        total = prompts * n
        self.texts: list[str] = [""] * total
        self.finish: list[str | None] = [None] * total
        self.tokens = [0] * total
        self.first = True

    def absorb(self, k: int, step: GenerationStep) -> list[tuple[int, str, str | None]]:
        """Merge one step of prompt ``k``; return the (choice, new text, finish reason) that changed."""
        changed = []
        for i in range(self.n):
            c = k * self.n + i
            if self.finish[c]:
                continue
            piece, fin = step.pieces[i], step.finish[i]
            if piece and self.first:
                self.first = False
                self.metrics.ttft.labels(self.name).observe(time.perf_counter() - self.job.submitted)
            self.texts[c] += piece
            self.tokens[c] = step.tokens[i]
            if fin:
                self.finish[c] = fin
                self.metrics.generation_tokens.labels(self.name).inc(step.tokens[i])
            if piece or fin:
                changed.append((c, piece, fin))
        return changed


async def run_text(request: Request, served: Served, name: str, prompts: list[Prompt], n: int, seed: int | None,
                   settings: SampleConfig, stream: bool, make_chunk, make_response, include_usage: bool):
    """Submit a text job for model ``name``; return an SSE StreamingResponse or the whole JSON response.

    ``make_response(texts, finish, usage)`` shapes the JSON body; ``make_chunk(event)`` an SSE
    chunk: None for the opening chunks (a list), ``(choice, piece, finish)`` or ``("usage", usage)``.

    Raises:
        APIError: 429 when the queue is full.
        AigcError: the model refused the job (a non-streaming request; a stream reports it as an event).
    """
    job = served.submit(text_job(served.models[name], served.engines[name], prompts, n, seed, settings))
    prompt_tokens = sum(len(p.ids) for p in prompts)
    served.metrics.prompt_tokens.labels(name).inc(prompt_tokens)
    choices = Choices(served, name, job, len(prompts), n)
    if not stream:
        watcher = asyncio.create_task(watch_disconnect(request, job))
        try:
            async for k, step in job.results():
                choices.absorb(k, step)
        finally:
            watcher.cancel()
        return make_response(choices.texts, choices.finish, P.usage(prompt_tokens, sum(choices.tokens)))

    async def events():
        watcher = asyncio.create_task(watch_disconnect(request, job))
        try:
            for chunk in make_chunk(None):  # opening chunks (chat: the assistant role)
                yield P.encode_sse(chunk)
            async for k, step in job.results():
                for c, piece, fin in choices.absorb(k, step):
                    yield P.encode_sse(make_chunk((c, piece, fin)))
            if include_usage:
                yield P.encode_sse(make_chunk(("usage", P.usage(prompt_tokens, sum(choices.tokens)))))
        except Exception as e:  # noqa: BLE001 - the stream has begun: an error event, then [DONE]
            yield P.sse_error(e)
        finally:
            watcher.cancel()
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def include_usage(req: P.SamplingFields) -> bool:
    """Whether a streamed answer ends with a usage chunk (``stream_options.include_usage``)."""
    return bool((req.stream_options or {}).get("include_usage"))


# ------------------------------------------------------------ routes
@router.post("/v1/completions")
async def completions(req: P.CompletionRequest, request: Request, served: Served = Depends(get_served)):
    """Text continuation of one prompt or several (``n`` choices each), or fill in the middle with ``suffix``."""
    tm, limits = served.model(req.model, TextModel, "/v1/completions"), served.limits
    if req.suffix is not None and fim_token_ids(tm.tokenizer) is None:
        raise APIError(400, f"suffix: model {req.model!r} was not trained for fill-in-the-middle "
                       "(no FIM tokens in its tokenizer)", param="suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise APIError(400, "best_of is not supported (only best_of = n)", param="best_of")
    settings = settings_of(req, tm, req.max_tokens if req.max_tokens is not None else 16, limits)
    texts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
    if not texts or len(texts) * req.n > limits.max_n:
        raise APIError(400, f"prompt: {len(texts)} prompts with n = {req.n}: expected 1 to "
                       f"{limits.max_n // req.n} prompts (prompts x n at most {limits.max_n})", param="prompt")
    check_seed(req.seed, len(texts))
    if req.suffix is not None:  # fill in the middle: one prompt (the prefix) and the suffix
        if len(texts) != 1:
            raise APIError(400, "suffix: give one prompt (the text before the gap)", param="prompt")
        prompts = [await encode_infill(tm, texts[0], req.suffix, limits)]
        settings = dataclasses.replace(settings, code_stops=False)
    else:
        prompts = [await encode_prompt(tm, t, "prompt", limits) for t in texts]
    rid, ts, n = P.new_id("cmpl"), P.now(), req.n

    def make_response(out, finish, use):
        return {"id": rid, "object": "text_completion", "created": ts, "model": req.model,
                "choices": [{"index": c, "text": (texts[c // n] if req.echo else "") + t, "logprobs": None,
                             "finish_reason": finish[c]} for c, t in enumerate(out)],
                "usage": use}

    echoed = set()

    def make_chunk(event):
        if event is None:
            return []
        base = {"id": rid, "object": "text_completion", "created": ts, "model": req.model}
        if event[0] == "usage":
            return {**base, "choices": [], "usage": event[1]}
        c, piece, fin = event
        if req.echo and c not in echoed:
            echoed.add(c)
            piece = texts[c // n] + piece
        return {**base, "choices": [{"index": c, "text": piece, "logprobs": None, "finish_reason": fin}]}

    return await run_text(request, served, req.model, prompts, n, req.seed, settings, bool(req.stream),
                          make_chunk, make_response, include_usage(req))


@router.post("/v1/chat/completions")
async def chat_completions(req: P.ChatRequest, request: Request, served: Served = Depends(get_served)):
    """The assistant's next turn in a conversation (a model with a chat template)."""
    tm = served.model(req.model, TextModel, "/v1/chat/completions")
    if tm.chat is None:
        raise APIError(400, f"model {req.model!r} is not a chat model (its folder has no chat_template in "
                       "tokenizer_config.json); use /v1/completions", param="model")
    for name in ("tools", "tool_choice", "functions", "function_call"):
        if getattr(req, name):
            raise APIError(400, f"{name}: tool and function calling are not supported by this server", param=name)
    if req.response_format and req.response_format.get("type", "text") != "text":
        raise APIError(400, "response_format: only {\"type\": \"text\"} is supported (no JSON mode)",
                       param="response_format")
    text = tm.render_chat(req.messages)
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    settings = tm.turn_end(settings_of(req, tm, max_tokens, served.limits))
    check_seed(req.seed, 1)
    prompts = [await encode_prompt(tm, text, "messages", served.limits)]
    rid, ts = P.new_id("chatcmpl"), P.now()

    def make_response(out, finish, use):
        return {"id": rid, "object": "chat.completion", "created": ts, "model": req.model,
                "choices": [{"index": c, "message": {"role": "assistant", "content": t},
                             "logprobs": None, "finish_reason": finish[c]} for c, t in enumerate(out)],
                "usage": use}

    def make_chunk(event):
        base = {"id": rid, "object": "chat.completion.chunk", "created": ts, "model": req.model}
        if event is None:
            return [{**base, "choices": [{"index": c, "delta": {"role": "assistant", "content": ""},
                                          "logprobs": None, "finish_reason": None}]} for c in range(req.n)]
        if event[0] == "usage":
            return {**base, "choices": [], "usage": event[1]}
        c, piece, fin = event
        return {**base, "choices": [{"index": c, "delta": {"content": piece} if piece else {},
                                     "logprobs": None, "finish_reason": fin}]}

    return await run_text(request, served, req.model, prompts, req.n, req.seed, settings, bool(req.stream),
                          make_chunk, make_response, include_usage(req))


@router.post("/tokenize")
async def tokenize(req: P.TokenizeRequest, served: Served = Depends(get_served)):
    """The token ids of a prompt, or of chat messages rendered with the model's template."""
    tm = served.model(req.model, TextModel, "/tokenize")
    if (req.prompt is None) == (req.messages is None):
        raise APIError(400, "give either prompt or messages", param="prompt")
    if req.messages is not None and tm.chat is None:
        raise APIError(400, f"model {req.model!r} is not a chat model; tokenize a prompt", param="messages")
    text = req.prompt if req.prompt is not None else tm.render_chat(req.messages)
    if len(text) > served.limits.max_body_bytes:  # cannot come from a body within the limit, but be sure
        raise APIError(413, "prompt too long", code="body_too_large")
    ids = await run_in_threadpool(tm.tokenizer.encode, text, "prompt")
    if req.add_special_tokens:
        ids = [tm.tokenizer.bos_id] + ids
    return {"tokens": ids, "count": len(ids), "max_model_len": tm.model.context_length}


@router.post("/detokenize")
async def detokenize(req: P.DetokenizeRequest, served: Served = Depends(get_served)):
    """The text of token ids."""
    tm = served.model(req.model, TextModel, "/detokenize")
    vocab = tm.tokenizer.vocab_size
    bad = [t for t in req.tokens if not 0 <= t < vocab]
    if bad:
        raise APIError(400, f"tokens: id {bad[0]} is outside the vocabulary (0 to {vocab - 1})", param="tokens")
    return {"prompt": tm.tokenizer.decode(req.tokens)}
