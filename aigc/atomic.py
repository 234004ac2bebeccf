"""Atomic file and folder writes (temporary sibling, then rename), and the one JSON reader.

Base layer: knows files and JSON, nothing of models, configs or runs.

A crash (or SIGKILL) at any moment leaves either the old file or the complete new one, never
a half-written file; a failed write (disk full, a file-size limit, permissions) is one
:class:`AigcError` naming the target and the cause, with the old file or folder in place. A
target that is a symbolic link, a device, a FIFO or a socket is never replaced. Used for every
output aigc writes.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import stat
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


def check_target(path: Path, folder: bool = False) -> None:
    """Refuse to replace what is not ours to replace: a symbolic link (whatever it points at), a
    device, a FIFO or a socket, or a folder where a file goes (and a file where a folder goes).

    Raises:
        AigcError: naming ``path`` and what it is.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise AigcError(f"{path}: cannot be written ({e.strerror or e})") from None
    kind = ("a symbolic link" if stat.S_ISLNK(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode)
            or stat.S_ISBLK(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket"
            if stat.S_ISSOCK(st.st_mode) else None)
    if kind is None and folder and not stat.S_ISDIR(st.st_mode):
        kind = "a file, not a folder"
    if kind is None and not folder and stat.S_ISDIR(st.st_mode):
        kind = "a folder"
    if kind is not None:
        raise AigcError(f"{path}: is {kind}; refusing to replace it (remove it, or write somewhere else)")


def _write_error(path: Path, e: BaseException) -> AigcError | None:
    """The one-line error of a failed write (disk full, file-size limit, permission), or None when
    ``e`` is not about writing."""
    if isinstance(e, OSError):
        cause = {errno.ENOSPC: "no space left on the device", errno.EFBIG: "over the file-size limit",
                 errno.EDQUOT: "over the disk quota"}.get(e.errno, e.strerror or str(e))
        return AigcError(f"{path}: cannot write ({cause}); nothing there was replaced")
    if type(e).__name__ == "SafetensorError":  # safetensors reports I/O errors as its own type
        text = str(e)
        cause = ("over the file-size limit" if "FileTooLarge" in text or "File too large" in text else
                 "no space left on the device" if "StorageFull" in text or "No space" in text else text.splitlines()[0])
        return AigcError(f"{path}: cannot write ({cause}); nothing there was replaced")
    return None


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is untouched.

    Raises:
        AigcError: ``path`` is a symbolic link, a device, a FIFO, a socket or a folder; or the
            write failed (disk full, file-size limit, permission), naming ``path`` and the cause.
    """
    path = Path(path)
    check_target(path, folder=False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_error(path, e) from None
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # writers that replace the file (safetensors) create it 0600
        check_target(path, folder=False)  # nothing was put there meanwhile
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        error = _write_error(path, e)
        if error is not None:
            raise error from None
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_private(path: str | os.PathLike, data: bytes) -> None:
    """Write a secret (a key) to a new file ``path`` readable by its owner only (mode 0600 from the first
    byte), atomically and without replacing anything: the bytes go to a temporary file beside it, which
    is then hard-linked to ``path`` (an existing ``path``, or a link there, is never followed or replaced).

    Raises:
        AigcError: ``path`` exists, or the folder cannot be written.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    except FileExistsError:
        raise AigcError(f"{path}: exists; a key is never overwritten") from None
    except OSError as e:
        raise AigcError(f"{path}: cannot write ({e.strerror})") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, obj) -> None:
    """Atomically write ``obj`` as indented UTF-8 JSON to ``path``."""
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success rename it to ``path``.

    An existing folder at ``path`` is replaced only after the new one is complete. On an
    exception the temporary folder is removed and ``path`` is untouched.

    Raises:
        AigcError: ``path`` is a symbolic link, a file, a device, a FIFO or a socket; or a write
            failed (disk full, file-size limit, permission), naming ``path`` and the cause.
    """
    path = Path(path)
    check_target(path, folder=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as e:
        raise _write_error(path, e) from None
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        yield tmp
        for f in tmp.rglob("*"):  # files some writers create 0600 (safetensors) get the usual permissions
            if f.is_file():
                os.chmod(f, 0o666 & ~_UMASK)
        check_target(path, folder=True)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        error = _write_error(path, e)
        if error is not None:
            raise error from None
        if isinstance(e, AigcError) and str(tmp) in str(e):  # a file inside: named where it was to go
            raise AigcError(str(e).replace(str(tmp), str(path))) from None
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
