"""The HTTP server: OpenAI-compatible endpoints, a Prometheus ``/metrics`` and the web page.

Endpoints::

    GET  /                          the web page (static HTML/CSS/JS, works offline)
    GET  /health                    {"status": "ok", "models": [...]}
    GET  /metrics                   Prometheus text format
    GET  /v1/models[/{id}]          the loaded models (with an "aigc" field: kind, chat, classes, sizes)
    POST /v1/completions            text continuation; SSE with "stream": true
    POST /v1/chat/completions       chat models (a chat_template in tokenizer_config.json)
    POST /v1/images/generations     image models; "prompt" names the class of a conditional model
    POST /tokenize, /detokenize     token ids of a prompt (or messages) and back

Streaming responses are server-sent events: ``data: {chunk}`` lines in OpenAI's
chunk shape, ending with ``data: [DONE]``. Errors use OpenAI's error JSON with
the matching status: 400 bad request, 401 wrong API key, 404 unknown model or
route, 413 body too large, 429 server busy. Generation runs in one worker thread
(:mod:`aigc.serve.scheduler`) shared round-robin by all requests; the text requests
of one model decode together in its :class:`~aigc.generate.engine.BatchEngine`
(continuous batching: one forward pass per step for all of them). A request whose
client disconnects is cancelled and leaves the batch.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import io
import json
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, generate_latest)
from starlette.exceptions import HTTPException as StarletteHTTPException

from aigc.api import ImageModel, TextModel
from aigc.data.fim import fim_token_ids
from aigc.errors import AigcError
from aigc.generate.engine import BatchEngine
from aigc.serve import protocol as P
from aigc.serve.scheduler import Busy, Scheduler

STATIC = Path(__file__).parent / "static"
ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/images/generations", "/v1/models",
             "/tokenize", "/detokenize", "/health", "/metrics", "/")
MAX_SCALE = 8  # image sizes offered: the native size times 1..MAX_SCALE (nearest-neighbour enlargement)


@dataclass
class ServeLimits:
    """What one request may ask for; anything beyond is answered with a 4xx.

    Attributes:
        max_tokens: new tokens per sample.
        max_prompt_tokens: prompt tokens (also capped by a GPT's context minus one).
        max_n: samples per text request (choices = prompts x n).
        max_images: images per image request.
        max_body_bytes: request body size (413 beyond).
        max_active: requests generating at once; max_queued: requests waiting (429 beyond).
        max_batch: rows (samples) one model decodes together (continuous batching); a request
            that does not fit waits for rows to free up.
    """

    max_tokens: int = 1024
    max_prompt_tokens: int = 4096
    max_n: int = 16
    max_images: int = 64
    max_body_bytes: int = 1_000_000
    max_active: int = 64
    max_queued: int = 256
    max_batch: int = 64

    def validate(self) -> None:
        for name, value in vars(self).items():
            if not (isinstance(value, int) and value >= (0 if name == "max_queued" else 1)):
                raise AigcError(f"--{name.replace('_', '-')} = {value}: expected a positive integer")
        if self.max_batch < self.max_n:
            raise AigcError(f"--max-batch = {self.max_batch} is smaller than --max-n = {self.max_n}: a request "
                            "of n samples must fit in one batch")


class APIError(Exception):
    """An error answered in OpenAI's shape with an HTTP status."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse(P.error_body(self.message, self.type, self.param, self.code), self.status,
                            headers=self.headers)


class Metrics:
    """Prometheus metrics of one app (its own registry, so several apps can live in one process)."""

    def __init__(self, scheduler: Scheduler):
        disable_created_metrics()  # no *_created series: one line per counter is what dashboards read
        self.registry = r = CollectorRegistry()
        self.requests = Counter("aigc_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.latency = Histogram("aigc_request_latency_seconds", "Time from request to last byte", ["endpoint"],
                                 registry=r, buckets=(.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300))
        self.ttft = Histogram("aigc_time_to_first_token_seconds", "Time from request to first generated text",
                              ["model"], registry=r, buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.prompt_tokens = Counter("aigc_prompt_tokens", "Prompt tokens processed", ["model"], registry=r)
        self.generation_tokens = Counter("aigc_generation_tokens", "Tokens generated", ["model"], registry=r)
        self.images = Counter("aigc_images_generated", "Images generated", ["model"], registry=r)
        self.cancelled = Counter("aigc_requests_cancelled", "Requests stopped because the client disconnected",
                                 registry=r)
        self.waited = Counter("aigc_requests_waited_for_batch_rows", "Requests that waited for free batch rows",
                              registry=r)
        self.rejected = Counter("aigc_requests_rejected_busy", "Requests refused with 429 (queue full)", registry=r)
        Gauge("aigc_requests_in_flight", "Requests generating now", registry=r).set_function(
            lambda: scheduler.in_flight)
        Gauge("aigc_queue_depth", "Requests waiting for a generation slot", registry=r).set_function(
            lambda: scheduler.queue_depth)


class Guard:
    """ASGI middleware: refuses bodies over ``max_body_bytes`` (413) and counts every request once.

    Each request is recorded in ``aigc_requests_total`` with its status and in the latency
    histogram; a response the client abandoned before its end (a closed stream) is recorded
    with status 499 (nginx's "client closed request"), an unhandled error with 500.
    """

    def __init__(self, app, max_body_bytes: int, metrics: Metrics):
        self.app, self.max_body, self.metrics = app, max_body_bytes, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint = next((e for e in ENDPOINTS if path == e or (e == "/v1/models" and path.startswith(e))), "other")
        start = time.perf_counter()
        state = {"status": None, "done": False}

        def record(status: int) -> None:
            if not state["done"]:
                state["done"] = True
                self.metrics.requests.labels(endpoint, str(status)).inc()
                self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)

        async def counting_send(message):
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                record(state["status"])

        try:
            await self._handle(scope, receive, counting_send)
        except BaseException:
            record(500 if state["status"] is None else 499)
            raise
        finally:
            record(499)  # the response never finished: the client went away

    async def _handle(self, scope, receive, send):
        if scope["method"] in ("POST", "PUT", "PATCH"):
            headers = dict(scope["headers"])
            declared = headers.get(b"content-length")
            too_big = APIError(413, f"request body over the server's limit of {self.max_body} bytes",
                               code="body_too_large")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body:
                return await too_big.response()(scope, receive, send)
            body = bytearray()
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client left before sending its body
                body += message.get("body", b"")
                if len(body) > self.max_body:
                    return await too_big.response()(scope, receive, send)
                if not message.get("more_body", False):
                    break
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": bytes(body), "more_body": False}
                return await receive()  # then http.disconnect, when it comes

            return await self.app(scope, replay, send)
        return await self.app(scope, receive, send)


def _encode_sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _image_png(image, scale: int, info: dict) -> str:
    """One image ``(C, S, S)`` in [-1, 1] -> base64 PNG (enlarged ``scale`` times, provenance chunks)."""
    from PIL import Image

    from aigc.data.images import to_uint8
    from aigc.generate.images import provenance

    x = to_uint8(image[None])[0].numpy()  # (C, S, S) uint8
    img = Image.fromarray(x[0], "L") if x.shape[0] == 1 else Image.fromarray(x.transpose(1, 2, 0), "RGB")
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=provenance(info))
    return base64.b64encode(buf.getvalue()).decode("ascii")


def create_app(models: dict[str, TextModel | ImageModel], api_key: str | None = None,
               limits: ServeLimits | None = None) -> FastAPI:
    """The FastAPI app serving ``models`` (name -> loaded model).

    Args:
        api_key: when set, ``/v1/*``, ``/tokenize`` and ``/detokenize`` need ``Authorization: Bearer KEY``.
        limits: request limits (defaults: :class:`ServeLimits`).

    Raises:
        AigcError: no models, or limits out of range.
    """
    if not models:
        raise AigcError("no models to serve")
    limits = limits or ServeLimits()
    limits.validate()
    for m in models.values():
        if isinstance(m, TextModel):
            m.batch = BatchEngine(m.model, limits.max_batch)
    scheduler = Scheduler(limits.max_active, limits.max_queued,
                          after_round=[m.batch.step for m in models.values() if isinstance(m, TextModel)])
    metrics = Metrics(scheduler)
    scheduler.on_cancel = lambda job: metrics.cancelled.inc()
    scheduler.on_defer = lambda job: metrics.waited.inc()
    created = {name: int(m.folder.stat().st_mtime) for name, m in models.items()}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        scheduler.close()

    app = FastAPI(title="aigc", docs_url="/docs", redoc_url=None, lifespan=lifespan)
    app.state.scheduler, app.state.models, app.state.metrics = scheduler, models, metrics
    app.add_middleware(Guard, max_body_bytes=limits.max_body_bytes, metrics=metrics)

    # ------------------------------------------------------------ errors
    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return exc.response()

    @app.exception_handler(AigcError)
    async def _aigc_error(request, exc: AigcError):
        return APIError(400, str(exc)).response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request, exc: RequestValidationError):
        err = exc.errors()[0]
        if err.get("type") == "json_invalid":
            return APIError(400, f"request body is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})"
                            ).response()
        parts = [str(x) for x in err.get("loc", ()) if x != "body"]
        # pydantic appends the union member it tried ("prompt.str"): keep the field and list indices
        loc = ".".join(x for x in parts if x.isdigit() or x == parts[0]) if parts else ""
        if not loc:
            return APIError(400, "request body must be a JSON object (with Content-Type: application/json)"
                            ).response()
        return APIError(400, f"{loc or 'body'}: {err.get('msg', 'invalid')}", param=loc or None).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        message = {404: f"no route {request.url.path}", 405: f"method {request.method} not allowed on "
                   f"{request.url.path}"}.get(exc.status_code, str(exc.detail))
        return APIError(exc.status_code, message, code="not_found" if exc.status_code == 404 else None,
                        headers=getattr(exc, "headers", None)).response()

    @app.exception_handler(Exception)
    async def _internal(request, exc: Exception):
        return APIError(500, f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                        "server_error").response()

    # ------------------------------------------------------------ helpers
    async def require_key(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "invalid or missing API key: send the header 'Authorization: Bearer KEY'",
                           code="invalid_api_key")

    def get_model(name: str | None, kind: type, what: str):
        if name is None:
            of_kind = [n for n, m in models.items() if isinstance(m, kind)]
            if len(of_kind) == 1:
                name = of_kind[0]
            else:
                raise APIError(400, f"model: required (one of: {', '.join(of_kind) or 'none of that kind'})",
                               param="model")
        if name not in models:
            raise APIError(404, f"model {name!r} not found (served: {', '.join(models)})", param="model",
                           code="model_not_found")
        m = models[name]
        if not isinstance(m, kind):
            other = "/v1/images/generations" if isinstance(m, ImageModel) else "/v1/completions"
            raise APIError(400, f"model {name!r} is {'an image' if isinstance(m, ImageModel) else 'a text'} "
                           f"model; {what} needs {'a text' if kind is TextModel else 'an image'} model (use {other})",
                           param="model")
        return m

    longest_token = {name: max(map(len, m.token_texts)) or 1 for name, m in models.items()
                     if isinstance(m, TextModel)}

    async def encode_prompt(tm: TextModel, text: str, param: str) -> list[int]:
        limit = limits.max_prompt_tokens
        if tm.model.context_length is not None:
            limit = min(limit, tm.model.context_length - 1)
        too_long = APIError(400, f"{param} is too long: this server accepts at most {limit} tokens for this model "
                            "(start-of-document token included)", param=param, code="context_length_exceeded")
        name = next(n for n, m in models.items() if m is tm)
        if len(text) > limit * longest_token[name]:  # more tokens than the limit, whatever the text
            raise too_long
        ids = [tm.tokenizer.bos_id] + await run_in_threadpool(tm.tokenizer.encode, text, param)
        if len(ids) > limit:
            raise APIError(400, f"{param} has {len(ids)} tokens: this server accepts at most {limit} tokens for this "
                           "model (start-of-document token included)", param=param, code="context_length_exceeded")
        return ids

    def check_seed(seed: int | None, count: int) -> None:
        if seed is not None and not 0 <= seed <= 2**63 - count:
            raise APIError(400, f"seed = {seed}: expected an integer from 0 to {2**63 - count}", param="seed")

    def settings_of(req: P.SamplingFields, tm: TextModel, max_tokens: int | None) -> dict:
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
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(req, name) is None:
                setattr(req, name, 0.0)
            if not -2.0 <= getattr(req, name) <= 2.0:
                raise APIError(400, f"{name} = {getattr(req, name)}: expected -2 to 2", param=name)
        stop = [req.stop] if isinstance(req.stop, str) else req.stop
        if stop is not None and (len(stop) > 16 or not all(stop)):
            raise APIError(400, "stop: expected up to 16 non-empty strings", param="stop")
        settings = {"max_new_tokens": max_tokens, "temperature": req.temperature, "top_p": req.top_p,
                    "top_k": req.top_k, "repetition_penalty": req.repetition_penalty, "stop": stop}
        if req.ignore_eos:
            settings["stop_at_document_end"] = False
        try:
            tm._settings(dict(settings))
        except AigcError as e:  # a value out of range, named first in the message
            name = str(e).split(" ", 1)[0]
            raise APIError(400, str(e), param=name if name in settings else None) from None
        settings.update(presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty)
        return settings

    def text_job(tm: TextModel, prompts: list[list[int]], n: int, seed: int | None, settings: dict):
        def steps():
            for k, ids in enumerate(prompts):
                for step in tm.steps(ids, n, None if seed is None else seed + k, batched=True, **dict(settings)):
                    yield k, step
        return steps

    def submit(make_iter):
        try:
            return scheduler.submit(make_iter)
        except Busy as e:
            metrics.rejected.inc()
            raise APIError(429, str(e), "rate_limit_error", code="server_busy", headers={"Retry-After": "1"}) \
                from None

    async def watch_disconnect(request: Request, job) -> None:
        while not job.finished:
            if await request.is_disconnected():
                job.cancel()
                return
            await asyncio.sleep(0.2)

    async def run_text(request: Request, name: str, tm: TextModel, prompts: list[list[int]], n: int,
                       seed: int | None, settings: dict, stream: bool, make_chunk, make_response,
                       include_usage: bool):
        """Submit a text job; return an SSE StreamingResponse or the whole JSON response."""
        job = submit(text_job(tm, prompts, n, seed, settings))
        prompt_tokens = sum(map(len, prompts))
        metrics.prompt_tokens.labels(name).inc(prompt_tokens)
        total = len(prompts) * n
        texts, finish, tokens = [""] * total, [None] * total, [0] * total
        first = [True]

        def absorb(k, step) -> list[tuple[int, str, str | None]]:
            """Merge one step; return the (choice, new text, finish reason) that changed."""
            changed = []
            for i in range(n):
                c = k * n + i
                if finish[c]:
                    continue
                piece, fin = step.pieces[i], step.finish[i]
                if piece and first[0]:
                    first[0] = False
                    metrics.ttft.labels(name).observe(time.perf_counter() - job.submitted)
                texts[c] += piece
                tokens[c] = step.tokens[i]
                if fin:
                    finish[c] = fin
                    metrics.generation_tokens.labels(name).inc(step.tokens[i])
                if piece or fin:
                    changed.append((c, piece, fin))
            return changed

        if not stream:
            watcher = asyncio.create_task(watch_disconnect(request, job))
            try:
                async for k, step in job.results():
                    absorb(k, step)
            finally:
                watcher.cancel()
            return make_response(texts, finish, P.usage(prompt_tokens, sum(tokens)))

        async def events():
            try:
                for chunk in make_chunk(None):  # opening chunks (chat: the assistant role)
                    yield _encode_sse(chunk)
                async for k, step in job.results():
                    for c, piece, fin in absorb(k, step):
                        yield _encode_sse(make_chunk((c, piece, fin)))
                if include_usage:
                    yield _encode_sse(make_chunk(("usage", P.usage(prompt_tokens, sum(tokens)))))
            except (AigcError, ValueError) as e:
                yield _encode_sse(P.error_body(str(e)))
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def describe(name: str) -> dict:
        m = models[name]
        if isinstance(m, TextModel):
            extra = {"kind": "text", "family": m.family, "chat": m.chat is not None,
                     "context_length": m.model.context_length,
                     "defaults": {"temperature": m.defaults.temperature, "top_k": m.defaults.top_k,
                                  "top_p": m.defaults.top_p, "max_tokens": m.defaults.max_new_tokens}}
        else:
            s = m.model.config.image_size
            extra = {"kind": "image", "family": m.family, "classes": m.classes,
                     "sizes": [f"{k * s}x{k * s}" for k in range(1, MAX_SCALE + 1)]}
        return {"id": name, "object": "model", "created": created[name], "owned_by": "aigc", "aigc": extra}

    # ------------------------------------------------------------ open routes
    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health():
        return {"status": "ok", "models": list(models), "in_flight": scheduler.in_flight,
                "queued": scheduler.queue_depth}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # ------------------------------------------------------------ API routes (key required when set)
    keyed = [Depends(require_key)]

    @app.get("/v1/models", dependencies=keyed)
    async def list_models():
        return {"object": "list", "data": [describe(n) for n in models]}

    @app.get("/v1/models/{name:path}", dependencies=keyed)
    async def get_model_info(name: str):
        if name not in models:
            raise APIError(404, f"model {name!r} not found (served: {', '.join(models)})", code="model_not_found")
        return describe(name)

    @app.post("/v1/completions", dependencies=keyed)
    async def completions(req: P.CompletionRequest, request: Request):
        tm = get_model(req.model, TextModel, "/v1/completions")
        if req.suffix is not None and fim_token_ids(tm.tokenizer) is None:
            raise APIError(400, f"suffix: model {req.model!r} was not trained for fill-in-the-middle "
                           "(no FIM tokens in its tokenizer)", param="suffix")
        if req.best_of is not None and req.best_of != req.n:
            raise APIError(400, "best_of is not supported (only best_of = n)", param="best_of")
        settings = settings_of(req, tm, req.max_tokens if req.max_tokens is not None else 16)
        texts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not texts or len(texts) * req.n > limits.max_n:
            raise APIError(400, f"prompt: {len(texts)} prompts with n = {req.n}: expected 1 to "
                           f"{limits.max_n // req.n} prompts (prompts x n at most {limits.max_n})", param="prompt")
        check_seed(req.seed, len(texts))
        if req.suffix is not None:  # fill in the middle: one prompt (the prefix) and the suffix
            if len(texts) != 1:
                raise APIError(400, "suffix: give one prompt (the text before the gap)", param="prompt")
            if len(texts[0]) + len(req.suffix) > limits.max_prompt_tokens * longest_token[req.model]:
                raise APIError(400, "prompt + suffix too long", param="suffix", code="context_length_exceeded")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # cropped to the context, as the CLI does
                prompts = [await run_in_threadpool(tm.infill_ids, texts[0], req.suffix)]
            settings["code_stops"] = False
        else:
            prompts = [await encode_prompt(tm, t, "prompt") for t in texts]
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

        return await run_text(request, req.model, tm, prompts, n, req.seed, settings, bool(req.stream), make_chunk,
                              make_response, bool((req.stream_options or {}).get("include_usage")))

    @app.post("/v1/chat/completions", dependencies=keyed)
    async def chat_completions(req: P.ChatRequest, request: Request):
        tm = get_model(req.model, TextModel, "/v1/chat/completions")
        if tm.chat is None:
            raise APIError(400, f"model {req.model!r} is not a chat model (its folder has no chat_template in "
                           "tokenizer_config.json); use /v1/completions", param="model")
        for name in ("tools", "tool_choice", "functions", "function_call"):
            if getattr(req, name):
                raise APIError(400, f"{name}: tool and function calling are not supported by this server", param=name)
        if req.response_format and req.response_format.get("type", "text") != "text":
            raise APIError(400, "response_format: only {\"type\": \"text\"} is supported (no JSON mode)",
                           param="response_format")
        text, ends = tm.chat_prompt(req.messages)
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        settings = settings_of(req, tm, max_tokens)
        settings["stop"] = (settings["stop"] or []) + ends["stop"] or None
        settings["stop_ids"] = ends["stop_ids"]
        check_seed(req.seed, 1)
        prompts = [await encode_prompt(tm, text, "messages")]
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

        return await run_text(request, req.model, tm, prompts, req.n, req.seed, settings, bool(req.stream),
                              make_chunk, make_response, bool((req.stream_options or {}).get("include_usage")))

    @app.post("/v1/images/generations", dependencies=keyed)
    async def images(req: P.ImageRequest, request: Request):
        im = get_model(req.model, ImageModel, "/v1/images/generations")
        name = req.model or next(n for n, m in models.items() if m is im)
        req.n = 1 if req.n is None else req.n
        req.response_format = req.response_format or "b64_json"
        check_seed(req.seed, 1)
        if req.response_format != "b64_json":
            raise APIError(400, f"response_format = {req.response_format!r}: only 'b64_json' is supported "
                           "(this server keeps no image files to link to)", param="response_format")
        if not 1 <= req.n <= limits.max_images:
            raise APIError(400, f"n = {req.n}: expected 1 to {limits.max_images} images", param="n")
        native = im.model.config.image_size
        scale = 1
        if req.size is not None:
            allowed = [f"{k * native}x{k * native}" for k in range(1, MAX_SCALE + 1)]
            if req.size not in allowed:
                raise APIError(400, f"size = {req.size!r}: this model makes {native}x{native} images; sizes "
                               f"offered: {', '.join(allowed)} (larger ones are nearest-neighbour enlargements)",
                               param="size")
            scale = allowed.index(req.size) + 1
        label = class_of_prompt(im, req.prompt)
        seed = req.seed

        def make():
            images_ = im.generate(req.n, label, seed)  # (n, C, S, S) in [-1, 1]
            classes = im.classes
            names = [classes[label] if label is not None else (classes[i % len(classes)] if classes else "")
                     for i in range(req.n)]
            out = []
            for i in range(req.n):
                info = {"model": name, "seed": seed, "index": i, "class": names[i] or None}
                out.append({"b64_json": _image_png(images_[i], scale, info), "revised_prompt": names[i]})
            yield out

        job = submit(make)
        watcher = asyncio.create_task(watch_disconnect(request, job))
        data = []
        try:
            async for out in job.results():
                data = out
        finally:
            watcher.cancel()
        metrics.images.labels(name).inc(len(data))
        return {"created": P.now(), "data": data}

    @app.post("/tokenize", dependencies=keyed)
    async def tokenize(req: P.TokenizeRequest):
        tm = get_model(req.model, TextModel, "/tokenize")
        if (req.prompt is None) == (req.messages is None):
            raise APIError(400, "give either prompt or messages", param="prompt")
        if req.messages is not None and tm.chat is None:
            raise APIError(400, f"model {req.model!r} is not a chat model; tokenize a prompt", param="messages")
        text = req.prompt if req.prompt is not None else tm.chat_prompt(req.messages)[0]
        if len(text) > limits.max_body_bytes:  # cannot come from a body within the limit, but be sure
            raise APIError(413, "prompt too long", code="body_too_large")
        ids = await run_in_threadpool(tm.tokenizer.encode, text, "prompt")
        if req.add_special_tokens:
            ids = [tm.tokenizer.bos_id] + ids
        return {"tokens": ids, "count": len(ids), "max_model_len": tm.model.context_length}

    @app.post("/detokenize", dependencies=keyed)
    async def detokenize(req: P.DetokenizeRequest):
        tm = get_model(req.model, TextModel, "/detokenize")
        vocab = tm.tokenizer.vocab_size
        bad = [t for t in req.tokens if not 0 <= t < vocab]
        if bad:
            raise APIError(400, f"tokens: id {bad[0]} is outside the vocabulary (0 to {vocab - 1})", param="tokens")
        return {"prompt": tm.tokenizer.decode(req.tokens)}

    return app


def class_of_prompt(im: ImageModel, prompt: str) -> int | None:
    """The class a prompt asks for: a class name or index, or a prompt naming exactly one class
    (a class name or one of its "/"-separated parts, as a whole word, optionally plural).

    An empty prompt means every class in turn; an unconditional model ignores the prompt.

    Raises:
        APIError: a conditional model and a prompt that names no class, or several.
    """
    classes = im.classes
    text = prompt.strip()
    if not classes or not text:
        return None
    try:
        return im.class_index(text)
    except AigcError:
        pass
    lowered = text.lower()
    found = {}
    for i, c in enumerate(classes):
        for alias in {c.lower(), *c.lower().split("/")}:
            if alias and re.search(rf"(?<![\w-]){re.escape(alias)}(?:e?s)?(?![\w-])", lowered):
                found[i] = True
    if not found:
        raise APIError(400, f"prompt {prompt!r} names none of this model's classes: {', '.join(classes)}",
                       param="prompt")
    if len(found) > 1:
        raise APIError(400, f"prompt {prompt!r} names several classes ({', '.join(classes[i] for i in found)}); "
                       "name one", param="prompt")
    return next(iter(found))
