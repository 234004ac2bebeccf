"""Prepared datasets on demand: the token shards or image arrays of a run's ``[data]``, made once
and shared by every run on the same data.
"""

from __future__ import annotations

import sys
from pathlib import Path

from aigc.atomic import read_json
from aigc.config import RunConfig
from aigc.data.images import ImageData, default_image_prepared_dir, image_data_key, prepare_images
from aigc.data.shards import TokenData, data_key, default_prepared_dir, prepare
from aigc.errors import AigcError
from aigc.folders import BUILTIN_MODELS, resolve_model_folder


def _check_prepared(folder: Path, key: dict) -> bool:
    """True when ``folder`` holds data prepared with ``key``; an error when it holds other data."""
    meta = folder / "meta.json"
    if not meta.is_file():
        return False
    try:
        saved = read_json(meta, dict).get("data") or {}
    except AigcError:
        saved = {}
    saved = saved if isinstance(saved, dict) else {}
    diff = [k for k, v in key.items() if saved.get(k) != v]
    if diff:
        raise AigcError(f"{folder}: holds data prepared with other settings (differs in data."
                        f"{', data.'.join(diff)}); set data.prepared_dir to another folder, or delete this one")
    return True


def ensure_prepared(cfg: RunConfig, progress: bool = True) -> TokenData | ImageData:
    """The prepared dataset for ``cfg.data`` (token shards or image arrays), preparing it when missing.

    Raises:
        AigcError: the prepared folder holds data made with other settings, or the source is bad.
    """
    if cfg.is_image:
        folder = default_image_prepared_dir(cfg.data)
        if not _check_prepared(folder, image_data_key(cfg.data)):
            print(f"preparing {folder} ...", file=sys.stderr)
            prepare_images(cfg.data, folder, progress=progress)
        return ImageData(folder)
    folder = default_prepared_dir(cfg.data)
    if not _check_prepared(folder, data_key(cfg.data)):
        print(f"preparing {folder} ...", file=sys.stderr)
        prepare(cfg.data, folder, progress=progress)
    return TokenData(folder)


def use_base_tokenizer(cfg: RunConfig) -> Path | None:
    """For a fine-tuning config (``train.init_from``): the base model's folder, ``init_from`` pinned
    to it, and a text ``[data]`` that asks for a new tokenizer (char/bpe) switched to the base's own.

    Raises:
        AigcError: the base cannot be found.
    """
    if not cfg.train.init_from:
        return None
    base_folder = resolve_model_folder(cfg.train.init_from)
    if cfg.train.init_from not in BUILTIN_MODELS:  # pinned: a run's checkpoint, not whatever is latest later
        cfg.train.init_from = str(base_folder.resolve())
    if not cfg.is_image and cfg.data.tokenizer in ("char", "bpe"):
        cfg.data.tokenizer = cfg.train.init_from  # fine-tuning keeps the base model's tokenizer
    return base_folder
