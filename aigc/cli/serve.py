"""`aigc serve`: the OpenAI-compatible HTTP server and web page for the given models."""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys
import warnings
from pathlib import Path

import uvicorn

from aigc.api import load
from aigc.cli.common import add_runtime_flags, add_sampling_flags, no_overrides, sampling_overrides, threads
from aigc.errors import AigcError
from aigc.generate.watermark import load_key
from aigc.generate.text import TextModel
from aigc.generate.images import ImageModel
from aigc.serve.app import ServeLimits, create_app
from aigc.serve.policy import load_policy

SERVE = ("Serve text, chat and image models over HTTP: /v1/completions, /v1/chat/completions, "
         "/v1/images/generations, /v1/models, /tokenize, /detokenize, /metrics, /health, and a web page at /. Name a "
         "model with NAME=PATH (default: the folder's name). Sampling flags set the defaults of requests that leave "
         "a parameter unset (unset flags: each model's generation_config.json).")


def serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", metavar="MODEL_OR_RUN", help="run or model folders, optionally NAME=PATH")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--api-key", dest="api_key", help="require 'Authorization: Bearer KEY' on /v1/*, /tokenize and "
                   "/detokenize; the page, /health and /metrics stay open (default: $AIGC_API_KEY; none = open)")
    p.add_argument("--cors-origin", dest="cors_origins", action="append", default=[], metavar="ORIGIN",
                   help="let web pages from ORIGIN (scheme://host[:port], or * for any) call the API from a "
                   "browser; repeatable (default: none)")
    add_runtime_flags(p)
    p.add_argument("--log-level", dest="log_level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"], help="uvicorn log level; "
                   "info and debug log every request")
    add_sampling_flags(p, prompt=False, title="sampling defaults of the text models (unset: each model's "
                                              "generation_config.json)")
    p.add_argument("--watermark", action="append", default=[], metavar="[NAME=]KEY",
                   help="watermark what model NAME generates with this key file (aigc keygen; repeatable; without "
                   "NAME: every model of the key's kind: text models for a text key, diffusion models for a Tree-Ring "
                   "key); POST /v1/detect tests a text")
    p.add_argument("--policy", metavar="POLICY.toml", help="a content policy: prompts refused (400, code "
                   "content_policy_violation) and outputs cut (finish_reason content_filter) by patterns and "
                   "classifier hooks; see aigc.serve.policy for the file")
    g = p.add_argument_group("limits (a request beyond one gets a 4xx)")
    g.add_argument("--max-tokens", dest="max_tokens", type=int, default=1024, help="new tokens per sample (default: %(default)s)")
    g.add_argument("--max-prompt-tokens", dest="max_prompt_tokens", type=int, default=4096,
                   help="prompt tokens (also capped by the model's context) (default: %(default)s)")
    g.add_argument("--max-n", dest="max_n", type=int, default=16, help="text samples per request (default: %(default)s)")
    g.add_argument("--max-images", dest="max_images", type=int, default=64, help="images per request (default: %(default)s)")
    g.add_argument("--max-body-bytes", dest="max_body_bytes", type=int, default=1_000_000,
                   help="request body size in bytes (default: %(default)s)")
    g.add_argument("--max-active", dest="max_active", type=int, default=64,
                   help="requests generating at once (round-robin) (default: %(default)s)")
    g.add_argument("--max-queued", dest="max_queued", type=int, default=256,
                   help="requests waiting for a slot; more get 429 (default: %(default)s)")
    g.add_argument("--max-batch", dest="max_batch", type=int, default=64,
                   help="samples one model decodes together (continuous batching); more wait their turn (default: %(default)s)")


def _api_key(given: str | None) -> str | None:
    """``--api-key`` or ``$AIGC_API_KEY`` (None: no key). Raises AigcError for a key that cannot travel in a header."""
    key = given if given is not None else os.environ.get("AIGC_API_KEY") or None
    if key is not None and not (key.isascii() and key.isprintable() and key.strip() == key and key):
        raise AigcError("--api-key: expected a non-empty key of printable ASCII characters without spaces at the "
                        "ends (it travels in an HTTP header)")
    return key


def _load_models(args) -> dict:
    """NAME -> loaded model for every ``[NAME=]PATH``; text models get the sampling flags as defaults."""
    models = {}
    for spec in args.models:
        name, sep, path = spec.partition("=")
        if not sep:
            path = spec
            folder = Path(spec).resolve()
            name = folder.parent.parent.name if folder.parent.name == "checkpoints" else folder.name
        if not name or name in models:
            raise AigcError(f"model name {name!r} is empty or given twice; name models with NAME=PATH")
        model = models[name] = load(path, args.device, args.dtype)
        if isinstance(model, TextModel):
            model.defaults = model.settings(**sampling_overrides(args))
        kind = "chat" if getattr(model, "chat", None) else model.family
        print(f"loaded {name} ({kind}) from {model.folder}", file=sys.stderr)
    return models


def _watermarks(specs: list[str], models: dict) -> None:
    """Give each ``[NAME=]KEY`` to its model; without NAME, to every model of the key's kind (a text key:
    the text models; a Tree-Ring key: the diffusion models).

    Raises:
        AigcError: an unknown model, a bad key file, or a key made for another tokenizer or image shape.
    """
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = None, spec
        if name is not None and name not in models:
            raise AigcError(f"--watermark {spec}: {name!r} is not a model served here")
        key = load_key(path)
        def fits(m) -> bool:  # a Tree-Ring key: diffusion models; a text key: text models
            return isinstance(m, ImageModel) and m.family == "ddpm" if key.scheme == "treering" \
                else isinstance(m, TextModel)

        targets = [n for n, m in models.items() if name in (None, n) and (name is not None or fits(m))]
        for n in targets:
            try:
                models[n].use_watermark(key)
            except AigcError as e:
                raise AigcError(f"--watermark {spec}: model {n!r}: {e}") from None


def run_serve(args, overrides: list[str]) -> int:
    no_overrides("serve", overrides)
    if not 0 <= args.port <= 65535:
        raise AigcError(f"--port {args.port}: expected 0 to 65535")
    api_key = _api_key(args.api_key)
    for origin in args.cors_origins:
        if origin != "*" and not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+", origin):
            raise AigcError(f"--cors-origin {origin!r}: expected scheme://host[:port] (e.g. https://app.example, "
                            "no path or trailing slash), or *")
    limits = ServeLimits(max_tokens=args.max_tokens, max_prompt_tokens=args.max_prompt_tokens, max_n=args.max_n,
                         max_images=args.max_images, max_body_bytes=args.max_body_bytes,
                         max_active=args.max_active, max_queued=args.max_queued, max_batch=args.max_batch)
    limits.validate()
    policy = load_policy(args.policy) if args.policy else None  # a bad policy file fails before the models load
    threads(args.threads)
    models = _load_models(args)
    _watermarks(args.watermark, models)
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback and api_key is None:
        warnings.warn(f"serving on {args.host} without --api-key: anyone who can reach this port can use it")
    hosts = ["127.0.0.1", "localhost", "::1", "[::1]", args.host] if loopback else None  # no DNS rebinding
    app = create_app(models, api_key, limits, args.cors_origins, hosts, policy)
    print(f"aigc serving {', '.join(models)} at http://{args.host}:{args.port}/ "
          f"(API under /v1{', key required' if api_key else ''}; Ctrl-C stops)", file=sys.stderr)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                    access_log=args.log_level in ("info", "debug"))
    except SystemExit as e:  # uvicorn exits this way when it cannot bind the port
        if e.code:
            raise AigcError(f"could not serve on {args.host}:{args.port} (port in use or not allowed?)") from None
        raise
    return 0
