"""One writer per run folder: ``RUN/.lock`` holds the training process's PID, host and start time.

The lock is an ``flock`` on that file, held for as long as the training runs; the kernel
releases it when the process ends, however it ends. A second training into the same folder
finds it held and is refused at once, naming the holder. A lock file whose flock is free was
left by a process that is gone (killed, crashed): it is taken over with a line saying so.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from aigc.errors import AigcError

LOCK = ".lock"


class RunLock:
    """``with RunLock(run_dir):`` the run folder is this process's until the block ends.

    Raises:
        AigcError: another process holds the lock (its PID, host and start are named), or the
            folder or lock file cannot be created.
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK
        self.fd: int | None = None
        self.created = not Path(run_dir).exists()  # removed again if the run leaves it empty

    def __enter__(self) -> "RunLock":
        for _ in range(3):  # a holder that ends removes the file: lock the file that is there now
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe(_read(fd))
                os.close(fd)
                raise AigcError(f"{self.path.parent}: another training is writing to this run folder ({holder}); "
                                "wait for it to end, or set --train.out_dir to another folder") from None
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        else:
            raise AigcError(f"{self.path}: the run folder's lock keeps changing; is another training starting?")
        stale = _read(fd)
        if stale:
            print(f"{self.path.parent}: taking over the lock left by a training that is gone ({_describe(stale)})",
                  file=sys.stderr)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode("utf-8"), 0)
        self.fd = fd
        return self

    def _open(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise AigcError(f"{self.path}: cannot create the run folder's lock ({e.strerror or e})") from None

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            try:
                os.unlink(self.path)  # while still holding it: no one else can have taken it meanwhile
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None
            if self.created:
                try:
                    self.path.parent.rmdir()  # only when empty: a run that failed before writing anything
                except OSError:
                    pass


def _read(fd: int) -> dict:
    try:
        raw = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
    except (ValueError, UnicodeDecodeError):
        return {"pid": "?", "host": "?"}
    return raw if isinstance(raw, dict) else {}


def _describe(holder: dict) -> str:
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, since {holder.get('started', '?')}"
            if holder else "a process that has not written its name yet")
