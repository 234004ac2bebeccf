"""The `aigc` command: one table from verb to the feature module that owns its arguments and its run.

CLI layer, the top: it may import every layer below (the API, serve, train, evaluate, ...)
and nothing imports it. Each verb's module ``aigc.cli.<module>`` holds ``<VERB>`` (its
description), ``<verb>_arguments(parser)`` and ``run_<verb>(args, overrides) -> exit status``;
:data:`COMMANDS` lists every verb once, and only the module of the verb being run is imported
(the server's stack is not loaded to train). :func:`main` turns an
:class:`~aigc.errors.AigcError` into ``error: <one line>`` on stderr and exit status 2, an
OSError into status 1, Ctrl-C into 130, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from aigc.cli.common import split_overrides
from aigc.errors import AigcError
from aigc.version import __version__

# verb: (one line for `aigc --help`, the module in aigc/cli/ that owns it)
COMMANDS = {
    "prepare": ("corpus -> tokenizer + token shards; images -> arrays", "data"),
    "train": ("train a model from a TOML config", "train"),
    "export": ("write a model as a Hugging Face transformers folder", "train"),
    "sample": ("generate text or images from a run or model folder", "sample"),
    "complete": ("complete code: a function body at FILE:LINE, or a prompt file", "sample"),
    "chat": ("talk with a chat model in the terminal", "chat"),
    "poem": ("regulated verse on a theme: form, tones and rhyme kept by constrained decoding", "poem"),
    "eval": ("text: perplexity, bits/char, diversity; images: FD, KID, precision/recall; code: pass@k", "evaluate"),
    "serve": ("an OpenAI-compatible HTTP server and a web page for the given models", "serve"),
    "keygen": ("make a secret watermark key for a text, code or diffusion model", "watermark"),
    "detect": ("test a text or image for a watermark; read an image's C2PA content credentials", "watermark"),
    "data": ("list the named datasets", "data"),
}


def build_parser(verbs: list[str] | None = None) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The `aigc` parser and the parser of each verb; the arguments of ``verbs`` (default: all)
    are declared, the other verbs are listed by name and help only."""
    parser = argparse.ArgumentParser(prog="aigc", description="Train generative models on your data, "
                                     "generate new content, measure it.")
    parser.add_argument("--version", action="version", version=f"aigc {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    parsers = {}
    for verb, (help_, module_name) in COMMANDS.items():
        p = parsers[verb] = sub.add_parser(verb, help=help_)
        if verbs is None or verb in verbs:
            module = importlib.import_module(f"aigc.cli.{module_name}")
            p.description = getattr(module, verb.upper())
            getattr(module, f"{verb}_arguments")(p)
            p.set_defaults(func=getattr(module, f"run_{verb}"))
    return parser, parsers


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the `aigc` command; return the exit status. Under torchrun the process ends here, without
    the interpreter's teardown, where gloo's threads can abort it after a finished run."""
    status = _main(argv)
    if os.environ.get("WORLD_SIZE", "1").strip() not in ("", "0", "1"):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser, parsers = build_parser([a for a in argv if a in COMMANDS][:1])  # the verb is the first such word
    args, extra = parser.parse_known_args(argv)
    overrides = split_overrides(extra, parsers[args.verb])
    warnings.showwarning = _one_line_warning
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
