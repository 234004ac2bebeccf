"""The image route: ``/v1/images/generations`` (GAN, VAE and diffusion models).

Images come back as base64 PNGs (``b64_json``) carrying their provenance chunks, at the
model's native size or enlarged up to :data:`MAX_SCALE` times with nearest-neighbour pixels.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import secrets

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from aigc.errors import AigcError
from aigc.generate.images import ImageModel, png_bytes
from aigc.serve import protocol as P
from aigc.serve.errors import APIError
from aigc.serve.state import Served, check_seed, get_served, watch_disconnect

MAX_SCALE = 8  # image sizes offered: the native size times 1..MAX_SCALE (nearest-neighbour enlargement)

router = APIRouter()


def sizes(native: int) -> list[str]:
    """The sizes offered for a model making ``native`` x ``native`` images ("SxS", smallest first)."""
    return [f"{k * native}x{k * native}" for k in range(1, MAX_SCALE + 1)]


@router.post("/v1/images/generations")
async def images(req: P.ImageRequest, request: Request, served: Served = Depends(get_served)):
    """``n`` images of an image model; ``prompt`` names the class of a conditional model."""
    im = served.model(req.model, ImageModel, "/v1/images/generations")
    name = req.model or next(n for n, m in served.models.items() if m is im)
    req.n = 1 if req.n is None else req.n
    req.response_format = req.response_format or "b64_json"
    if req.response_format != "b64_json":
        raise APIError(400, f"response_format = {req.response_format!r}: only 'b64_json' is supported "
                       "(this server keeps no image files to link to)", param="response_format")
    if not 1 <= req.n <= served.limits.max_images:
        raise APIError(400, f"n = {req.n}: expected 1 to {served.limits.max_images} images", param="n")
    check_seed(req.seed, req.n)  # images k = 0..n-1 take seeds seed + k
    native = im.model.config.image_size
    scale = 1
    if req.size is not None:
        allowed = sizes(native)
        if req.size not in allowed:
            raise APIError(400, f"size = {req.size!r}: this model makes {native}x{native} images; sizes "
                           f"offered: {', '.join(allowed)} (larger ones are nearest-neighbour enlargements)",
                           param="size")
        scale = allowed.index(req.size) + 1
    served.check_prompt([req.prompt or ""], "prompt")
    label = class_of_prompt(im, req.prompt)
    seed = req.seed if req.seed is not None else secrets.randbelow(2**31)
    diffusion = im.family == "ddpm"
    knobs = {k: getattr(req, k) for k in ("steps", "guidance_scale", "sampler", "eta", "spacing")}
    if not diffusion and any(v is not None for v in knobs.values()):
        raise APIError(400, f"{', '.join(k for k, v in knobs.items() if v is not None)}: for diffusion models; "
                       f"{name} is a {im.family!r} model", param=next(k for k, v in knobs.items() if v is not None))
    try:
        settings = im.settings(**knobs) if diffusion else None
    except AigcError as e:
        raise APIError(400, str(e)) from None

    if req.stream and not diffusion:
        raise APIError(400, f"stream: for diffusion models (progress per sampler step); {name} is a {im.family!r} "
                       "model and answers at once", param="stream")
    if diffusion:  # every input checked here, before the job is queued
        try:
            steps, seeds, names = im.diffusion_job(req.n, req.prompt, seed, settings, label=label)
        except AigcError as e:
            raise APIError(400, str(e), param="prompt") from None

    def make():
        if diffusion:
            try:
                for done, total, images_ in steps:
                    if images_ is None:
                        yield {"type": "image_generation.progress", "step": done, "total_steps": total}
            finally:  # a cancelled job closes the sampler too
                steps.close()
        else:
            images_ = im.generate(req.n, label, seed)  # (n, C, S, S) in [-1, 1]
        yield {"type": "image_generation.completed", "data": encode(im, name, req, images_, seed, scale,
                                                                     settings, label)}

    job = served.submit(make)
    if req.stream:
        return StreamingResponse(stream_events(served, name, job, request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    watcher = asyncio.create_task(watch_disconnect(request, job))
    data = []
    try:
        async for event in job.results():
            data = event.get("data", data)
    finally:
        watcher.cancel()
    served.metrics.images.labels(name).inc(len(data))
    return {"created": P.now(), "data": data}


async def stream_events(served: Served, name: str, job, request: Request):
    """The SSE body of a streamed image request: progress events, the completed event (or an error
    event), always ``[DONE]``; the job is cancelled when the client goes away."""
    watcher = asyncio.create_task(watch_disconnect(request, job))
    try:
        async for event in job.results():
            if event["type"] == "image_generation.completed":
                served.metrics.images.labels(name).inc(len(event["data"]))
                event["created"] = P.now()
            yield P.encode_sse(event)
    except Exception as e:  # noqa: BLE001 - the stream has begun: an error event, then [DONE]
        yield P.sse_error(e)
    finally:
        watcher.cancel()
    yield "data: [DONE]\n\n"


def encode(im: ImageModel, name: str, req, images, seed: int, scale: int, settings, label) -> list[dict]:
    """Images ``(n, C, S, S)`` in [-1, 1] -> OpenAI's ``data`` items: base64 PNGs with provenance chunks."""
    classes, diffusion = im.classes, im.family == "ddpm"
    names = [classes[label] if label is not None else (classes[i % len(classes)] if classes else "")
             for i in range(req.n)]
    if im.reads_text:
        names = [(req.prompt or "").strip()] * req.n
    out = []
    for i in range(req.n):
        info = {"model": name, "seed": seed + i if diffusion else seed, "index": i,
                ("prompt" if im.reads_text else "class"): names[i] or None}
        if diffusion:
            info["parameters"] = {"prompt": req.prompt, **dataclasses.asdict(settings)}
        png = base64.b64encode(png_bytes(images[i], scale, info)).decode("ascii")
        out.append({"b64_json": png, "revised_prompt": names[i]})
    return out


def class_of_prompt(im: ImageModel, prompt: str) -> int | None:
    """The class a prompt asks for (:meth:`ImageModel.class_of_prompt`); a prompt naming no class or
    several is a 400."""
    try:
        return im.class_of_prompt(prompt)
    except AigcError as e:
        raise APIError(400, str(e), param="prompt") from None
