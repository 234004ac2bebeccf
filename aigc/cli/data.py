"""`aigc prepare` (corpus -> tokenizer + token shards; images -> arrays) and `aigc data list`."""

from __future__ import annotations

import argparse

from aigc.config import DataConfig, ImageDataConfig, build_dataclass, config_from_dict, parse_override, read_toml
from aigc.data.images import IMAGE_DATASETS, ImageData, looks_like_images, prepare_images
from aigc.data.shards import TokenData, prepare
from aigc.data.music import TERMS, music21_corpus
from aigc.data.sources import DATASETS
from aigc.errors import AigcError

PREPARE = ("Text: read a corpus, build a tokenizer, write train/val token shards. Images (an image config, or "
           "--dataset fashion-mnist): read IDX files, an image folder or .npy/.npz, write train/val uint8 arrays. "
           "Config keys can be overridden with --data.key=value.")
DATA = "List the named datasets."


def prepare_arguments(p: argparse.ArgumentParser) -> None:
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


def _data_config(args, overrides: list[str]):
    """The ``[data]`` to prepare: a config file's (with overrides), or one built from the flags alone."""
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
        shape = IMAGE_DATASETS.get(args.dataset or raw.get("dataset"), {}).get("shape")
        if shape and not {"channels", "image_size"} & set(raw):  # a named dataset of its own shape
            data.channels, data.image_size = shape
    for flag in ("dataset", "source", "tokenizer", "vocab_size", "field", "separator", "glob"):
        value = getattr(args, flag)
        if value is not None:
            if not hasattr(data, flag):
                raise AigcError(f"--{flag.replace('_', '-')} applies to text data; images are configured with "
                                "--data.image_size, --data.channels, --data.resize")
            setattr(data, flag, value)
    data.validate()
    return data


def run_prepare(args, overrides: list[str]) -> int:
    data = _data_config(args, overrides)
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


def data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["list"], help="what to do")


def run_data(args, overrides: list[str]) -> int:
    for name, spec in DATASETS.items():
        if spec.get("kind") == "music":  # read from the music21 package's corpus
            try:
                music21_corpus()
                present = "ok"
            except AigcError:
                present = "missing: pip install music21"
        else:
            present = "ok" if spec["path"].exists() else "missing"
        print(f"{name:14s} [{present}] {spec.get('kind', 'text')}: {spec['description']}")
        if spec.get("kind") == "music":
            print(f"{'':14s} terms: {TERMS}")
    for name, spec in IMAGE_DATASETS.items():
        present = "ok" if spec["path"].is_dir() else "missing: sudo apt-get install dataset-fashion-mnist"
        print(f"{name:14s} [{present}] images: {spec['description']}")
    return 0
