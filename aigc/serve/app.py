"""The HTTP server: OpenAI-compatible endpoints, a Prometheus ``/metrics`` and the web page.

Endpoints::

    GET  /                          the web page (static HTML/CSS/JS, works offline)
    GET  /health                    {"status": "ok", "models": [...]}
    GET  /metrics                   Prometheus text format
    GET  /v1/models[/{id}]          the loaded models (with an "aigc" field: kind, chat, poems, classes, sizes)
    POST /v1/poems                  regulated verse kept to its form (aigc.serve.poems)
    POST /v1/music                  tunes in ABC with MIDI, WAV and a piano roll (aigc.serve.music)
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

This module is the app factory (:func:`create_app`) and the routes about the server itself;
the route groups live in :mod:`aigc.serve.text` and :mod:`aigc.serve.images`, the errors in
:mod:`aigc.serve.errors`, the body guard, metrics and API key in :mod:`aigc.serve.middleware`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from aigc.errors import AigcError
from aigc.folders import folder_kind
from aigc.generate.engine import BatchEngine
from aigc.generate.images import ImageModel
from aigc.generate.poem import writes_poems
from aigc.generate.text import TextModel
from aigc.serve import images, music, poems, text
from aigc.serve.errors import APIError, install_error_handlers
from aigc.serve.images import MAX_SCALE, class_of_prompt, sizes
from aigc.serve.middleware import Guard, Metrics, require_key
from aigc.serve.policy import Policy
from aigc.serve.scheduler import Scheduler
from aigc.serve.state import Served, ServeLimits, get_served

__all__ = ["ServeLimits", "create_app", "class_of_prompt", "MAX_SCALE"]

STATIC = Path(__file__).parent / "static"

open_routes = APIRouter()  # no API key: the page, /health, /metrics
model_routes = APIRouter()  # /v1/models (the key when set)


def create_app(models: dict[str, TextModel | ImageModel], api_key: str | None = None,
               limits: ServeLimits | None = None, cors_origins: list[str] = (),
               allowed_hosts: list[str] | None = None, policy: Policy | None = None) -> FastAPI:
    """The FastAPI app serving ``models`` (name -> loaded model).

    ``cors_origins``: web origins (``https://app.example``, or ``*``) whose pages may call the API
    from a browser (CORS, the Fetch standard): their preflight ``OPTIONS`` requests are answered
    without the API key, as browsers send them; the requests themselves still need it. Empty: no
    CORS headers, and a page on another origin cannot call the server.

    ``allowed_hosts``: the ``Host`` headers answered (others get 400); a server on loopback takes
    only its loopback names, so a web page cannot reach it through DNS rebinding. None: any.

    Args:
        api_key: when set, ``/v1/*``, ``/tokenize`` and ``/detokenize`` need ``Authorization: Bearer KEY``.
        limits: request limits (defaults: :class:`ServeLimits`).
        policy: a content policy (:mod:`aigc.serve.policy`) for prompts and outputs; None: none.

    Raises:
        AigcError: no models, or limits out of range.
    """
    if not models:
        raise AigcError("no models to serve")
    limits = limits or ServeLimits()
    limits.validate()
    engines = {}
    for name, m in models.items():
        if isinstance(m, TextModel):
            engines[name] = BatchEngine(m.model, limits.max_batch)
            m.longest_token  # decode the vocabulary now rather than at the first request
    scheduler = Scheduler(limits.max_active, limits.max_queued, after_round=[e.step for e in engines.values()])
    metrics = Metrics(scheduler)
    scheduler.on_cancel = lambda job: None if job.filtered else metrics.cancelled.inc()
    scheduler.on_defer = lambda job: metrics.waited.inc()
    created = {name: int(m.folder.stat().st_mtime) for name, m in models.items()}
    served = Served(models, limits, scheduler, metrics, engines, created, policy)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        scheduler.close()

    # /docs (Swagger UI) from the fastapi-offline package's own copy of its files, not a CDN: works offline
    app = FastAPIOffline(title="aigc", redoc_url=None, favicon_url="data:,", lifespan=lifespan)
    app.state.served = served
    app.state.scheduler, app.state.models, app.state.metrics = scheduler, models, metrics
    app.add_middleware(Guard, max_body_bytes=limits.max_body_bytes, metrics=metrics)
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    if cors_origins:  # outside the guard: a preflight is answered here, before any route or key check
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
    install_error_handlers(app)
    keyed = [Depends(require_key(api_key))]
    app.include_router(open_routes)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(model_routes, dependencies=keyed)
    app.include_router(text.router, dependencies=keyed)
    app.include_router(images.router, dependencies=keyed)
    app.include_router(poems.router, dependencies=keyed)
    app.include_router(music.router, dependencies=keyed)
    return app


@open_routes.get("/", include_in_schema=False)
async def index():
    """The web page."""
    return FileResponse(STATIC / "index.html", media_type="text/html")


@open_routes.api_route("/health", methods=["GET", "HEAD"])
async def health(served: Served = Depends(get_served)):
    """The models served and the scheduler's load."""
    return {"status": "ok", "models": list(served.models), "in_flight": served.scheduler.in_flight,
            "queued": served.scheduler.queue_depth}


@open_routes.get("/metrics", include_in_schema=False)
async def prometheus(served: Served = Depends(get_served)):
    """The app's metrics in Prometheus' text format."""
    return Response(generate_latest(served.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@model_routes.get("/v1/models")
async def list_models(served: Served = Depends(get_served)):
    """Every model served (see :func:`describe`)."""
    return {"object": "list", "data": [describe(served, n) for n in served.models]}


@model_routes.get("/v1/models/{name:path}")
async def get_model_info(name: str, served: Served = Depends(get_served)):
    """One model (see :func:`describe`).

    Raises:
        APIError: 404 ("model_not_found") for a name not served.
    """
    if name not in served.models:
        raise APIError(404, f"model {name!r} not found (served: {', '.join(served.models)})", code="model_not_found")
    return describe(served, name)


def describe(served: Served, name: str) -> dict:
    """Model ``name`` in OpenAI's model shape, with an ``aigc`` field: its kind and family, and
    for a text model whether it chats, its context and sampling defaults, for an image model
    its classes and the sizes offered."""
    m = served.models[name]
    if isinstance(m, TextModel):
        extra = {"kind": "text", "family": m.family, "chat": m.chat is not None,
                 "chat_trained": m.chat is not None and (m.chat.trained or folder_kind(m.folder) == "hf"),
                 "context_length": m.model.context_length, "poems": writes_poems(m),
                 "music": m.defaults.content == "abc",
                 "defaults": {"temperature": m.defaults.temperature, "top_k": m.defaults.top_k,
                              "top_p": m.defaults.top_p, "max_tokens": m.defaults.max_new_tokens}}
    else:
        extra = {"kind": "image", "family": m.family, "classes": m.classes, "prompt": m.reads_text,
                 "sizes": sizes(m.model.config.image_size)}
        if m.family == "ddpm":  # the sampler's defaults, for the page's step and guidance boxes
            d = m.sample_defaults
            extra["defaults"] = {"steps": d.steps, "guidance_scale": d.guidance_scale, "sampler": d.sampler}
    return {"id": name, "object": "model", "created": served.created[name], "owned_by": "aigc", "aigc": extra}
