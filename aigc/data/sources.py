"""Text sources: turn a file, a directory or a named dataset into a list of documents.

- ``.txt``: one document per non-empty line, or, with ``separator`` set, documents
  separated by lines equal to it (``whole_file`` makes each file one document).
- ``.jsonl``: one JSON object per line, the document in ``field``.
- a directory: every file matching ``glob`` (sorted), each read as above.
- a named dataset (:data:`DATASETS`): shipped with the package, or ``python-stdlib``.
- code (``data.format = "code"``): source files of one or more directories, whole
  files byte for byte (:mod:`aigc.data.code`).
- music (``data.format = "music"``, a ``.abc``/``.mid``/MusicXML file, or the ``folk-abc`` dataset):
  one normalised ABC tune per document (:mod:`aigc.data.music`).
- chat (``data.format = "chat"``, or ``auto`` for a ``.jsonl`` whose first line holds a
  ``"messages"`` list): conversations, read by :func:`read_chat_source` and rendered
  with a chat template when shards are written (:mod:`aigc.data.chat`).

Input must be UTF-8; invalid bytes, binary files and empty corpora are
:class:`AigcError` naming the file (and byte offset or line).
"""

from __future__ import annotations

import json
import lzma
import os
from pathlib import Path

from tqdm import tqdm

from aigc.config import DataConfig
from aigc.data.code import read_code, read_python_stdlib, stdlib_root
from aigc.data.music import COLLECTIONS, MUSIC_SUFFIXES, TERMS, bach_chorales, music21_corpus, read_music
from aigc.errors import AigcError

BUILTIN = Path(__file__).parent / "builtin"

DATASETS = {
    "tang-poems": {
        "path": BUILTIN / "tang-poems.jsonl.xz",
        "field": "text",
        "description": "57k Tang poems (chinese-poetry, MIT), simplified characters, title + body per document",
    },
    "xin-qiji-ci": {
        "path": BUILTIN / "xin-qiji-ci.jsonl",
        "field": "text",
        "description": "the 629 ci of Xin Qiji (chinese-poetry, MIT), simplified, tune name + body; the style "
                       "set of `make demo`, left out of tang-base's pretraining",
    },
    "folk-abc": {
        "kind": "music",
        "collections": list(COLLECTIONS),
        "description": "12,000 folk tunes in ABC from the corpus inside the music21 package (O'Neill's, Ryan's "
                       "Mammoth, Aird's Airs, American fife and Northumbrian tunes, the Essen folksongs), "
                       "normalised headers; some encodings are for non-commercial use only (see aigc data list)",
    },
    "bach-chorales": {
        "kind": "music",
        "chorales": True,
        "description": "370 chorales of J. S. Bach in music21's corpus, their soprano melody as ABC (the "
                       "models and metrics here are melodic: the alto, tenor and bass are left out)",
    },
    "python-stdlib": {
        "path": stdlib_root(),
        "kind": "code",
        "description": "this Python's standard library, .py files without site-packages and tests (PSF license)",
    },
}


def decode_text(data: bytes, name: str) -> str:
    """UTF-8 text of a file's bytes (a leading BOM dropped).

    Raises:
        AigcError: naming ``name``: a NUL byte in the first 64 KiB (a binary file) or invalid UTF-8.
    """
    nul = data.find(b"\x00", 0, 1 << 16)
    if nul >= 0:
        raise AigcError(f"{name}: looks like a binary file (NUL byte at offset {nul}); expected UTF-8 text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise AigcError(f"{name}: invalid UTF-8 at byte offset {e.start}") from None
    return text.removeprefix("\ufeff")


def read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed if it ends in .xz."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise AigcError(f"{path}: cannot read ({e.strerror})") from None
    if path.suffix == ".xz":
        try:
            data = lzma.decompress(data)
        except lzma.LZMAError:
            raise AigcError(f"{path}: not a valid .xz file") from None
    return data


def text_documents(text: str, separator: str = "", whole_file: bool = False) -> list[str]:
    """Split text into documents: the whole text, lines, or blocks between separator lines."""
    if whole_file:
        return [text] if text.strip() else []
    if not separator:
        return [line.rstrip("\r") for line in text.split("\n") if line.strip()]
    docs, current = [], []
    for line in text.split("\n"):
        if line.rstrip("\r") == separator:
            docs.append("\n".join(current).strip("\n"))
            current = []
        else:
            current.append(line.rstrip("\r"))
    docs.append("\n".join(current).strip("\n"))
    return [d for d in docs if d.strip()]


def json_lines(text: str, name: str):
    """Yield ``(lineno, object)`` for each non-blank line of a JSONL text.

    Raises:
        AigcError: a line that is not JSON, naming ``name:lineno``.
    """
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise AigcError(f"{name}:{lineno}: invalid JSON ({e.msg})") from None
        except RecursionError:
            raise AigcError(f"{name}:{lineno}: JSON nested too deeply") from None
        yield lineno, obj


def jsonl_documents(text: str, field: str, name: str) -> list[str]:
    """The ``field`` of each JSON line; a bad line or missing field names its line number."""
    docs = []
    for lineno, obj in json_lines(text, name):
        if not isinstance(obj, dict) or field not in obj:
            raise AigcError(f"{name}:{lineno}: no field {field!r} (set data.field to the field holding the text)")
        if not isinstance(obj[field], str):
            raise AigcError(f"{name}:{lineno}: field {field!r} is {type(obj[field]).__name__}, expected a string")
        try:
            obj[field].encode("utf-8")
        except UnicodeEncodeError:
            raise AigcError(f"{name}:{lineno}: field {field!r} holds a lone surrogate escape, not valid text") from None
        if obj[field].strip():
            docs.append(obj[field])
    return docs


def file_documents(path: Path, cfg: DataConfig, fmt: str | None = None) -> list[str]:
    """Documents of one file, by ``fmt`` or by its extension (.jsonl -> jsonl, else txt)."""
    name = str(path)
    text = decode_text(read_bytes(path), name)
    stem = path.name.removesuffix(".xz")
    if (fmt or ("jsonl" if stem.endswith(".jsonl") else "txt")) == "jsonl":
        return jsonl_documents(text, cfg.field, name)
    return text_documents(text, cfg.separator, cfg.whole_file)


def is_chat_source(cfg: DataConfig) -> bool:
    """True for chat data: ``data.format = "chat"``, or ``auto`` with a ``.jsonl`` (or ``.jsonl.xz``) file
    whose first non-blank line is an object with a ``"messages"`` list."""
    if cfg.format == "chat":
        return True
    path = Path(cfg.source)
    if cfg.format != "auto" or cfg.dataset or not path.name.removesuffix(".xz").endswith(".jsonl") \
            or not path.is_file():
        return False
    try:
        if path.suffix == ".xz":
            with lzma.open(path, "rt", encoding="utf-8") as f:
                first = next((line for line in f if line.strip()), "")
        else:
            with open(path, encoding="utf-8") as f:
                first = next((line for line in f if line.strip()), "")
        obj = json.loads(first)
    except (OSError, lzma.LZMAError, UnicodeDecodeError, ValueError, RecursionError):
        return False  # the ordinary reader reports what is wrong with the file
    return isinstance(obj, dict) and isinstance(obj.get("messages"), list)


def is_music_source(cfg: DataConfig) -> bool:
    """True for music: the ``folk-abc`` dataset, ``data.format = "music"``, or ``auto`` with a file whose
    suffix is a music one (.abc, .mid, .midi, .xml, .musicxml)."""
    if cfg.dataset:
        return DATASETS.get(cfg.dataset, {}).get("kind") == "music"
    return cfg.format == "music" or (cfg.format == "auto" and Path(cfg.source).suffix.lower() in MUSIC_SUFFIXES
                                      and Path(cfg.source).is_file())


def data_terms(cfg: DataConfig) -> str | None:
    """The terms a model trained on ``cfg``'s data inherits, when the data carries any (``folk-abc``)."""
    return TERMS if cfg.dataset and DATASETS.get(cfg.dataset, {}).get("kind") == "music" else None


def source_name(cfg: DataConfig) -> str:
    """A short name for the corpus: the dataset name or the source file's stem."""
    if cfg.dataset:
        return cfg.dataset
    return Path(cfg.source).name.split(".")[0] or "corpus"


def read_documents(cfg: DataConfig, progress: bool = True) -> list[str]:
    """All documents of the configured source, in a deterministic order (see :func:`read_corpus`)."""
    return read_corpus(cfg, progress)[0]


def read_corpus(cfg: DataConfig, progress: bool = True) -> tuple[list[str], str | None]:
    """All documents of the configured source, in a deterministic order, and for code what was
    kept and skipped (one line; None for text).

    Code (``data.format = "code"`` or the ``python-stdlib`` dataset) is read by
    :mod:`aigc.data.code`: whole files, byte for byte; ``data.source`` may name several
    directories separated by ``os.pathsep`` (":" on Linux).

    Raises:
        AigcError: unknown dataset, missing path, bad file (binary, invalid UTF-8,
            bad JSON line), no matching files, or no documents at all.
    """
    if cfg.dataset and DATASETS.get(cfg.dataset, {}).get("kind") == "code":
        corpus = read_python_stdlib(cfg.max_file_bytes)
        return corpus.texts, corpus.report()
    if is_music_source(cfg):
        if cfg.dataset:
            spec = DATASETS[cfg.dataset]
            paths = bach_chorales() if spec.get("chorales") else [music21_corpus() / c for c in spec["collections"]]
            corpus = read_music(paths, progress, label="music21")
        else:
            corpus = read_music([Path(p) for p in cfg.source.split(os.pathsep) if p], progress)
        return corpus.texts, corpus.report()
    if not cfg.dataset and cfg.format == "code":
        corpus = read_code([p for p in cfg.source.split(os.pathsep) if p], cfg.extensions, cfg.max_file_bytes)
        return corpus.texts, corpus.report()
    if cfg.dataset:
        if cfg.dataset not in DATASETS:
            raise AigcError(f"unknown dataset {cfg.dataset!r} (known: {', '.join(DATASETS)})")
        spec = DATASETS[cfg.dataset]
        if not spec["path"].is_file():
            raise AigcError(f"{spec['path']}: the {cfg.dataset} data file is missing from the package; "
                            "rebuild it with scripts/build_tang_poems.py")
        docs = jsonl_documents(decode_text(read_bytes(spec["path"]), str(spec["path"])), spec["field"],
                               str(spec["path"]))
        where = cfg.dataset
    else:
        path = Path(cfg.source)
        if not path.exists():
            raise AigcError(f"{path}: no such file or directory")
        fmt = cfg.format if cfg.format != "auto" else ("dir" if path.is_dir() else None)
        if fmt == "dir" or path.is_dir():
            if not path.is_dir():
                raise AigcError(f"{path}: data.format = 'dir' but this is not a directory")
            try:
                files = sorted(p for p in path.glob(cfg.glob) if p.is_file())
            except (ValueError, NotImplementedError) as e:
                raise AigcError(f"data.glob = {cfg.glob!r}: not a usable pattern ({e})") from None
            if not files:
                raise AigcError(f"{path}: no files match data.glob = {cfg.glob!r}")
            docs = []
            for f in tqdm(files, desc="reading", unit="file", disable=not progress or len(files) < 50):
                docs.extend(file_documents(f, cfg))
        else:
            docs = file_documents(path, cfg, fmt)
        where = str(path)
    if not docs:
        raise AigcError(f"{where}: the corpus is empty (no non-blank documents)")
    return docs, None
