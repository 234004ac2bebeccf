"""Atomic file and folder writes (temporary sibling, then rename), and the one JSON reader.

Base layer: knows files and JSON, nothing of models, configs or runs.

A crash (or SIGKILL) at any moment leaves either the old file or the complete
new one, never a half-written file. Used for every output aigc writes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from aigc.errors import AigcError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()  # temp files are created 0600; the final files get the usual permissions


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # writers that replace the file (safetensors) create it 0600
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj) -> None:
    """Atomically write ``obj`` as indented UTF-8 JSON to ``path``."""
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success rename it to ``path``.

    ``path`` must not exist yet (an existing folder is replaced only after the new
    one is complete). On an exception the temporary folder is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        yield tmp
        for f in tmp.rglob("*"):  # files some writers create 0600 (safetensors) get the usual permissions
            if f.is_file():
                os.chmod(f, 0o666 & ~_UMASK)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_json(path: str | os.PathLike, expect: type | None = None):
    """The JSON value in ``path`` (UTF-8).

    Args:
        expect: when given (``dict`` or ``list``), the type the top-level value must have.

    Raises:
        AigcError: naming ``path``: missing or unreadable, not UTF-8, not valid JSON (with the
            line and column), or not of type ``expect``.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise AigcError(f"{path}: missing") from None
    except UnicodeDecodeError as e:
        raise AigcError(f"{path}: not valid JSON (not UTF-8 text at byte offset {e.start})") from None
    except OSError as e:
        raise AigcError(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise AigcError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if expect is not None and not isinstance(value, expect):
        kind = {dict: "a JSON object", list: "a JSON array"}.get(expect, expect.__name__)
        raise AigcError(f"{path}: expected {kind}, got {type(value).__name__}")
    return value
