"""`aigc sample` (text, or image grids, reconstructions and interpolations) and `aigc complete` (code)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import secrets
import sys
import warnings
from pathlib import Path

import torch

from aigc.api import load
from aigc.atomic import check_target, read_json, write_text
from aigc.cli.common import add_runtime_flags, add_sampling_flags, check_seed, no_overrides, sampling_overrides, threads
from aigc.data.fim import fim_token_ids
from aigc.errors import AigcError
from aigc.cli.music import sample_music, wants_music
from aigc.generate.images import ImageModel, save_grid
from aigc.generate.watermark import load_key

SAMPLE = ("Generate text (tokens stream to the terminal as they are produced) or, with an image model, a PNG "
          "grid (--out). Unset sampling parameters come from the model's generation_config.json.")
COMPLETE = ("Complete code with a code model. FILE:LINE: the file up to and including LINE is the prefix (say, a "
            "function's signature and docstring); with a model trained for fill-in-the-middle the rest of the file "
            "is the suffix and the model writes what goes between. FILE alone: the whole file is the prompt. "
            "Completions stop where a line starts at column 0.")


def sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a run folder (its latest checkpoint) or a model folder")
    add_sampling_flags(p)
    add_runtime_flags(p, compile_flag=True)
    p.add_argument("--n", type=int, help="number of samples (default: 1 text sample, 64 images)")
    p.add_argument("--seed", type=int, help="random seed (text: sample i uses seed + i)")
    p.add_argument("--suffix", help="fill in the middle between --prompt and this text (a model trained with "
                   "data.fim_rate > 0)")
    p.add_argument("--logprobs", type=int, metavar="K", help="text: after each sample, every token's log-probability "
                   "and its K most likely alternatives (0 to 20)")
    p.add_argument("--json-schema", dest="json_schema", metavar="FILE", help="text: output JSON matching this JSON "
                   "schema (grammar-constrained decoding)")
    p.add_argument("--json", action="store_true", help="text: output a JSON object (grammar-constrained decoding)")
    p.add_argument("--watermark", metavar="KEY", help="watermark the samples with this key file (aigc keygen): text and code models (green "
                   "lists), diffusion models (Tree-Ring in the starting noise)")
    g = p.add_argument_group("image models (dcgan, vae)")
    g.add_argument("--out", help="image models: the PNG to write (required); text models: also write the samples "
                   "to this .txt or .jsonl file; music models (ABC): tune.abc, tune.mid, tune.wav (FluidSynth) or "
                   "a piano-roll tune.png (several tunes: tune-1.mid, tune-2.mid, ...)")
    g.add_argument("--class", dest="label", help="generate this class (name or index) with a conditional model")
    g.add_argument("--nrow", type=int, default=8, help="images per grid row (default: 8; one column per class "
                   "when a conditional model samples every class)")
    g.add_argument("--scale", type=int, default=1, help="enlarge the PNG this many times (nearest pixels)")
    g.add_argument("--reconstruct", nargs="+", metavar="IMAGES", help="VAE: image files or folders to reconstruct")
    g.add_argument("--interpolate", nargs=2, metavar=("A", "B"), help="VAE: two images to interpolate between")
    g.add_argument("--steps", type=int, help="VAE: images in the interpolation strip (default: 10); diffusion: "
                   "sampler steps (default: the model's, 1 to its training timesteps)")
    d = p.add_argument_group("diffusion models (ddpm): --prompt names the class or describes the image")
    d.add_argument("--sampler", help="ddpm | ddim | dpm++2m (default: the model's)")
    d.add_argument("--guidance-scale", "--cfg-scale", dest="guidance_scale", type=float,
                   help="classifier-free guidance: 0 = unconditional, 1 = conditional only, > 1 guided")
    d.add_argument("--eta", type=float, help="DDIM: 0 = deterministic, 1 = DDPM's variance")
    d.add_argument("--spacing", help="timestep spacing: trailing | leading")
    d.add_argument("--inpaint", metavar="IMAGE", help="regenerate the masked part of this image (with --mask)")
    d.add_argument("--mask", metavar="MASK", help="with --inpaint: white = regenerate, black = keep exactly")
    d.add_argument("--restore", metavar="IMAGE", help="restore a damaged or noisy image: noise it to --strength "
                   "and denoise (SDEdit)")
    d.add_argument("--strength", type=float, default=0.5, help="with --restore: how far back into the noise to "
                   "go, 0 to 1 (default: 0.5)")


def run_sample(args, overrides: list[str]) -> int:
    threads(args.threads)
    model = load(args.model, device=args.device, dtype=args.dtype, compile=args.compile)
    if isinstance(model, ImageModel):
        return _sample_images(model, args)
    for flag in ("label", "reconstruct", "interpolate"):
        if getattr(args, flag) is not None:
            raise AigcError(f"--{'class' if flag == 'label' else flag} is for image models; "
                            f"{args.model} is a {model.family!r} text model")
    if wants_music(model, args.out):
        return sample_music(model, args)
    n = 1 if args.n is None else args.n
    if n < 1:
        raise AigcError(f"--n {n}: expected at least 1 sample")
    if args.out is not None and Path(args.out).suffix.lower() not in (".txt", ".jsonl"):
        raise AigcError(f"--out {args.out}: a text model writes .txt (the samples) or .jsonl (one JSON object "
                        "per sample: prompt, text, seed); a music model also .abc, .mid, .wav or .png")
    if args.out is not None:
        check_target(Path(args.out))
        if not Path(args.out).parent.is_dir():
            raise AigcError(f"--out {args.out}: the folder {Path(args.out).parent} does not exist")
    check_seed(args.seed)
    if args.watermark:
        model.use_watermark(load_key(args.watermark))
    settings = model.settings(**sampling_overrides(args), **_output_overrides(args))
    with warnings.catch_warnings():  # a check only: a prompt cropped to the context is reported once, below
        warnings.simplefilter("ignore")
        model.encode(args.prompt, args.suffix)  # fail before printing anything (an unknown character, no FIM tokens)
    samples = []
    for i in range(n):
        if n > 1:
            print(f"--- sample {i + 1}/{n}", flush=True)
        print(args.prompt, end="", flush=True)
        seed = None if args.seed is None else args.seed + i
        if settings.logprobs or settings.response_format != "text" or args.out:
            done = model.complete(args.prompt, seed=seed, suffix=args.suffix, settings=settings)[0]
            print(done.text + (args.suffix or ""), flush=True)
            samples.append({"prompt": args.prompt, "text": done.text, "seed": seed, "finish_reason": done.finish})
            if settings.response_format != "text" and done.finish == "length":
                print(f"note: sample {i + 1} reached --max-new-tokens {settings.max_new_tokens} before its JSON "
                      "was complete", file=sys.stderr)
            if settings.logprobs:
                _print_logprobs(model, done.logprobs)
            continue
        for piece in model.stream(args.prompt, seed=seed, suffix=args.suffix, settings=settings):
            print(piece, end="", flush=True)
        print(args.suffix or "", flush=True)
    if args.out:
        _write_samples(Path(args.out), samples, args.suffix)
    return 0


def _write_samples(out: Path, samples: list[dict], suffix: str | None) -> None:
    """The samples of a text model into ``out`` (atomically): .jsonl one object per sample, .txt
    each sample's full text (prompt, completion, suffix) followed by a blank line."""
    if out.suffix.lower() == ".jsonl":
        write_text(out, "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
    else:
        write_text(out, "".join(s["prompt"] + s["text"] + (suffix or "") + "\n\n" for s in samples))
    print(f"wrote {out}: {len(samples)} sample{'s' if len(samples) != 1 else ''}", file=sys.stderr)


def _output_overrides(args) -> dict:
    """The settings of ``--logprobs``, ``--json-schema`` and ``--json``.

    Raises:
        AigcError: a schema file that is not a JSON object (named with the file).
    """
    out = {}
    if args.logprobs is not None:
        out.update(logprobs=True, top_logprobs=args.logprobs)
    if args.json_schema and args.json:
        raise AigcError("--json and --json-schema: give one (--json is any JSON object, --json-schema FILE one schema)")
    if args.json_schema:
        out.update(response_format="json_schema", json_schema=read_json(args.json_schema, dict))
    elif args.json:
        out["response_format"] = "json_object"
    return out


def _print_logprobs(model, scored) -> None:
    """A table of each generated token, its log-probability and the most likely alternatives."""
    print(f"{'token':>12}  {'logprob':>9}  alternatives")
    for e in scored:
        alternatives = ", ".join(f"{model.token_texts[t]!r} {lp:.3f}" for t, lp in e.top)
        print(f"{model.token_texts[e.token]!r:>12}  {e.logprob:9.3f}  {alternatives}")


def complete_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a run folder or a model folder")
    p.add_argument("target", metavar="FILE[:LINE]", help="a source file, optionally :LINE (1-based)")
    add_sampling_flags(p, prompt=False)
    add_runtime_flags(p, compile_flag=True)
    p.add_argument("--n", type=int, default=1, help="number of completions (default: 1)")
    p.add_argument("--seed", type=int, help="random seed (completion i uses seed + i)")
    p.add_argument("--no-infill", dest="no_infill", action="store_true",
                   help="ignore the rest of the file (plain left-to-right completion)")


def _source_parts(target: str) -> tuple[str, str]:
    """``FILE`` or ``FILE:LINE`` -> (prefix, suffix): the file up to LINE (all of it without one)
    ending in a newline, and the rest.

    Raises:
        AigcError: no such file, invalid UTF-8, or LINE outside the file.
    """
    path, line = target, None
    head, sep, tail = target.rpartition(":")
    if sep and tail.isdigit() and not Path(target).exists():
        path, line = head, int(tail)
    source = Path(path)
    if not source.is_file():
        raise AigcError(f"{source}: no such file (give FILE or FILE:LINE)")
    try:
        text = source.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise AigcError(f"{source}: invalid UTF-8 at byte offset {e.start}") from None
    lines = text.splitlines(keepends=True)
    if line is not None and not 1 <= line <= len(lines):
        raise AigcError(f"{source}:{line}: the file has {len(lines)} lines; LINE must be 1 to {len(lines)}")
    prefix = "".join(lines[:line]) if line is not None else text
    if prefix and not prefix.endswith("\n"):
        prefix += "\n"
    return prefix, "".join(lines[line:]) if line is not None else ""


def run_complete(args, overrides: list[str]) -> int:
    no_overrides("complete", overrides)
    prefix, suffix = _source_parts(args.target)
    threads(args.threads)
    check_seed(args.seed)
    if args.n < 1:
        raise AigcError(f"--n {args.n}: expected at least 1 completion")
    model = load(args.model, device=args.device, dtype=args.dtype, compile=args.compile)
    if isinstance(model, ImageModel):
        raise AigcError(f"{args.model}: an image model; complete needs a code model")
    infill = bool(suffix.strip()) and not args.no_infill and fim_token_ids(model.tokenizer) is not None
    settings = model.settings(**{**sampling_overrides(args), "code_stops": True})
    for i in range(args.n):
        if args.n > 1:
            print(f"--- completion {i + 1}/{args.n}", flush=True)
        seed = None if args.seed is None else args.seed + i
        for piece in model.stream(prefix, seed=seed, suffix=suffix if infill else None, settings=settings):
            print(piece, end="", flush=True)
        print(flush=True)
    return 0


def _sample_images(model: ImageModel, args) -> int:
    """`aigc sample` for image models: a grid, a reconstruction grid or an interpolation strip."""
    if args.watermark:
        model.use_watermark(load_key(args.watermark))  # Tree-Ring, diffusion models only
    if not args.out:
        raise AigcError("--out FILE.png is required for image models (where to write the grid)")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise AigcError(f"--out {out}: expected a .png file name")
    if out.is_dir():
        raise AigcError(f"--out {out}: is a folder; give a file name such as {out / 'grid.png'}")
    check_target(out)  # a link, a device or a FIFO: refused before the images are made
    check_seed(args.seed)
    if not 1 <= args.scale <= 16 or args.nrow < 1:
        raise AigcError(f"--scale {args.scale} / --nrow {args.nrow}: expected a scale of 1 to 16 and at least 1 per row")
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    info = {"model": str(model.folder), "family": model.family, "step": model.step, "seed": seed}
    if model.family == "ddpm":
        return _diffuse(model, args, out, info)
    for flag in ("inpaint", "mask", "restore", "sampler", "guidance_scale", "eta", "spacing"):
        if getattr(args, flag) is not None:
            raise AigcError(f"--{flag.replace('_', '-')} is for diffusion models; {args.model} is a "
                            f"{model.family!r} model")
    args.steps = 10 if args.steps is None else args.steps
    if args.interpolate:
        images = model.read_images(args.interpolate)
        if len(images) != 2:
            raise AigcError(f"--interpolate needs two image files; got {len(images)} images")
        strip = model.interpolate(images[0], images[1], args.steps, args.label)
        images = torch.cat([images[:1], strip, images[1:]])
        info["parameters"] = {"mode": "interpolate", "a": args.interpolate[0], "b": args.interpolate[1],
                              "steps": args.steps, "class": args.label,
                              "layout": "A, then the decoded path from A's latent to B's, then B"}
        nrow = len(images)
        what = f"interpolation strip of {args.steps} images"
    elif args.reconstruct:
        images = model.read_images(args.reconstruct)[:256]
        recon = model.reconstruct(images, args.label)
        nrow = min(len(images), 16)
        rows = []
        for i in range(0, len(images), nrow):  # originals above their reconstructions
            rows += [images[i:i + nrow], recon[i:i + nrow]]
        images = torch.cat(rows)
        info["parameters"] = {"mode": "reconstruct", "images": list(args.reconstruct), "class": args.label,
                              "layout": "rows alternate: inputs, then their reconstructions"}
        what = f"{len(recon)} reconstructions"
    else:
        n = 64 if args.n is None else args.n
        images = model.generate(n, args.label, seed)
        conditional_all = model.classes and args.label is None
        nrow = len(model.classes) if conditional_all else min(args.nrow, n)
        info["parameters"] = {"mode": "sample", "n": n, "class": args.label if args.label is not None else
                              ("column i = class i" if conditional_all else None)}
        what = f"{n} samples"
    save_grid(images, out, nrow, info, scale=args.scale)
    print(f"wrote {out}: {what} (seed {seed})")
    return 0


def _diffuse(model: ImageModel, args, out: Path, info: dict) -> int:
    """`aigc sample` for diffusion models: a grid from a prompt, an inpainting or a restoration."""
    if args.reconstruct or args.interpolate:
        raise AigcError("--reconstruct and --interpolate are for VAEs; a diffusion model restores (--restore) "
                        "and inpaints (--inpaint with --mask)")
    if args.mask and not args.inpaint:
        raise AigcError("--mask goes with --inpaint IMAGE (the image whose masked part is regenerated)")
    if args.inpaint and not args.mask:
        raise AigcError("--inpaint needs --mask MASK (white = regenerate, black = keep)")
    if args.inpaint and args.restore:
        raise AigcError("--inpaint and --restore are two jobs; give one")
    settings = model.settings(sampler=args.sampler, steps=args.steps, guidance_scale=args.guidance_scale,
                              eta=args.eta, spacing=args.spacing)
    known = mask = None
    strength, mode = 1.0, "sample"
    if args.inpaint:
        known, mask, mode = model.read_edit_image(args.inpaint), model.read_mask(args.mask), "inpaint"
    elif args.restore:
        known, strength, mode = model.read_edit_image(args.restore), args.strength, "restore"
    n = (64 if mode == "sample" else 8) if args.n is None else args.n
    if model.model.config.conditioning == "none" and args.prompt:
        print(f"note: {args.model} is an unconditional model; the prompt is ignored", file=sys.stderr)
    if model.model.config.conditioning == "class" and not args.prompt and args.label is None and mode == "sample":
        print("note: no --prompt: one column per class", file=sys.stderr)
    if model.reads_text and args.label is not None:
        raise AigcError(f"--class is for class-conditional models; {args.model} reads a prompt: --prompt "
                        "'a red dress'")
    if model.reads_text and not (args.prompt or "").strip():
        print("note: an empty prompt: unconditional samples (the model's learned null prompt; guidance has "
              "nothing to guide towards)", file=sys.stderr)
    images, seeds, names = model.diffuse(n, args.prompt, info["seed"], settings, known, mask, strength, args.label,
                                         progress=True)
    info["parameters"] = {"mode": mode, "n": n, "prompt": args.prompt, "class": args.label,
                          "conditioned_on": names, **dataclasses.asdict(settings), "seeds": seeds,
                          "inpaint": args.inpaint, "mask": args.mask, "restore": args.restore,
                          "strength": strength if args.restore else None}
    info["seeds"] = seeds
    every_class = model.classes and not args.prompt and args.label is None
    nrow = len(model.classes) if every_class else min(args.nrow, n)
    if known is not None:  # the input first, then the results, in one row up to 16
        nrow = min(n + 1, 16)
        images = torch.cat([known.expand(1, -1, -1, -1), images])
        info["parameters"]["layout"] = "the input image first, then the results"
    save_grid(images, out, nrow, info, scale=args.scale)
    print(f"wrote {out}: {n} {'samples' if mode == 'sample' else mode + ' results'}, {settings.sampler} "
          f"{settings.steps} steps, guidance {settings.guidance_scale:g}; image k has seed {seeds[0]} + k "
          f"({seeds[0]}..{seeds[-1]}; alone: --n 1 --seed SEED)")
    return 0
