"""What every request passes through: the Prometheus :class:`Metrics`, the :class:`Guard`
middleware (body-size limit, one count per request) and the API-key check (:func:`require_key`).
"""

from __future__ import annotations

import hmac
import time
from typing import Awaitable, Callable

from fastapi import Request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from aigc.serve.errors import APIError
from aigc.serve.scheduler import Scheduler

# the endpoint label of aigc_requests_total (anything else is "other"); /v1/models covers /v1/models/{id}
ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/images/generations", "/v1/models", "/v1/detect",
             "/tokenize", "/detokenize", "/health", "/metrics", "/")


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
        self.policy_refusals = Counter("aigc_policy_refusals", "Prompts refused and outputs cut by the content "
                                       "policy", ["where", "reason"], registry=r)
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


def require_key(api_key: str | None) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency that checks ``Authorization: Bearer KEY`` against ``api_key`` (in
    constant time); with ``api_key`` None it lets every request through.

    The dependency raises :class:`~aigc.serve.errors.APIError` 401 ("invalid_api_key") on a
    missing or wrong key.
    """

    async def check_key(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "invalid or missing API key: send the header 'Authorization: Bearer KEY'",
                           code="invalid_api_key")

    return check_key
