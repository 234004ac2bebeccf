"""`aigc prepare`: corpus -> tokenizer + train/val token shards.

A prepared folder holds::

    tokenizer.json   the tokenizer (char or byte-level BPE)
    train.bin        token ids of the train documents, numpy memmap (uint16 when the vocabulary fits)
    val.bin          token ids of the val documents
    meta.json        data config, dtype, and per split: documents, tokens, characters
    train.mask.bin   chat data only: uint8, one per token of train.bin, 1 = a training target
    val.mask.bin     (a token of an assistant turn); ``"masks": true`` in meta.json

Each split is the stream ``<eot> doc <eot> doc ... <eot>``: the boundary token
opens every document and closes the last one, so a model learns where poems
start and end. The split is at the document level and deterministic: document i
goes to val when a uniform draw from ``numpy.random.default_rng(split_seed)`` is
below ``val_fraction`` (at least one document in each split).

Bits per character counts the boundary token as one character (it stands for the
line break between documents): ``bpc = loss_nats * tokens / chars / ln 2``.

Chat data (``data.format = "chat"``) is rendered with a chat template, one conversation
per document, and only the tokens of assistant turns are targets: batches carry the
target -100 (ignored by the loss) elsewhere. Its loss and bits per character are per
assistant token and per assistant character (the end-of-turn token counted as one).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from aigc.atomic import atomic_dir, read_json, write_json
from aigc.config import DataConfig
from aigc.data.fim import FIM_TOKENS, fim_example
from aigc.data.chat import (BUILTIN_TEMPLATES, CHATML, CHATML_END, CHATML_START, ChatTemplate,
                            chat_template_from_config, read_chat_source, render_with_targets)
from aigc.data.sources import is_chat_source, is_music_source, read_corpus, source_name
from aigc.data.transpose import augment
from aigc.data.tokenizer import DOC_TOKEN, Tokenizer, train_bpe_tokenizer, train_char_tokenizer
from aigc.errors import AigcError

FORMAT_VERSION = 1
IGNORE_INDEX = -100  # the target of a token that is not trained on (PyTorch's cross_entropy default)


def default_prepared_dir(cfg: DataConfig) -> Path:
    """``prepared/<source>-<tokenizer>[-<vocab>]`` unless ``data.prepared_dir`` is set."""
    if cfg.prepared_dir:
        return Path(cfg.prepared_dir)
    if cfg.tokenizer in ("char", "bpe"):
        suffix = f"bpe{cfg.vocab_size}" if cfg.tokenizer == "bpe" else "char"
    else:
        suffix = "tok-" + Tokenizer.load(cfg.tokenizer).fingerprint(with_config=True)
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
                  fim: tuple[float, float, int] | None = None,
                  spans: list[list[tuple[int, int]]] | None = None) -> tuple[int, int]:
    """Encode ``docs`` as one boundary-separated stream into ``path``; return (tokens, target tokens).

    ``fim = (rate, spm_rate, seed)``: each document becomes a fill-in-the-middle example
    with probability ``rate`` (:mod:`aigc.data.fim`), deterministically in ``seed``.
    ``spans``: per document, the character spans whose tokens are targets; then a parallel
    uint8 mask (1 = target) is written to ``<split>.mask.bin`` beside ``path``. A token is a
    target when any of its characters (tokenizer offsets) lies in a span.
    """
    eot, bos = tokenizer.eot_id, tokenizer.bos_id
    lead = [bos] if bos != eot else []  # Llama-style vocabularies open each document with <s>
    chunks = [np.array([eot], dtype=dtype)]
    masks = [np.zeros(1, dtype=np.uint8)]
    step = 2048
    rng = np.random.default_rng(fim[2]) if fim else None
    with tqdm(total=len(docs), desc=desc, unit="doc", leave=False, disable=not progress) as bar:
        for start in range(0, len(docs), step):
            part = docs[start:start + step]
            encodings = tokenizer.tk.encode_batch(part, add_special_tokens=False)
            for j, (doc, enc) in enumerate(zip(part, encodings)):
                ids = enc.ids
                if fim and rng.random() < fim[0]:
                    ids = fim_example(tokenizer, doc, rng, fim[1])
                chunks.append(np.asarray(lead + ids + [eot], dtype=dtype))
                if spans is not None:
                    off = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)  # (tokens, 2) character offsets
                    mask = np.zeros(len(ids) + 1, dtype=np.uint8)  # the closing boundary is never a target
                    for s, e in spans[start + j]:
                        mask[:-1] |= (off[:, 0] < e) & (off[:, 1] > s)
                    masks.append(np.concatenate([np.zeros(len(lead), dtype=np.uint8), mask]))
            bar.update(min(step, len(docs) - start))
    stream = np.concatenate(chunks)
    stream.tofile(path)
    if spans is None:
        return int(stream.size), int(stream.size)
    mask = np.concatenate(masks)
    mask.tofile(path.with_suffix(".mask.bin"))
    return int(stream.size), int(mask.sum())


def chat_template_for(cfg: DataConfig, base: Tokenizer | None):
    """The chat template chat data is rendered with: ``data.chat_template`` when set, else the one in the
    reused tokenizer's tokenizer_config.json.

    Raises:
        AigcError: neither exists (saying how to get one).
    """
    if cfg.chat_template:
        template, eos = BUILTIN_TEMPLATES[cfg.chat_template]
        return ChatTemplate(template, eos)
    if base is None:
        raise AigcError(f"{cfg.source}: chat data needs a chat template and a new {cfg.tokenizer} tokenizer has none; "
                        "set data.chat_template = \"chatml\", or start from a base model whose tokenizer_config.json "
                        "has one (train.init_from or data.tokenizer = MODEL_FOLDER)")
    found = chat_template_from_config(base.config, f"{cfg.tokenizer} tokenizer_config.json")
    if found is None:
        raise AigcError(f"data.tokenizer = {cfg.tokenizer!r}: no chat_template in its tokenizer_config.json; use a "
                        "base model whose tokenizer_config.json has one, or set data.chat_template = \"chatml\"")
    return found


def add_chatml(tokenizer: Tokenizer, reused: bool) -> Tokenizer:
    """The tokenizer with the ChatML template (and eos ``<|im_end|>``) in its config, saved with it.

    A new tokenizer gets ``<|im_start|>`` and ``<|im_end|>`` as special tokens; a reused one
    (a base model's, whose embeddings are fixed) must already encode each as one token.

    Raises:
        AigcError: a reused vocabulary without them as single tokens, or whose document
            boundary is its eos token (ChatML's eos would replace it).
    """
    tk = tokenizer.tk
    if not reused:
        tk.add_special_tokens([CHATML_START, CHATML_END])
    for token in (CHATML_START, CHATML_END):
        if tk.encode(token, add_special_tokens=False).ids != [tk.token_to_id(token)]:
            raise AigcError(f"data.chat_template = \"chatml\": the vocabulary of {tokenizer_name(tokenizer)} lacks "
                            f"{token} as a single token; use the base model's own chat template (data.chat_template "
                            "= \"\") or a vocabulary that has it")
    if tokenizer.eot_token != DOC_TOKEN:
        raise AigcError(f"data.chat_template = \"chatml\": this vocabulary ends documents with its eos_token "
                        f"{tokenizer.eot_token!r}, which ChatML would replace by {CHATML_END}; use the base "
                        "model's own chat template")
    config = {**tokenizer.config, "chat_template": CHATML, "eos_token": CHATML_END}
    return Tokenizer(tk, tokenizer.eot_token, config)


def _without(docs: list[str], markers: tuple[str, ...]) -> list[str]:
    """``docs`` with every occurrence of ``markers`` removed (the same list when there are none)."""
    for m in markers:
        docs = [d.replace(m, "") for d in docs]
    return docs


def tokenizer_name(tokenizer: Tokenizer) -> str:
    return f"the {tokenizer.kind} tokenizer ({tokenizer.vocab_size} tokens)"


def render_conversations(chat, conversations: list[tuple[int, list[dict]]], name: str
                         ) -> tuple[list[str], list[list[tuple[int, int]]]]:
    """Each conversation's text and the character spans of its assistant turns
    (:func:`aigc.data.chat.render_with_targets`).

    Raises:
        AigcError: a conversation the template refuses or cannot split into turns, named ``name:line``.
    """
    docs, spans = [], []
    for lineno, messages in conversations:
        try:
            text, turns = render_with_targets(chat, messages)
        except AigcError as e:
            raise AigcError(f"{name}:{lineno}: {e}") from None
        docs.append(text)
        spans.append(turns)
    return docs, spans


def _documents(cfg: DataConfig, progress: bool):
    """Step 1 of :func:`prepare`: the documents, and for chat data the character spans of the
    assistant turns and the template; the corpus and vocabulary reports.

    Returns ``(docs, spans or None, chat template or None, corpus report, vocabulary report)``.
    """
    spans = chat = None  # chat data: per document, the character spans of assistant turns
    if is_chat_source(cfg):
        base = Tokenizer.load(cfg.tokenizer) if cfg.tokenizer not in ("char", "bpe") else None
        chat = chat_template_for(cfg, base)
        docs, spans = render_conversations(chat, read_chat_source(cfg), cfg.source)
        report = None
    else:
        docs, report = read_corpus(cfg, progress=progress)
    if report and progress:
        print(f"{cfg.dataset or cfg.source}: {report}", file=sys.stderr)
    vocab_report = None
    if cfg.tokenizer not in ("char", "bpe"):  # a base model's tokenizer: check the corpus against its vocabulary
        kept, vocab_report = check_vocabulary(Tokenizer.load(cfg.tokenizer), docs, str(cfg.tokenizer))
        if vocab_report["skipped_documents"]:  # a warning, shown even with --quiet
            print(vocab_report["message"], file=sys.stderr)
        if spans is not None and len(kept) < len(docs):
            missing = vocab_report["missing_characters"]
            spans = [sp for d, sp in zip(docs, spans) if not any(ch in missing for ch in d)]
        docs = kept
    return docs, spans, chat, report, vocab_report


def split_corpus(cfg: DataConfig, progress: bool = False) -> tuple[list[str], list[str]]:
    """The train and val documents of ``cfg`` exactly as :func:`prepare` splits them (after the
    vocabulary check of a base model's tokenizer), for evaluations and derived corpora that must keep
    the val documents out.

    Raises:
        AigcError: as :func:`prepare` does when reading the corpus.
    """
    docs = _documents(cfg, progress)[0]
    is_val = split_documents(len(docs), cfg.val_fraction, cfg.split_seed)
    return [d for d, v in zip(docs, is_val) if not v], [d for d, v in zip(docs, is_val) if v]


def _tokenizer_for(cfg: DataConfig, docs: list[str], train_docs: list[str], chatml: bool, exact: bool,
                   progress: bool) -> Tokenizer:
    """Step 2 of :func:`prepare`: the tokenizer (a new char or BPE one, or the reused base's), with
    ChatML's markers as special tokens for chat data in ChatML (never characters or merges).

    Raises:
        AigcError: ``exact`` (code) and a BPE tokenizer that does not give a file back byte for byte.
    """
    markers = (CHATML_START, CHATML_END) if chatml else ()
    if cfg.tokenizer == "char":
        tokenizer = train_char_tokenizer(_without(docs, markers))
    elif cfg.tokenizer == "bpe":
        tokenizer = train_bpe_tokenizer(_without(train_docs, markers), cfg.vocab_size, show_progress=progress,
                                        extra_special=FIM_TOKENS if cfg.fim_rate > 0 else [])
        if exact:  # code: every file must come back exactly
            for doc, ids in zip(docs, tokenizer.encode_batch(docs)):
                if tokenizer.decode(ids) != doc:
                    raise AigcError("the BPE tokenizer does not reproduce a source file exactly (does it contain "
                                    f"a special token such as {DOC_TOKEN!r}?): {doc[:60]!r}...")
    else:
        tokenizer = Tokenizer.load(cfg.tokenizer)
    if markers:
        tokenizer = add_chatml(tokenizer, reused=cfg.tokenizer not in ("char", "bpe"))
    return tokenizer


def prepare(cfg: DataConfig, out_dir: str | Path | None = None, progress: bool = True) -> Path:
    """Read the corpus, build the tokenizer, write shards and meta.json atomically; return the folder.

    Chat data (:func:`aigc.data.sources.is_chat_source`) is rendered with its chat template
    (:func:`chat_template_for`) and gets target masks; ``data.chat_template = "chatml"`` is
    stored in the tokenizer's config, so it travels with the prepared tokenizer and every
    model folder trained on it.

    Raises:
        AigcError: from reading the corpus, too few documents, or chat data without a usable template.
    """
    out = Path(out_dir) if out_dir else default_prepared_dir(cfg)
    out = out.resolve()
    replaceable = not out.exists() or (out.is_dir() and ((out / "meta.json").is_file() or not any(out.iterdir())))
    if not replaceable:  # only an earlier prepared dataset (or an empty folder) may be replaced
        raise AigcError(f"{out}: is not a prepared dataset; refusing to replace it "
                        "(choose another --out / data.prepared_dir)")
    docs, spans, chat, report, vocab_report = _documents(cfg, progress)
    is_val = split_documents(len(docs), cfg.val_fraction, cfg.split_seed)
    train_docs = [d for d, v in zip(docs, is_val) if not v]
    val_docs = [d for d, v in zip(docs, is_val) if v]
    if cfg.transpose:  # music: transposed copies of the train tunes only, so no val tune leaks in another key
        if not is_music_source(cfg):
            raise AigcError("data.transpose applies to music (data.format = \"music\" or a music dataset)")
        extra, untransposed = augment(train_docs, cfg.transpose)
        if progress:
            print(f"transposed: {len(extra):,} more train tunes ({untransposed:,} in keys that do not transpose)",
                  file=sys.stderr)
        train_docs, docs = train_docs + extra, docs + extra
    tokenizer = _tokenizer_for(cfg, docs, train_docs, chatml=spans is not None and cfg.chat_template == "chatml",
                               exact=report is not None, progress=progress)
    dtype = np.uint16 if tokenizer.vocab_size <= 65536 else np.uint32
    with atomic_dir(out) as tmp:
        tokenizer.save(tmp / "tokenizer.json")
        splits = {}
        for name, part in (("train", train_docs), ("val", val_docs)):
            fim = (cfg.fim_rate, cfg.fim_spm_rate, cfg.split_seed + 1) if name == "train" and cfg.fim_rate else None
            part_spans = None if spans is None else [sp for sp, v in zip(spans, is_val) if v == (name == "val")]
            n_tokens, n_targets = _write_stream(tmp / f"{name}.bin", tokenizer, part, dtype, f"encoding {name}",
                                                progress, fim, part_spans)
            splits[name] = {"documents": len(part), "tokens": n_tokens,
                            "characters": sum(len(d) for d in part) + len(part)}
            if spans is not None:  # the end-of-turn token counts as one character, like the boundary token
                eos = chat.eos_token or ""
                splits[name].update(target_tokens=n_targets, target_characters=sum(
                    e - s - (len(eos) - 1 if eos and d.endswith(eos, s, e) else 0)
                    for d, sp in zip(part, part_spans) for s, e in sp))
                if not n_targets:
                    raise AigcError(f"{cfg.source}: the {name} split has no assistant tokens to train on")
        chat_meta = None if spans is None else {
            "template": cfg.chat_template or "the tokenizer's", "eos_token": chat.eos_token,
            "conversations": len(docs)}
        write_json(tmp / "meta.json", {
            "format_version": FORMAT_VERSION, "data": {**dataclasses.asdict(cfg), **data_key(cfg)},
            "tokenizer_source": cfg.tokenizer, "tokenizer": tokenizer.kind,
            "vocab_size": tokenizer.vocab_size, "eot_id": tokenizer.eot_id, "dtype": np.dtype(dtype).name,
            "splits": splits, "corpus_report": report, "vocabulary_report": vocab_report,
            "masks": spans is not None, "chat": chat_meta,
        })
    return out


def check_vocabulary(tokenizer: Tokenizer, docs: list[str], name: str) -> tuple[list[str], dict]:
    """Keep the documents a reused (base model's) vocabulary can encode; report the rest.

    A character-level vocabulary cannot encode a character it lacks, so a document holding
    one is skipped; the report lists those characters with their counts. Byte-level BPE
    encodes everything (the report is empty).

    Returns:
        (kept documents, report dict with ``missing_characters``, ``skipped_documents``, ``message``)

    Raises:
        AigcError: every document holds a missing character.
    """
    missing = tokenizer.missing_characters(docs)
    kept = [d for d in docs if not any(ch in missing for ch in d)] if missing else docs
    skipped = len(docs) - len(kept)
    shown = ", ".join(f"{ch!r} (U+{ord(ch):04X}) x{n}" for ch, n in list(missing.items())[:20])
    more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
    message = (f"{name}: the vocabulary lacks {len(missing)} characters of the corpus ({sum(missing.values())} "
               f"occurrences): {shown}{more}; skipped {skipped} of {len(docs)} documents holding them")
    if missing and not kept:
        raise AigcError(message.replace("skipped", "that is") + "; nothing left to train on")
    return kept, {"missing_characters": missing, "skipped_documents": skipped, "documents": len(docs),
                  "message": message if missing else ""}


def data_key(cfg: DataConfig) -> dict:
    """The part of a data config that determines the prepared shards (a reused tokenizer by its content)."""
    d = dataclasses.asdict(cfg)
    d.pop("prepared_dir")
    for key in ("chat_template", "transpose"):
        if not d[key]:  # unset: folders prepared before the key existed still match
            d.pop(key)
    if cfg.tokenizer not in ("char", "bpe"):
        d["tokenizer"] = "tok-" + Tokenizer.load(cfg.tokenizer).fingerprint(with_config=True)
    return d


class TokenData:
    """The token shards of a prepared folder, memory-mapped, with random and sequential batches.

    ``masks`` (chat data): per split a uint8 memmap parallel to the tokens, 1 = a target;
    None for plain text, where every token is one.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        if not meta_path.is_file():
            raise AigcError(f"{self.folder}: not a prepared dataset (no meta.json); run `aigc prepare` first")
        try:
            self.meta = read_json(meta_path, dict)
        except AigcError as e:
            raise AigcError(f"{e}; delete the folder and prepare again") from None
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
        self.masks = None
        if self.meta.get("masks"):
            self.masks = {}
            for name, arr in self.splits.items():
                path = self.folder / f"{name}.mask.bin"
                mask = np.memmap(path, dtype=np.uint8, mode="r") if path.is_file() else None
                if mask is None or mask.size != arr.size:
                    raise AigcError(f"{path}: missing or truncated target mask ({0 if mask is None else mask.size} of "
                                    f"{arr.size} tokens); delete the folder and prepare again")
                self.masks[name] = mask

    def tokens_per_char(self, split: str) -> float:
        """Tokens per character of ``split``; with masks, target tokens per target character."""
        s = self.meta["splits"][split]
        if self.masks is not None:
            return s["target_tokens"] / max(s["target_characters"], 1)
        return s["tokens"] / s["characters"]

    def check_block_size(self, block_size: int) -> None:
        for name, arr in self.splits.items():
            if arr.size < block_size + 2:
                raise AigcError(f"the {name} split has {arr.size} tokens, too few for model.block_size = "
                                f"{block_size}; use more data or a smaller block_size")

    def batch(self, split: str, batch_size: int, block_size: int, generator: torch.Generator):
        """A random batch: inputs and next-token targets, each ``(batch_size, block_size) int64``.

        With masks, a target that is not a training target (a token outside assistant turns)
        is -100, which the loss ignores.
        """
        arr = self.splits[split]
        starts = torch.randint(0, arr.size - block_size - 1, (batch_size,), generator=generator).tolist()
        x = np.stack([arr[s:s + block_size] for s in starts]).astype(np.int64)
        y = np.stack([arr[s + 1:s + 1 + block_size] for s in starts]).astype(np.int64)
        if self.masks is not None:
            keep = np.stack([self.masks[split][s + 1:s + 1 + block_size] for s in starts])
            y[keep == 0] = IGNORE_INDEX
        return torch.from_numpy(x), torch.from_numpy(y)

    def windows(self, split: str, block_size: int, max_tokens: int = 0):
        """Consecutive non-overlapping windows over a split, for a full evaluation pass.

        Yields ``(x, y)`` pairs of shape ``(1, t)`` with t <= block_size, covering the
        first ``max_tokens`` predictions (all when 0); with masks, targets outside assistant
        turns are -100, as in :meth:`batch`.
        """
        arr = self.splits[split]
        end = arr.size - 1 if not max_tokens else min(arr.size - 1, max_tokens)
        for s in range(0, end, block_size):
            t = min(block_size, end - s)
            chunk = np.asarray(arr[s:s + t + 1], dtype=np.int64)
            y = chunk[1:].copy()
            if self.masks is not None:
                y[np.asarray(self.masks[split][s + 1:s + t + 1]) == 0] = IGNORE_INDEX
            yield torch.from_numpy(chunk[:-1])[None], torch.from_numpy(y)[None]


def bits_per_char(loss_nats: float, tokens_per_char: float) -> float:
    """Bits per character from mean loss per token in nats: loss * (tokens / chars) / ln 2."""
    return loss_nats * tokens_per_char / math.log(2)
