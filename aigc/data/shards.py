"""`aigc prepare`: corpus -> tokenizer + train/val token shards.

A prepared folder holds::

    tokenizer.json   the tokenizer (char or byte-level BPE)
    train.bin        token ids of the train documents, numpy memmap (uint16 when the vocabulary fits)
    val.bin          token ids of the val documents
    meta.json        data config, dtype, and per split: documents, tokens, characters

Each split is the stream ``<eot> doc <eot> doc ... <eot>``: the boundary token
opens every document and closes the last one, so a model learns where poems
start and end. The split is at the document level and deterministic: document i
goes to val when a uniform draw from ``numpy.random.default_rng(split_seed)`` is
below ``val_fraction`` (at least one document in each split).

Bits per character counts the boundary token as one character (it stands for the
line break between documents): ``bpc = loss_nats * tokens / chars / ln 2``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from aigc.atomic import atomic_dir, write_json
from aigc.config import DataConfig
from aigc.data.fim import FIM_TOKENS, fim_example
from aigc.data.sources import read_corpus, source_name
from aigc.data.tokenizer import DOC_TOKEN, Tokenizer, train_bpe_tokenizer, train_char_tokenizer
from aigc.errors import AigcError

FORMAT_VERSION = 1


def default_prepared_dir(cfg: DataConfig) -> Path:
    """``prepared/<source>-<tokenizer>[-<vocab>]`` unless ``data.prepared_dir`` is set."""
    if cfg.prepared_dir:
        return Path(cfg.prepared_dir)
    suffix = f"bpe{cfg.vocab_size}" if cfg.tokenizer == "bpe" else "char"
    return Path("prepared") / f"{source_name(cfg)}-{suffix}"


def split_documents(n_docs: int, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask ``(n_docs,)``: True for val documents. Deterministic in ``seed``.

    Raises:
        AigcError: fewer than 2 documents (no way to have both splits).
    """
    if n_docs < 2:
        raise AigcError(f"the corpus has {n_docs} document; need at least 2 to split into train and val "
                        "(for .txt: one document per line unless data.separator is set)")
    is_val = np.random.default_rng(seed).random(n_docs) < val_fraction
    if is_val.all():
        is_val[0] = False
    if not is_val.any():
        is_val[-1] = True
    return is_val


def _write_stream(path: Path, tokenizer: Tokenizer, docs: list[str], dtype, desc: str, progress: bool,
                  fim: tuple[float, float, int] | None = None) -> int:
    """Encode ``docs`` as one boundary-separated stream into ``path``; return the token count.

    ``fim = (rate, spm_rate, seed)``: each document becomes a fill-in-the-middle example
    with probability ``rate`` (:mod:`aigc.data.fim`), deterministically in ``seed``.
    """
    eot = tokenizer.eot_id
    chunks = [np.array([eot], dtype=dtype)]
    step = 2048
    rng = np.random.default_rng(fim[2]) if fim else None
    with tqdm(total=len(docs), desc=desc, unit="doc", leave=False, disable=not progress) as bar:
        for start in range(0, len(docs), step):
            for doc, ids in zip(docs[start:start + step], tokenizer.encode_batch(docs[start:start + step])):
                if fim and rng.random() < fim[0]:
                    ids = fim_example(tokenizer, doc, rng, fim[1])
                chunks.append(np.asarray(ids + [eot], dtype=dtype))
            bar.update(min(step, len(docs) - start))
    stream = np.concatenate(chunks)
    stream.tofile(path)
    return int(stream.size)


def prepare(cfg: DataConfig, out_dir: str | Path | None = None, progress: bool = True) -> Path:
    """Read the corpus, build the tokenizer, write shards and meta.json atomically; return the folder.

    Raises:
        AigcError: from reading the corpus, or too few documents.
    """
    out = Path(out_dir) if out_dir else default_prepared_dir(cfg)
    out = out.resolve()
    replaceable = not out.exists() or (out.is_dir() and ((out / "meta.json").is_file() or not any(out.iterdir())))
    if not replaceable:  # only an earlier prepared dataset (or an empty folder) may be replaced
        raise AigcError(f"{out}: is not a prepared dataset; refusing to replace it "
                        "(choose another --out / data.prepared_dir)")
    docs, report = read_corpus(cfg, progress=progress)
    if report and progress:
        print(f"{cfg.dataset or cfg.source}: {report}", file=sys.stderr)
    is_val = split_documents(len(docs), cfg.val_fraction, cfg.split_seed)
    train_docs = [d for d, v in zip(docs, is_val) if not v]
    val_docs = [d for d, v in zip(docs, is_val) if v]
    if cfg.tokenizer == "char":
        tokenizer = train_char_tokenizer(docs)
    else:
        tokenizer = train_bpe_tokenizer(train_docs, cfg.vocab_size, show_progress=progress,
                                        extra_special=FIM_TOKENS if cfg.fim_rate > 0 else [])
        if report is not None:  # code: every file must come back exactly
            for doc, ids in zip(docs, tokenizer.encode_batch(docs)):
                if tokenizer.decode(ids) != doc:
                    raise AigcError("the BPE tokenizer does not reproduce a source file exactly (does it contain "
                                    f"a special token such as {DOC_TOKEN!r}?): {doc[:60]!r}...")
    dtype = np.uint16 if tokenizer.vocab_size <= 65536 else np.uint32
    with atomic_dir(out) as tmp:
        tokenizer.save(tmp / "tokenizer.json")
        splits = {}
        for name, part in (("train", train_docs), ("val", val_docs)):
            fim = (cfg.fim_rate, cfg.fim_spm_rate, cfg.split_seed + 1) if name == "train" and cfg.fim_rate else None
            n_tokens = _write_stream(tmp / f"{name}.bin", tokenizer, part, dtype, f"encoding {name}", progress, fim)
            splits[name] = {"documents": len(part), "tokens": n_tokens,
                            "characters": sum(len(d) for d in part) + len(part)}
        write_json(tmp / "meta.json", {
            "format_version": FORMAT_VERSION, "data": dataclasses.asdict(cfg), "tokenizer": tokenizer.kind,
            "vocab_size": tokenizer.vocab_size, "eot_id": tokenizer.eot_id, "dtype": np.dtype(dtype).name,
            "splits": splits, "corpus_report": report,
        })
    return out


def data_key(cfg: DataConfig) -> dict:
    """The part of a data config that determines the prepared shards."""
    d = dataclasses.asdict(cfg)
    d.pop("prepared_dir")
    return d


class TokenData:
    """The token shards of a prepared folder, memory-mapped, with random and sequential batches."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        if not meta_path.is_file():
            raise AigcError(f"{self.folder}: not a prepared dataset (no meta.json); run `aigc prepare` first")
        try:
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise AigcError(f"{meta_path}: corrupt meta.json; delete the folder and prepare again") from None
        self.tokenizer = Tokenizer.load(self.folder / "tokenizer.json")
        self.splits = {}
        for name in ("train", "val"):
            path = self.folder / f"{name}.bin"
            expected = self.meta["splits"][name]["tokens"]
            arr = np.memmap(path, dtype=self.meta["dtype"], mode="r") if path.is_file() else None
            if arr is None or arr.size != expected:
                raise AigcError(f"{path}: missing or truncated ({0 if arr is None else arr.size} of {expected} "
                                "tokens); delete the folder and prepare again")
            self.splits[name] = arr

    def tokens_per_char(self, split: str) -> float:
        s = self.meta["splits"][split]
        return s["tokens"] / s["characters"]

    def check_block_size(self, block_size: int) -> None:
        for name, arr in self.splits.items():
            if arr.size < block_size + 2:
                raise AigcError(f"the {name} split has {arr.size} tokens, too few for model.block_size = "
                                f"{block_size}; use more data or a smaller block_size")

    def batch(self, split: str, batch_size: int, block_size: int, generator: torch.Generator):
        """A random batch: inputs and next-token targets, each ``(batch_size, block_size) int64``."""
        arr = self.splits[split]
        starts = torch.randint(0, arr.size - block_size - 1, (batch_size,), generator=generator).tolist()
        x = np.stack([arr[s:s + block_size] for s in starts]).astype(np.int64)
        y = np.stack([arr[s + 1:s + 1 + block_size] for s in starts]).astype(np.int64)
        return torch.from_numpy(x), torch.from_numpy(y)

    def windows(self, split: str, block_size: int, max_tokens: int = 0):
        """Consecutive non-overlapping windows over a split, for a full evaluation pass.

        Yields ``(x, y)`` pairs of shape ``(1, t)`` with t <= block_size, covering the
        first ``max_tokens`` predictions (all when 0).
        """
        arr = self.splits[split]
        end = arr.size - 1 if not max_tokens else min(arr.size - 1, max_tokens)
        for s in range(0, end, block_size):
            t = min(block_size, end - s)
            chunk = np.asarray(arr[s:s + t + 1], dtype=np.int64)
            yield torch.from_numpy(chunk[:-1])[None], torch.from_numpy(chunk[1:])[None]


def bits_per_char(loss_nats: float, tokens_per_char: float) -> float:
    """Bits per character from mean loss per token in nats: loss * (tokens / chars) / ln 2."""
    return loss_nats * tokens_per_char / math.log(2)
