"""`aigc keygen` (a watermark key for a model) and `aigc detect` (test a text or an image for that
watermark; read and verify an image's C2PA content credentials)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from aigc.api import load
from aigc.data.images import read_image_file, to_signed
from aigc.errors import AigcError
from aigc.evaluate.treering import detect_images
from aigc.evaluate.watermark import Z_THRESHOLD, detect
from aigc.formats.credentials import read_credentials
from aigc.generate.images import ImageModel
from aigc.generate.treering import new_image_key
from aigc.generate.watermark import SCHEMES, load_key, new_key, save_key

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

KEYGEN = ("Make a secret watermark key for a model: for a text or code model, green lists over its tokenizer "
          "(Kirchenbauer et al. 2023); for a diffusion model, Tree-Ring rings in its starting noise (Wen et al. "
          "2023). Generate with `aigc sample MODEL --watermark KEY` or `aigc serve MODEL --watermark KEY`; test with "
          "`aigc detect MODEL FILE --key KEY`. Keep the key private: whoever holds it can detect and forge.")
DETECT = ("Test a text (or, with a diffusion model's Tree-Ring key, an image) for the watermark of KEY: the "
          "z-score and the one-sided p-value. Exit status 0: watermarked; 3: not watermarked; 4: too short to "
          "decide. `aigc detect IMAGE` alone reads and verifies the image's C2PA content credentials: exit status "
          "0: valid credentials; 3: none; 5: present but invalid (tampered or badly signed).")


def keygen_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the text, code or diffusion model (run folder, model folder or shipped name) the "
                   "key is for")
    p.add_argument("--out", required=True, help="the key file to write (JSON; must not exist)")
    p.add_argument("--scheme", default="lefthash", choices=SCHEMES, help="lefthash (default) or selfhash")
    p.add_argument("--gamma", type=float, default=0.25, help="green share of the vocabulary (default: 0.25)")
    p.add_argument("--delta", type=float, default=2.0, help="logit added to green tokens (default: 2)")
    p.add_argument("--context", type=int, help="tokens before a position that seed its green list (default: 1 "
                   "for lefthash, 4 for selfhash)")
    p.add_argument("--radius", type=int, default=4, help="diffusion models: the Tree-Ring disc's radius in frequency "
                   "bins (default: 4)")


def run_keygen(args, overrides: list[str]) -> int:
    model = load(args.model)
    out = Path(args.out)
    if out.exists() or out.is_symlink():
        raise AigcError(f"--out {out}: exists; a key is never overwritten (the texts marked with it would be lost)")
    if isinstance(model, ImageModel):
        if model.family != "ddpm":
            raise AigcError(f"{args.model}: a {model.family!r} model; the image watermark (Tree-Ring) needs a "
                            "diffusion model")
        key = new_image_key(model.model.config, args.radius)
        save_key(key, out)
        print(f"wrote {out}: Tree-Ring watermark key, radius {key.radius}, for {key.channels}x{key.image_size}x"
              f"{key.image_size} images", file=sys.stderr)
        return 0
    key = new_key(model.tokenizer, args.scheme, args.gamma, args.delta, args.context)
    save_key(key, out)
    print(f"wrote {out}: {key.scheme} watermark key, gamma {key.gamma:g}, delta {key.delta:g}, context {key.context}, "
          f"for tokenizer {key.tokenizer} ({key.vocab_size} tokens)", file=sys.stderr)
    return 0


def detect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the model the key was made for; or, alone, an image whose C2PA content "
                   "credentials to read and verify")
    p.add_argument("file", nargs="?", default="-", help="a UTF-8 text file or - for stdin (default); an image for a "
                   "Tree-Ring key")
    p.add_argument("--key", help="the watermark key file")
    p.add_argument("--prompt", default="", help="the prompt the text continues: only what follows it is scored")
    p.add_argument("--threshold", type=float, default=Z_THRESHOLD, help=f"z-score to call it watermarked "
                   f"(default: {Z_THRESHOLD:g})")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run_detect(args, overrides: list[str]) -> int:
    if args.key is None:
        if Path(args.model).suffix.lower() in IMAGE_SUFFIXES and args.file == "-":
            return _credentials(args.model, args.json)
        raise AigcError("--key KEY is needed to test for a watermark (aigc detect IMAGE alone reads its content "
                        "credentials)")
    key = load_key(args.key)
    if key.scheme == "treering":
        return _detect_image(args, key)
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


def _credentials(path: str, as_json: bool) -> int:
    """Print what the C2PA manifest of image ``path`` says; exit status 0 valid, 3 none, 5 invalid."""
    if not Path(path).is_file():
        raise AigcError(f"{path}: no such image file")
    c = read_credentials(path)
    if as_json:
        print(json.dumps({k: v for k, v in c.__dict__.items() if k != "manifest"}, ensure_ascii=False))
    elif c.state == "none":
        print(f"{path}: no C2PA content credentials (nothing says how it was made; this proves nothing either way)")
    elif c.state == "invalid":
        print(f"{path}: C2PA content credentials present but INVALID: " + "; ".join(c.problems))
    else:
        made = "made by a trained model (trainedAlgorithmicMedia)" if c.generated else "no generative-AI claim"
        print(f"{path}: valid C2PA content credentials, {made}; signed by {c.signer}")
        if any(p.startswith("signingCredential.untrusted") for p in c.problems):
            print("  the signer's certificate is not on a trust list (a development or private certificate)")
        if c.generation:
            print("  " + json.dumps(c.generation, ensure_ascii=False))
    return {"valid": 0, "none": 3}.get(c.state, 5)


def _detect_image(args, key) -> int:
    """Tree-Ring detection of one image with the diffusion model that drew it."""
    model = load(args.model)
    if not isinstance(model, ImageModel) or model.family != "ddpm":
        raise AigcError(f"{args.model}: a Tree-Ring key is read back by the diffusion model that drew the image")
    if args.file == "-":
        raise AigcError("give the image file to test (a Tree-Ring key tests an image, not stdin)")
    image = _generated_image(model, Path(args.file))
    d = detect_images(model.model, key, image, threshold=0.5 * math.erfc(args.threshold / math.sqrt(2)))[0]
    if args.json:
        print(json.dumps(d.__dict__))
    else:
        print(f"{d.verdict}: z = {d.z:.2f}, p = {d.p_value:.2e} (Tree-Ring, by DDIM inversion)")
    return 0 if d.verdict == "watermarked" else 3


def _generated_image(model: ImageModel, path: Path) -> torch.Tensor:
    """The image to test -> ``(1, C, S, S)`` in [-1, 1]: the model's size, or a grid of one image as
    ``aigc sample --n 1`` writes it (2 white pixels of padding around it)."""
    size, channels = model.model.config.image_size, model.model.config.channels
    if not path.is_file():
        raise AigcError(f"{path}: no such image file")
    try:
        with Image.open(path) as im:
            width, height = im.size
    except Exception as e:  # noqa: BLE001 - PIL: unreadable, truncated, a decompression bomb
        raise AigcError(f"{path}: not a readable image ({type(e).__name__})") from None
    if (width, height) != (size + 4, size + 4):
        return model.read_edit_image(path)
    rgb = read_image_file(path, 3, size + 4, False)[:, 2:-2, 2:-2]
    return to_signed(torch.from_numpy(np.ascontiguousarray(rgb[:channels])))[None]


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
