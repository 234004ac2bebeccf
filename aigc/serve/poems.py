"""Poems on the server: ``POST /v1/poems`` (an aigc extension) and poem requests in plain Chinese on
``/v1/chat/completions`` (写一首关于秋天的七言绝句), both by the constrained decoding of
:mod:`aigc.generate.poem`, run as one job on the generation thread."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from aigc.data.poetry import parse_instruction
from aigc.errors import AigcError
from aigc.generate.poem import (PoemState, forbidden_lines, plan_poem, poem_prompt, poem_vocabulary, shape_named,
                                write_poems)
from aigc.generate.text import TextModel
from aigc.serve import protocol as P
from aigc.serve.errors import APIError
from aigc.serve.state import Served, check_seed, get_served, run_job

router = APIRouter()


async def run_poems(request: Request, served: Served, tm: TextModel, theme: str, form: str, acrostic: str, n: int,
                    seed: int | None, strict: bool = False, repeats: bool = False) -> list[dict]:
    """The poems of one request, written on the generation thread; each checked by the output policy.

    Raises:
        APIError: 400 for a model that cannot write poems, a bad form, theme or acrostic.
    """
    try:
        poem_vocabulary(tm)
        shape = shape_named(form)
    except AigcError as e:
        raise APIError(400, str(e), param="form" if "form" in str(e) or "tune" in str(e) else "model") from None
    served.check_prompt([theme], "theme")
    check_seed(seed, n)
    seed = secrets.randbelow(2**31) if seed is None else seed
    try:  # every input checked before the job is queued: a one-poem dry plan
        vocab = poem_vocabulary(tm)
        poem_prompt(tm, shape, theme, len(PoemState(vocab, plan_poem(shape, 1, seed, acrostic, not strict, None,
                                                                     vocab)).slots))
    except AigcError as e:
        raise APIError(400, str(e), param="acrostic" if "acrostic" in str(e) else "theme") from None
    poems = await run_job(request, served, lambda: write_poems(tm, theme, shape, n, seed, acrostic, not strict,
                                                               forbidden_lines(shape), repeats=repeats))
    policy = served.policy
    for p in poems:
        p["finish_reason"] = "stop"
        refusal = policy.check(p["text"], "output") if policy is not None and policy.checks_outputs else None
        if refusal is not None:
            served.metrics.policy_refusals.labels("output", refusal.reason).inc()
            p["text"], p["finish_reason"] = "", "content_filter"
    return poems


def poem_json(p: dict) -> dict:
    """One poem as the API returns it."""
    v = p["verdict"]
    return {"text": p["text"], "score": p["score"], "seed": p["seed"], "finish_reason": p["finish_reason"],
            "form_ok": v.form_ok, "rhyme_ok": v.rhyme_ok, "tone": v.tone, "template": v.template,
            "rhyme_group": v.group}


@router.post("/v1/poems")
async def poems(req: P.PoemRequest, request: Request, served: Served = Depends(get_served)):
    """Regulated verse titled ``theme``: ``n`` candidates best first by log-likelihood per character, each
    with the checker's verdict (form, rhyme, tone conformity, template, rhyme group)."""
    tm = served.model(req.model, TextModel, "/v1/poems")
    if req.form and req.tune:
        raise APIError(400, "form and tune: give one (a regulated-verse form, or a ci tune)", param="tune")
    found = await run_poems(request, served, tm, req.theme.strip(), req.tune or req.form or "七言绝句", req.acrostic,
                            req.n, req.seed, req.strict, req.repeats)
    return {"object": "poem.list", "model": req.model, "created": P.now(), "data": [poem_json(p) for p in found]}


async def chat_poems(request: Request, served: Served, req: P.ChatRequest, tm: TextModel, content: str):
    """The chat answer to a poem request in plain Chinese (None when ``content`` asks for none or the
    model writes no poems): ``n`` choices, best first, each a poem kept to its form."""
    order = parse_instruction(content)
    if order is None or req.response_format is not None:
        return None
    try:
        poem_vocabulary(tm)
    except AigcError:
        return None
    found = await run_poems(request, served, tm, order["theme"], order["form"], order["acrostic"], req.n, req.seed)
    rid, ts = P.new_id("chatcmpl"), P.now()
    if not req.stream:
        return {"id": rid, "object": "chat.completion", "created": ts, "model": req.model,
                "choices": [{"index": c, "message": {"role": "assistant", "content": p["text"]}, "logprobs": None,
                             "finish_reason": p["finish_reason"], "poem": poem_json(p)} for c, p in enumerate(found)],
                "usage": None}

    async def events():
        base = {"id": rid, "object": "chat.completion.chunk", "created": ts, "model": req.model}
        for c, p in enumerate(found):
            yield P.encode_sse({**base, "choices": [{"index": c, "delta": {"role": "assistant", "content": p["text"]},
                                                     "logprobs": None, "finish_reason": None}]})
            yield P.encode_sse({**base, "choices": [{"index": c, "delta": {}, "logprobs": None,
                                                     "finish_reason": p["finish_reason"]}]})
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
