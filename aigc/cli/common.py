"""What several verbs share: the sampling flags (declared once), device and threads, seeds, overrides."""

from __future__ import annotations

import argparse
from pathlib import Path

from aigc.errors import AigcError
from aigc.folders import BUILTIN_MODELS
from aigc.runtime import set_threads

SAMPLING_FLAGS = ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "presence_penalty",
                  "frequency_penalty", "stop", "code_stops")


def add_sampling_flags(p: argparse.ArgumentParser, prompt: bool = True, max_tokens_alias: bool = False,
                       title: str = "sampling (unset: the model's generation_config.json)") -> None:
    """The sampling flags of ``sample``, ``complete``, ``chat``, ``eval`` and ``serve``: every one
    defaults to the model's generation_config.json (its ``[sample]`` section), the flag overrides.

    ``max_tokens_alias``: also accept ``--max-tokens`` for ``--max-new-tokens`` (chat, as OpenAI names it).
    """
    g = p.add_argument_group(title)
    if prompt:
        g.add_argument("--prompt", default="", help="text to continue (default: start a new document)")
    names = ["--max-new-tokens"] + (["--max-tokens"] if max_tokens_alias else [])
    g.add_argument(*names, dest="max_new_tokens", type=int, help="tokens to generate at most")
    g.add_argument("--temperature", type=float, help="softmax temperature; 0 = greedy")
    g.add_argument("--top-k", dest="top_k", type=int, help="sample among the k most likely tokens (0 = off)")
    g.add_argument("--top-p", dest="top_p", type=float, help="nucleus sampling mass in (0, 1] (1 = off)")
    g.add_argument("--repetition-penalty", dest="repetition_penalty", type=float,
                   help="divide logits of tokens already present by this (1 = off)")
    g.add_argument("--presence-penalty", dest="presence_penalty", type=float,
                   help="subtract this from the logit of every token already present, -2 to 2 (0 = off)")
    g.add_argument("--frequency-penalty", dest="frequency_penalty", type=float,
                   help="subtract this times a token's count so far from its logit, -2 to 2 (0 = off)")
    g.add_argument("--stop", action="append", help="stop when this string appears (repeatable)")
    g.add_argument("--code-stops", dest="code_stops", action="store_true", default=None,
                   help="code: stop where a line starts at column 0 (a new def, class, if __name__, ...)")


def add_runtime_flags(p: argparse.ArgumentParser, compile_flag: bool = False) -> None:
    """``--device``, ``--dtype`` and ``--threads`` (and ``--compile`` where one request decodes at a time)."""
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="float32", metavar="DTYPE",
                   help="weights for inference: float32 (default), bfloat16, float16 (CUDA), or int8 "
                   "(weight-only, per output channel; gpt models)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    if compile_flag:
        p.add_argument("--compile", action="store_true", help="decode through a compiled fixed-shape step (gpt "
                       "models; the first call compiles, about a minute on 2 cores; needs a C compiler)")


def sampling_overrides(args: argparse.Namespace) -> dict:
    """The sampling settings the command line set (None for those it left to the model)."""
    return {name: getattr(args, name, None) for name in SAMPLING_FLAGS}


def eval_out(out: str | None, folder, name: str = "eval.json") -> Path:
    """Where an evaluation's JSON goes: ``--out``, else ``folder/name`` (the run or model folder), except for
    a model shipped with aigc, whose folder is part of the installed package: then ``name`` with the
    model's name added, in the current folder (``eval-tang-base.json``)."""
    if out:
        return Path(out)
    shipped = {p.resolve(): n for n, p in BUILTIN_MODELS.items()}.get(Path(folder).resolve())
    return Path(f"{Path(name).stem}-{shipped}.json") if shipped else Path(folder) / name


def threads(n: int) -> None:
    """Use ``--threads`` CPU threads. Raises AigcError when out of range."""
    set_threads(n, "--threads")


def check_seed(seed: int | None) -> None:
    """Raises AigcError for a ``--seed`` outside [0, 2**63)."""
    if seed is not None and not 0 <= seed < 2**63 - 2**20:
        raise AigcError(f"--seed {seed}: expected an integer in [0, 2**63)")


def no_overrides(verb: str, overrides: list[str]) -> None:
    """Raises AigcError when a verb without a config file got ``--section.key=value`` overrides."""
    if overrides:
        raise AigcError(f"{verb} takes no config overrides (got {overrides[0]!r})")


def split_overrides(extra: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """The ``--section.key=value`` items of the arguments argparse did not know; anything else is an error."""
    overrides = []
    for item in extra:
        if item.startswith("--") and "." in item.split("=", 1)[0] and "=" in item:
            overrides.append(item)
        else:
            parser.error(f"unrecognized argument {item!r} (config overrides look like --train.lr=3e-4)")
    return overrides


def model_and_config(args: argparse.Namespace, overrides: list[str]):
    """``eval``'s model (``args.model``) and the run config whose ``[data]`` it is scored on: ``--config``,
    else the run's own ``config.toml``; returns ``(model, config, run folder or None)``.

    Raises:
        AigcError: a model folder outside a run without ``--config``.
    """
    from aigc.api import load
    from aigc.config import config_from_dict, load_config, read_toml
    from aigc.folders import run_of

    model = load(args.model, device=args.device, dtype=args.dtype, compile=args.compile)
    run_dir = run_of(args.model, model.folder)
    if args.config:
        return model, load_config(args.config, overrides), run_dir
    if run_dir is None:
        raise AigcError(f"{args.model}: a model folder outside a run; pass --config with the [data] to score on")
    return model, config_from_dict(read_toml(run_dir / "config.toml"), str(run_dir / "config.toml"), overrides), run_dir
