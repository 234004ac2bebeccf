"""What the route groups share: the request limits (:class:`ServeLimits`), the state of one app
(:class:`Served`: models, scheduler, metrics, batch engines) and the checks every generating
route makes (the model asked for, the seed, a client that left).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Callable, Iterator

from fastapi import Request

from aigc.errors import AigcError
from aigc.generate.engine import BatchEngine
from aigc.generate.images import ImageModel
from aigc.generate.text import TextModel
from aigc.serve.errors import APIError
from aigc.serve.middleware import Metrics
from aigc.serve.policy import Policy
from aigc.serve.scheduler import Busy, Job, Scheduler


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
        """Raises :class:`~aigc.errors.AigcError` (naming the command-line flag): a limit that is not
        a positive integer (``max_queued`` may be 0), or ``max_batch`` smaller than ``max_n``."""
        for name, value in vars(self).items():
            if not (isinstance(value, int) and value >= (0 if name == "max_queued" else 1)):
                raise AigcError(f"--{name.replace('_', '-')} = {value}: expected a positive integer")
        if self.max_batch < self.max_n:
            raise AigcError(f"--max-batch = {self.max_batch} is smaller than --max-n = {self.max_n}: a request "
                            "of n samples must fit in one batch")


@dataclass
class Served:
    """The state of one app, shared by its routes (``app.state.served``).

    Attributes:
        models: name -> loaded model; limits: the request limits.
        scheduler: the generation thread; metrics: the app's Prometheus metrics.
        engines: name -> the :class:`~aigc.generate.engine.BatchEngine` of each text model.
        created: name -> the ``created`` time of ``/v1/models`` (the model folder's mtime).
        policy: the content policy (``aigc serve --policy``), or None.
    """

    models: dict[str, TextModel | ImageModel]
    limits: ServeLimits
    scheduler: Scheduler
    metrics: Metrics
    engines: dict[str, BatchEngine]
    created: dict[str, int]
    policy: Policy | None = None

    def check_logprobs(self, wanted: bool) -> None:
        """Raises APIError 400 when log-probabilities of generated tokens are asked under an output policy
        (they would spell out text the policy cuts)."""
        if wanted and self.policy is not None and self.policy.checks_outputs:
            raise APIError(400, "logprobs: not offered for generated tokens on this server (its content policy "
                           "checks outputs); scoring a prompt (echo with max_tokens 0) still works", param="logprobs")

    def check_prompt(self, texts: list[str], param: str) -> None:
        """Refuse prompt ``texts`` the content policy refuses.

        Raises:
            APIError: 400 ``content_policy_violation`` naming the reason code (counted in /metrics).
        """
        if self.policy is None:
            return
        for text in texts:
            refusal = self.policy.check(text, "prompt")
            if refusal is not None:
                self.metrics.policy_refusals.labels("prompt", refusal.reason).inc()
                raise APIError(400, f"{param}: refused by this server's content policy (reason: {refusal.reason})",
                               param=param, code="content_policy_violation")

    def model(self, name: str | None, kind: type, what: str) -> TextModel | ImageModel:
        """The model ``name`` (None: the only one of ``kind``), which must be a ``kind`` for route ``what``.

        Raises:
            APIError: 400 no name and not exactly one model of ``kind``, or a model of the other
                kind; 404 an unknown name.
        """
        models = self.models
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

    def submit(self, make_iter: Callable[[], Iterator]) -> Job:
        """Queue a job on the scheduler.

        Raises:
            APIError: 429 ("server_busy", with ``Retry-After: 1``) when the queue is full.
        """
        try:
            return self.scheduler.submit(make_iter)
        except Busy as e:
            self.metrics.rejected.inc()
            raise APIError(429, str(e), "rate_limit_error", code="server_busy", headers={"Retry-After": "1"}) \
                from None


def get_served(request: Request) -> Served:
    """FastAPI dependency: the :class:`Served` state of the app answering ``request``."""
    return request.app.state.served


def check_seed(seed: int | None, count: int) -> None:
    """Raises :class:`~aigc.serve.errors.APIError` 400 unless ``seed`` is None or leaves room for
    ``count`` consecutive seeds (``seed + count - 1`` fits in 63 bits)."""
    if seed is not None and not 0 <= seed <= 2**63 - count:
        raise APIError(400, f"seed = {seed}: expected an integer from 0 to {2**63 - count}", param="seed")


async def watch_disconnect(request: Request, job: Job) -> None:
    """Cancel ``job`` when the client of ``request`` disconnects (checked every 0.2 s until the job ends)."""
    while not job.finished:
        if await request.is_disconnected():
            job.cancel()
            return
        await asyncio.sleep(0.2)


async def run_job(request: Request, served: Served, work: Callable[[], object]):
    """Run ``work()`` as one job on the generation thread and return what it returns (the routes that
    answer with one whole result: poems, music). ``work`` is one step of the scheduler: a client that goes
    away while the job waits in the queue cancels it; once it runs, it runs to the end.

    Raises:
        APIError: 429 when the queue is full; 400 with the message of an :class:`AigcError` from ``work``;
            499 (the client closed the request, nginx's code) when the job was cancelled before it ran.
    """
    job = served.submit(lambda: iter([work()]))
    watcher = asyncio.create_task(watch_disconnect(request, job))
    result = None
    try:
        async for item in job.results():
            result = item
    except AigcError as e:
        raise APIError(400, str(e)) from None
    finally:
        watcher.cancel()
    if result is None and job.cancelled:
        raise client_gone()
    return result


def client_gone() -> APIError:
    """The error of a request whose client went away before its answer was made (499, nginx's code)."""
    return APIError(499, "the request was cancelled: the client went away", code="cancelled")
