"""`aigc train` (a config, or a run folder with --resume) and `aigc export` (a Hugging Face folder or a GGUF file)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from aigc.config import load_config
from aigc.data.chat import load_chat_template
from aigc.data.tokenizer import Tokenizer
from aigc.errors import AigcError
from aigc.folders import folder_kind, resolve_model_folder
from aigc.formats.adapter import adapter_base, load_adapter, save_adapter, weights_fingerprint
from aigc.formats.gguf_file import TYPES as GGUF_TYPES
from aigc.formats.gguf_file import export_gguf
from aigc.formats.hf import EXPORT_MARK, export_hf, hf_names_for_module, layout_of
from aigc.formats.model_folder import load_model_folder, read_sample_defaults, resolve_base
from aigc.train.distributed import from_environment
from aigc.train.loop import train
from aigc.train.run_folder import resolve_resume_config

TRAIN = ("Train a model. Any config key can be overridden: --section.key=value "
         "(e.g. --train.max_steps=500 --model.n_layer=4).")
EXPORT = ("Write a gpt model (a model folder, a run, or a LoRA run) as a folder that transformers' "
          "AutoModelForCausalLM and AutoTokenizer load: Llama layout for RMSNorm/rotary/SwiGLU models (Qwen2 with "
          "q/k/v biases), GPT-2 layout for LayerNorm/learned/GELU ones. A LoRA run exports its base plus the "
          "adapter in PEFT's layout (OUT/adapter), or with --merge-lora one merged model. With --format gguf "
          "(the default when OUT ends in .gguf): one GGUF file that llama.cpp runs (a LoRA run is merged).")


def train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="a run config .toml, or a run folder with --resume")
    p.add_argument("--resume", action="store_true", help="continue the run in train.out_dir from its latest checkpoint")
    p.add_argument("--init-from", dest="init_from", metavar="MODEL_FOLDER",
                   help="fine-tune this model (an aigc or Hugging Face folder, a run, or `tang-base`) with its "
                   "tokenizer (= --train.init_from)")
    p.add_argument("--lora-rank", dest="lora_rank", type=int, metavar="R",
                   help="train LoRA adapters of rank R instead of every weight (= --train.lora_rank)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_train(args, overrides: list[str]) -> int:
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
    if from_environment().main:  # under torchrun, rank 0 speaks for all
        print(f"run folder: {run_dir}")
    return 0


def export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL_OR_RUN", help="a model folder, run folder or LoRA adapter folder")
    p.add_argument("out", metavar="OUT", help="the folder to write (must not exist, or be an earlier export)")
    p.add_argument("--merge-lora", dest="merge_lora", action="store_true",
                   help="merge a LoRA run's adapter into its base and write one model")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="dtype of the written weights (default: float32)")
    p.add_argument("--max-shard-size", dest="max_shard_size", default="2GB",
                   help="split the weights into shards of at most this size, with an index (default: 2GB)")
    p.add_argument("--format", choices=["hf", "gguf"], default=None,
                   help="hf: a transformers folder; gguf: one llama.cpp file (default: gguf when OUT ends in "
                   ".gguf, else hf)")
    p.add_argument("--type", dest="gguf_type", choices=GGUF_TYPES, default=None,
                   help="GGUF weight type: f32 (default), f16, or q8_0 (llama.cpp's 8-bit blocks)")


def run_export(args, overrides: list[str]) -> int:
    if overrides:
        raise AigcError(f"unknown option {overrides[0]}")
    folder = resolve_model_folder(args.model)
    out = Path(args.out)
    if (args.format or ("gguf" if out.suffix.lower() == ".gguf" else "hf")) == "gguf":
        return _export_gguf(args, folder, out)
    if args.gguf_type is not None:
        raise AigcError("--type is for --format gguf; a transformers folder takes --dtype")
    if out.exists() and out.resolve() == folder.resolve():
        raise AigcError(f"{out}: is the model being exported; write the export to another folder")
    if out.exists() and not (out / EXPORT_MARK).is_file():  # a model you downloaded is never replaced
        raise AigcError(f"{out}: exists and is not an earlier aigc export (no {EXPORT_MARK}); refusing to replace it")
    try:
        return _export(args, folder, out)
    except OSError as e:  # the output cannot be written: name it, not a temporary file
        raise AigcError(f"{out}: cannot write the export ({e.strerror or e})") from None


def _export_gguf(args, folder: Path, out: Path) -> int:
    if args.dtype != "float32" or args.max_shard_size != "2GB":
        raise AigcError("--dtype and --max-shard-size are for transformers folders; a GGUF file takes --type")
    model = load_model_folder(folder)  # a LoRA run comes back merged into its base
    tokenizer = Tokenizer.load(folder / "tokenizer.json")
    chat = load_chat_template(folder)
    summary = export_gguf(model, tokenizer, out, args.gguf_type or "f32", chat.template if chat else None,
                          name=folder.resolve().name)
    types = ", ".join(f"{n} {k}" for k, n in summary["types"].items())
    print(f"wrote {out}: GGUF, llama.cpp architecture {summary['arch']}, {summary['tensors']} tensors ({types}), "
          f"{summary['bytes'] / 1e6:.1f} MB")
    return 0


def _export(args, folder: Path, out: Path) -> int:
    tokenizer = Tokenizer.load(folder / "tokenizer.json")
    chat = load_chat_template(folder)
    generation = None  # our sampling defaults (a transformers folder's generation_config.json read as such)
    if folder_kind(folder) == "hf" or (folder / "generation_config.json").is_file():
        generation = dataclasses.asdict(read_sample_defaults(folder))
    base = adapter_base(folder) if folder_kind(folder) == "adapter" else None
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
    save_adapter(model, cfg, out / "adapter", str(out.resolve()), rename=hf_names_for_module,
                 fingerprint=weights_fingerprint(out))
    print(f"wrote {out}: base model (transformers {layout} layout, {args.dtype}) and {out / 'adapter'}: "
          f"LoRA adapter (PEFT layout, rank {cfg.rank}, alpha {cfg.alpha:g}, {', '.join(cfg.targets)})")
    return 0
