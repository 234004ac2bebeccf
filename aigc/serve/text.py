"""The text routes: ``/v1/completions``, ``/v1/chat/completions``, ``/tokenize``, ``/detokenize``.

A generating request goes: its settings and prompt, checked (:mod:`aigc.serve.prompts`), then one
scheduler job decoding in the model's :class:`~aigc.generate.engine.BatchEngine` (:func:`run_text`;
with ``echo`` + ``logprobs`` it scores the prompt first), answered as one JSON body or streamed
as server-sent events. Choice ``c`` (prompt-major: prompt ``c // n``, sample ``c % n``) of a
request with ``seed`` s is seeded ``s + c``, the seed ``aigc sample --seed s`` gives its sample c.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Callable, Iterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from aigc.config import SampleConfig
from aigc.data.chat import check_messages
from aigc.data.fim import fim_token_ids
from aigc.evaluate.watermark import detect
from aigc.generate.engine import BatchEngine
from aigc.generate.logprobs import TokenLogprob
from aigc.generate.text import GenerationStep, Prompt, TextModel
from aigc.serve import protocol as P
from aigc.serve.errors import APIError
from aigc.serve.logprobs import chat_logprobs, check_top, completion_logprobs
from aigc.serve.poems import chat_poems
from aigc.serve.policy import OutputFilter
from aigc.serve.prompts import encode_infill, encode_prompt, settings_of, token_prompt
from aigc.serve.scheduler import Job
from aigc.serve.state import Served, check_seed, get_served, watch_disconnect

router = APIRouter()


# ------------------------------------------------------------ running a text job
def text_job(tm: TextModel, engine: BatchEngine, prompts: list[Prompt], n: int, seed: int | None,
             settings: SampleConfig, score: int | None = None, generate: bool = True) -> Callable[[], Iterator]:
    """The scheduler job of a text request: for each prompt ``k`` in turn, ``(k, its tokens scored)``
    first when ``score`` (alternatives per token) is set, then ``(k, step)`` for each decoding step
    (unless not ``generate``), decoded in ``engine``; sample i of prompt k is seeded ``seed + k n + i``."""
    def steps():
        for k, prompt in enumerate(prompts):
            if score is not None:
                yield k, tm.score(prompt, score)
            if generate:
                for step in tm.steps(prompt, settings, n, None if seed is None else seed + k * n, batch=engine):
                    yield k, step
    return steps


class Choices:
    """The choices of one text request as they grow (``prompts x n``, prompt-major); records the
    time to first token and the tokens generated in the app's metrics.

    Attributes:
        texts, finish, tokens: per choice, its text, finish reason and tokens generated so far.
        scored: per choice, its generated tokens' log-probabilities (when asked).
        prompt_scores: per prompt index, its tokens' log-probabilities (echo + logprobs).
    """

    def __init__(self, served: Served, name: str, job: Job, prompts: int, n: int, generate: bool = True,
                 contexts: list[str] | None = None):
        self.metrics, self.name, self.job, self.n, self.generate = served.metrics, name, job, n, generate
        total = prompts * n
        policy = served.policy
        self.filter = None
        if policy is not None and policy.checks_outputs:  # outputs checked with the end of their prompt
            self.filter = OutputFilter(policy, [(contexts or [""] * prompts)[c // n] for c in range(total)])
        self.texts: list[str] = [""] * total
        self.finish: list[str | None] = [None] * total
        self.tokens = [0] * total
        self.scored: list[list[TokenLogprob]] = [[] for _ in range(total)]
        self.prompt_scores: dict[int, list[TokenLogprob]] = {}
        self.first = True

    def absorb(self, k: int, step: GenerationStep | list[TokenLogprob]) -> list[tuple[int, str, str | None, list[TokenLogprob]]]:
        """Merge one item of prompt ``k`` (a step, or the prompt's scores); return the (choice, new
        text, finish reason, newly scored tokens) that changed."""
        if isinstance(step, list):  # the prompt's scores: every choice of the prompt changes
            self.prompt_scores[k] = step
            fin = None if self.generate else "length"  # max_tokens 0: the prompt alone
            for c in range(k * self.n, (k + 1) * self.n):
                self.finish[c] = fin
            return [(c, "", fin, step) for c in range(k * self.n, (k + 1) * self.n)]
        changed = []
        for i in range(self.n):
            c = k * self.n + i
            if self.finish[c]:
                continue
            piece, fin = step.pieces[i], step.finish[i]
            new = [step.logprobs[i]] if step.logprobs is not None and step.logprobs[i] is not None else []
            if piece and self.first:
                self.first = False
                self.metrics.ttft.labels(self.name).observe(time.perf_counter() - self.job.submitted)
            self.tokens[c] = step.tokens[i]
            if self.filter is not None:
                piece, refusal = self.filter.feed(c, piece, bool(fin))
                if refusal is not None:
                    fin, new = "content_filter", []
                    self.metrics.policy_refusals.labels("output", refusal.reason).inc()
            self.scored[c] += new
            self.texts[c] += piece
            if fin:
                self.finish[c] = fin
                self.metrics.generation_tokens.labels(self.name).inc(step.tokens[i])
            if piece or fin or new:
                changed.append((c, piece, fin, new))
        if "content_filter" in self.finish and all(self.finish):
            self.job.filtered = True
            self.job.cancel()  # every choice is done; the filtered ones need no more tokens
        return changed


async def run_text(request: Request, served: Served, name: str, prompts: list[Prompt], n: int, seed: int | None,
                   settings: SampleConfig, stream: bool, make_chunk, make_response, include_usage: bool,
                   score: int | None = None, generate: bool = True, contexts: list[str] | None = None):
    """Submit a text job for model ``name``; return an SSE StreamingResponse or the whole JSON response.

    ``make_response(choices, usage)`` shapes the JSON body from a :class:`Choices`; ``make_chunk(event)``
    an SSE chunk: None for the opening chunks (a list), ``(choice, piece, finish, scored tokens)`` or
    ``("usage", usage)``. ``score`` and ``generate``: see :func:`text_job`. ``contexts``: per prompt, the
    text an output continues (checked with it by the content policy).

    Raises:
        APIError: 429 when the queue is full.
        AigcError: the model refused the job (a non-streaming request; a stream reports it as an event).
    """
    job = served.submit(text_job(served.models[name], served.engines[name], prompts, n, seed, settings,
                                 score, generate))
    prompt_tokens = sum(len(p.ids) for p in prompts)
    served.metrics.prompt_tokens.labels(name).inc(prompt_tokens)
    choices = Choices(served, name, job, len(prompts), n, generate, contexts)
    if not stream:
        watcher = asyncio.create_task(watch_disconnect(request, job))
        try:
            async for k, step in job.results():
                choices.absorb(k, step)
        finally:
            watcher.cancel()
        body = await run_in_threadpool(lambda: json.dumps(make_response(choices, P.usage(prompt_tokens,
                                                                                       sum(choices.tokens))),
                                                          ensure_ascii=False))  # a large body off the event loop
        return Response(body, media_type="application/json")

    async def events():
        watcher = asyncio.create_task(watch_disconnect(request, job))
        try:
            for chunk in make_chunk(None):  # opening chunks (chat: the assistant role)
                yield P.encode_sse(chunk)
            async for k, step in job.results():
                for event in choices.absorb(k, step):
                    yield P.encode_sse(make_chunk(event))
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
    """Text continuation of one prompt or several (``n`` choices each), or fill in the middle with
    ``suffix``; ``logprobs`` k scores the tokens (with ``echo``, the prompt's too; ``max_tokens`` 0
    with ``echo`` scores the prompt alone, as lm-evaluation-harness asks)."""
    tm, limits = served.model(req.model, TextModel, "/v1/completions"), served.limits
    if req.suffix is not None and fim_token_ids(tm.tokenizer) is None:
        raise APIError(400, f"suffix: model {req.model!r} was not trained for fill-in-the-middle "
                       "(no FIM tokens in its tokenizer)", param="suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise APIError(400, "best_of is not supported (only best_of = n)", param="best_of")
    check_top(req.logprobs, "logprobs")
    generate = req.max_tokens != 0
    served.check_logprobs(req.logprobs is not None and generate)
    if not generate and not (req.echo and req.logprobs is not None and req.suffix is None):
        raise APIError(400, "max_tokens = 0: only with echo and logprobs, without suffix (to score the prompt)",
                       param="max_tokens")
    max_tokens = (req.max_tokens if req.max_tokens is not None else 16) if generate else 1
    settings = await run_in_threadpool(settings_of, req, tm, max_tokens, limits, req.logprobs is not None,
                                       req.logprobs)  # off the event loop: a schema's grammar compiles here
    given = [req.prompt] if isinstance(req.prompt, str) or (req.prompt and isinstance(req.prompt[0], int)) \
        else req.prompt
    if not given or len(given) * req.n > limits.max_n:
        raise APIError(400, f"prompt: {len(given)} prompts with n = {req.n}: expected 1 to "
                       f"{limits.max_n // req.n} prompts (prompts x n at most {limits.max_n})", param="prompt")
    check_seed(req.seed, len(given) * req.n)
    served.check_prompt([t for t in given if isinstance(t, str)] + ([req.suffix] if req.suffix else []), "prompt")
    if req.suffix is not None:  # fill in the middle: one prompt (the prefix) and the suffix
        if len(given) != 1 or not isinstance(given[0], str):
            raise APIError(400, "suffix: give one prompt (the text before the gap)", param="prompt")
        prompts = [await encode_infill(tm, given[0], req.suffix, limits)]
        settings = dataclasses.replace(settings, code_stops=False)
    else:
        prompts = [await encode_prompt(tm, t, "prompt", limits) if isinstance(t, str) else token_prompt(tm, t, limits)
                   for t in given]
    texts = [t if isinstance(t, str) else tm.tokenizer.decode(t) for t in given]
    served.check_prompt([t for t, g in zip(texts, given) if not isinstance(g, str)], "prompt")  # token ids
    echo_scores = req.logprobs if req.echo and req.logprobs is not None and req.suffix is None else None
    rid, ts, n = P.new_id("cmpl"), P.now(), req.n

    def logprobs_of(choices: Choices, c: int):
        if req.logprobs is None:
            return None
        prompt = choices.prompt_scores.get(c // n, [])
        return completion_logprobs(tm, prompt + choices.scored[c])

    def make_response(choices: Choices, use):
        return {"id": rid, "object": "text_completion", "created": ts, "model": req.model,
                "choices": [{"index": c, "text": (texts[c // n] if req.echo else "") + t,
                             "logprobs": logprobs_of(choices, c), "finish_reason": choices.finish[c]}
                            for c, t in enumerate(choices.texts)],
                "usage": use}

    echoed, offsets = set(), {}

    def make_chunk(event):
        if event is None:
            return []
        base = {"id": rid, "object": "text_completion", "created": ts, "model": req.model}
        if event[0] == "usage":
            return {**base, "choices": [], "usage": event[1]}
        c, piece, fin, scored = event
        if req.echo and c not in echoed:
            echoed.add(c)
            piece = texts[c // n] + piece  # with logprobs, this first event carries the prompt's scores
        logprobs = None
        if req.logprobs is not None:
            logprobs = completion_logprobs(tm, scored, offsets.get(c, 0))
            offsets[c] = offsets.get(c, 0) + len(piece)  # the characters this chunk added
        return {**base, "choices": [{"index": c, "text": piece, "logprobs": logprobs, "finish_reason": fin}]}

    return await run_text(request, served, req.model, prompts, n, req.seed, settings, bool(req.stream),
                          make_chunk, make_response, include_usage(req), echo_scores, generate, texts)


@router.post("/v1/chat/completions")
async def chat_completions(req: P.ChatRequest, request: Request, served: Served = Depends(get_served)):
    """The assistant's next turn in a conversation (a model with a chat template); ``logprobs`` with
    ``top_logprobs`` alternatives scores its tokens; ``response_format`` json_object or json_schema
    constrains it to JSON."""
    tm = served.model(req.model, TextModel, "/v1/chat/completions")
    if tm.chat is None:
        raise APIError(400, f"model {req.model!r} is not a chat model (its folder has no chat_template in "
                       "tokenizer_config.json); use /v1/completions", param="model")
    for name in ("tools", "tool_choice", "functions", "function_call"):
        if getattr(req, name):
            raise APIError(400, f"{name}: tool and function calling are not supported by this server", param=name)
    check_top(req.top_logprobs, "top_logprobs")
    if req.top_logprobs is not None and not req.logprobs:
        raise APIError(400, "top_logprobs: only with logprobs = true", param="top_logprobs")
    messages = check_messages(req.messages)
    served.check_prompt([m["content"] for m in messages], "messages")
    served.check_logprobs(bool(req.logprobs))
    if messages[-1]["role"] == "user":  # 写一首关于秋天的七言绝句: a poem kept to its form, when the model writes poems
        answer = await chat_poems(request, served, req, tm, messages[-1]["content"])
        if answer is not None:
            return answer
    text = tm.render_chat(req.messages)
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    settings = tm.turn_end(await run_in_threadpool(settings_of, req, tm, max_tokens, served.limits, bool(req.logprobs),
                                                   req.top_logprobs))  # off the event loop: a grammar compiles here
    check_seed(req.seed, req.n)
    prompts = [await encode_prompt(tm, text, "messages", served.limits)]
    rid, ts = P.new_id("chatcmpl"), P.now()

    def make_response(choices: Choices, use):
        return {"id": rid, "object": "chat.completion", "created": ts, "model": req.model,
                "choices": [{"index": c, "message": {"role": "assistant", "content": t},
                             "logprobs": chat_logprobs(tm, choices.scored[c]) if req.logprobs else None,
                             "finish_reason": choices.finish[c]} for c, t in enumerate(choices.texts)],
                "usage": use}

    def make_chunk(event):
        base = {"id": rid, "object": "chat.completion.chunk", "created": ts, "model": req.model}
        if event is None:
            return [{**base, "choices": [{"index": c, "delta": {"role": "assistant", "content": ""},
                                          "logprobs": None, "finish_reason": None}]} for c in range(req.n)]
        if event[0] == "usage":
            return {**base, "choices": [], "usage": event[1]}
        c, piece, fin, scored = event
        return {**base, "choices": [{"index": c, "delta": {"content": piece} if piece else {},
                                     "logprobs": chat_logprobs(tm, scored) if req.logprobs else None,
                                     "finish_reason": fin}]}

    return await run_text(request, served, req.model, prompts, req.n, req.seed, settings, bool(req.stream),
                          make_chunk, make_response, include_usage(req), contexts=[messages[-1]["content"]])


@router.post("/v1/detect")
async def detect_watermark(req: P.DetectRequest, served: Served = Depends(get_served)):
    """Test ``text`` (continuing ``prompt``, which is not scored) for the watermark this server puts
    on model ``model``'s output: the z-score, p-value and verdict of :mod:`aigc.evaluate.watermark`."""
    tm = served.model(req.model, TextModel, "/v1/detect")
    if tm.watermark is None:
        raise APIError(400, f"model {req.model!r} is served without a watermark (aigc serve --watermark KEY)",
                       param="model")
    if not req.text.strip():
        raise APIError(400, "text: empty; nothing to test", param="text")
    limit = served.limits.max_prompt_tokens
    if len(req.prompt) + len(req.text) > limit * tm.longest_token:
        raise APIError(400, f"text is too long (at most {limit} tokens)", param="text")
    prompt_ids = await run_in_threadpool(tm.tokenizer.encode, req.prompt, "prompt") if req.prompt else []
    ids = await run_in_threadpool(tm.tokenizer.encode, req.prompt + req.text, "text")
    if len(ids) > limit:
        raise APIError(400, f"text has {len(ids)} tokens: at most {limit}", param="text")
    d = await run_in_threadpool(detect, tm.watermark, [tm.tokenizer.bos_id] + ids, 1 + len(prompt_ids))
    return {"object": "watermark.detection", "model": req.model, **d.__dict__}


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
