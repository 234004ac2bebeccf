"""`aigc keygen` (a watermark key for a model) and `aigc detect` (test a text for that watermark)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from aigc.api import load
from aigc.errors import AigcError
from aigc.evaluate.watermark import Z_THRESHOLD, detect
from aigc.generate.images import ImageModel
from aigc.generate.watermark import SCHEMES, load_key, new_key, save_key

KEYGEN = ("Make a secret watermark key for a text model's tokenizer (Kirchenbauer et al. 2023). Generate with "
          "`aigc sample MODEL --watermark KEY` or `aigc serve MODEL --watermark KEY`; test a text with "
          "`aigc detect MODEL FILE --key KEY`. Keep the key private: whoever holds it can detect and forge.")
DETECT = ("Test a text for the watermark of KEY: the z-score of its green tokens and the one-sided p-value. "
          "Exit status 0: watermarked (z >= threshold); 3: not watermarked; 4: too short to decide.")


def keygen_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the text model (run folder, model folder or shipped name) the key is for")
    p.add_argument("--out", required=True, help="the key file to write (JSON; must not exist)")
    p.add_argument("--scheme", default="lefthash", choices=SCHEMES, help="lefthash (default) or selfhash")
    p.add_argument("--gamma", type=float, default=0.25, help="green share of the vocabulary (default: 0.25)")
    p.add_argument("--delta", type=float, default=2.0, help="logit added to green tokens (default: 2)")
    p.add_argument("--context", type=int, help="tokens before a position that seed its green list (default: 1 "
                   "for lefthash, 4 for selfhash)")


def run_keygen(args, overrides: list[str]) -> int:
    model = _text_model(args.model)
    out = Path(args.out)
    if out.exists() or out.is_symlink():
        raise AigcError(f"--out {out}: exists; a key is never overwritten (the texts marked with it would be lost)")
    key = new_key(model.tokenizer, args.scheme, args.gamma, args.delta, args.context)
    save_key(key, out)
    print(f"wrote {out}: {key.scheme} watermark key, gamma {key.gamma:g}, delta {key.delta:g}, context {key.context}, "
          f"for tokenizer {key.tokenizer} ({key.vocab_size} tokens)", file=sys.stderr)
    return 0


def detect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the text model whose tokenizer the key was made for")
    p.add_argument("file", nargs="?", default="-", help="a UTF-8 text file, or - for stdin (default)")
    p.add_argument("--key", required=True, help="the watermark key file")
    p.add_argument("--prompt", default="", help="the prompt the text continues: only what follows it is scored")
    p.add_argument("--threshold", type=float, default=Z_THRESHOLD, help=f"z-score to call it watermarked "
                   f"(default: {Z_THRESHOLD:g})")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run_detect(args, overrides: list[str]) -> int:
    key = load_key(args.key)
    model = _text_model(args.model)
    key.check_tokenizer(model.tokenizer)
    text = _read_text(args.file)
    if args.prompt and not text.startswith(args.prompt):
        text = args.prompt + text
    skip = 1 + len(model.tokenizer.encode(args.prompt, "prompt")) if args.prompt else 1
    ids = [model.tokenizer.bos_id] + model.tokenizer.encode(text, str(args.file))
    d = detect(key, ids, skip, args.threshold)
    if args.json:
        print(json.dumps(d.__dict__))
    else:
        z = "n/a" if d.z is None else f"{d.z:.2f}"
        p = "n/a" if d.p_value is None else f"{d.p_value:.2e}"
        print(f"{d.verdict}: z = {z}, p = {p} ({d.green} of {d.tokens} scored tokens green, expected "
              f"{key.gamma:g} without the watermark)")
    return {"watermarked": 0, "not watermarked": 3}.get(d.verdict, 4)


def _text_model(name: str):
    model = load(name)
    if isinstance(model, ImageModel):
        raise AigcError(f"{name}: an image model; the text watermark is for text and code models")
    return model


def _read_text(file: str) -> str:
    """The text of ``file`` (``-``: stdin), refused when empty or not UTF-8 text."""
    raw = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    where = "stdin" if file == "-" else file
    if b"\0" in raw:
        raise AigcError(f"{where}: a binary file (it holds NUL bytes); expected UTF-8 text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise AigcError(f"{where}: not UTF-8 text (byte {e.start})") from None
    if not text.strip():
        raise AigcError(f"{where}: empty text; nothing to test")
    return text
