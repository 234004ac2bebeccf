"""Tunes on the server: ``POST /v1/music`` (an aigc extension; OpenAI has no music route): ABC text from a
music model, composed as one job on the generation thread, then MIDI, WAV and a piano roll rendered
(:mod:`aigc.generate.music`) on a worker thread so that other requests' generation goes on."""

from __future__ import annotations

import asyncio
import base64
import secrets
import threading

from fastapi import APIRouter, Depends, Request

from aigc.errors import AigcError
from aigc.generate.music import compose, midi_bytes, piano_roll, soundfont, tune_prompt, wav_bytes
from aigc.generate.text import TextModel
from aigc.serve import protocol as P
from aigc.serve.errors import APIError
from aigc.serve.state import Served, check_seed, client_gone, get_served, run_job
from aigc.version import __version__

router = APIRouter()


MAX_AUDIO_SECONDS = 600  # audio rendered for one request, all its tunes together
RENDERS = threading.BoundedSemaphore(2)  # requests rendering at once (each FluidSynth run takes a core)


def _rendered_in_turn(*args) -> list[dict]:
    """:func:`_rendered` once one of the :data:`RENDERS` places is free (a worker thread waits for it)."""
    with RENDERS:
        return _rendered(*args)


def _rendered(tm: TextModel, tunes: list[dict], formats: list[str], prompt: str) -> list[dict]:
    """Each tune as the API returns it: the ABC, whether it parses (and why not), and the chosen renderings;
    a rendering that fails (a tune too long, say) is ``render_error`` on that tune alone, and audio stops
    after :data:`MAX_AUDIO_SECONDS` for the request."""
    out, audio = [], 0.0
    for t in tunes:
        item = {"abc": t["abc"], "seed": t["seed"], "parses": t["tune"] is not None, "error": t["error"]}
        if t["tune"] is not None:
            tune = t["tune"]
            item.update(notes=tune.notes, seconds=round(tune.seconds, 3))
            info = {"generator": f"aigc {__version__}", "model": str(tm.folder), "seed": t["seed"], "prompt": prompt,
                    "abc": tune.text}
            make = {"mid": lambda: midi_bytes(tune), "wav": lambda: wav_bytes(tune), "png": lambda: piano_roll(tune, info)}
            for fmt in formats:
                try:
                    if fmt == "wav" and audio + tune.seconds > MAX_AUDIO_SECONDS:
                        raise AigcError(f"this request's audio would pass {MAX_AUDIO_SECONDS} s; ask for fewer tunes")
                    item[f"{fmt}_base64"] = base64.b64encode(make[fmt]()).decode("ascii")
                    audio += tune.seconds if fmt == "wav" else 0.0
                except AigcError as e:
                    item.setdefault("render_error", {})[fmt] = str(e)
        out.append(item)
    return out


@router.post("/v1/music")
async def music(req: P.MusicRequest, request: Request, served: Served = Depends(get_served)):
    """``n`` tunes after a header prompt, each checked: ``abc``, ``parses`` (and ``error`` when not) and the
    renderings asked for in ``formats`` (``mid_base64``, ``wav_base64``, ``png_base64``), ``notes`` and
    ``seconds`` (with repeats played, at 120 quarter notes a minute)."""
    tm = served.model(req.model, TextModel, "/v1/music")
    if tm.defaults.content != "abc":
        raise APIError(400, f"model {req.model or tm.folder.name!r} does not write music (its generation_config.json "
                       "has content = \"text\"); load a model trained on tunes", param="model")
    try:
        prompt = tune_prompt(req.prompt)
        tm.encode(prompt)
    except AigcError as e:
        raise APIError(400, str(e), param="prompt") from None
    try:
        settings = tm.settings(max_new_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p)
    except AigcError as e:
        raise APIError(400, str(e), param=str(e).split(" ")[0]) from None
    try:
        if "wav" in req.formats:
            soundfont()
    except AigcError as e:
        raise APIError(400, str(e), param="formats") from None
    served.check_prompt([prompt], "prompt")
    check_seed(req.seed, req.n)
    seed = secrets.randbelow(2**31) if req.seed is None else req.seed
    composed = await run_job(request, served, lambda: compose(tm, prompt, req.n, seed, settings))
    if await request.is_disconnected():
        raise client_gone()
    # rendering (FluidSynth: about a second a tune) runs off the generation thread, which other requests
    # share, and at most RENDERS requests at a time
    tunes = await asyncio.to_thread(_rendered_in_turn, tm, composed, req.formats, prompt)
    return {"object": "music.list", "model": req.model, "created": P.now(), "data": tunes}
