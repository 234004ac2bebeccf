"""The image route: ``/v1/images/generations``, and :func:`class_of_prompt` (which class a prompt asks for).

Images come back as base64 PNGs (``b64_json``) carrying their provenance chunks, at the
model's native size or enlarged up to :data:`MAX_SCALE` times with nearest-neighbour pixels.
"""

from __future__ import annotations

import asyncio
import base64
import re

from fastapi import APIRouter, Depends, Request

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
    check_seed(req.seed, 1)
    if req.response_format != "b64_json":
        raise APIError(400, f"response_format = {req.response_format!r}: only 'b64_json' is supported "
                       "(this server keeps no image files to link to)", param="response_format")
    if not 1 <= req.n <= served.limits.max_images:
        raise APIError(400, f"n = {req.n}: expected 1 to {served.limits.max_images} images", param="n")
    native = im.model.config.image_size
    scale = 1
    if req.size is not None:
        allowed = sizes(native)
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
            png = base64.b64encode(png_bytes(images_[i], scale, info)).decode("ascii")
            out.append({"b64_json": png, "revised_prompt": names[i]})
        yield out

    job = served.submit(make)
    watcher = asyncio.create_task(watch_disconnect(request, job))
    data = []
    try:
        async for out in job.results():
            data = out
    finally:
        watcher.cancel()
    served.metrics.images.labels(name).inc(len(data))
    return {"created": P.now(), "data": data}


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
