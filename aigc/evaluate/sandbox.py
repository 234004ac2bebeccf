"""Run untrusted generated code in a sandbox, never in the caller's process.

Each program runs in its own Python process (``python -I -S -B``: no site-packages,
no environment, no bytecode written) inside a throwaway working directory, with
these layers, each of which alone stops some of what a hostile completion can do:

1. **Time and memory.** A wall-clock timeout kills the whole process group;
   resource limits set before the program starts: address space (``memory_mb``), CPU
   seconds, file size (10 MB), open files (64), no core dumps, and processes (16,
   effective for an unprivileged user).
2. **No network.** A new network namespace (``unshare -n``; ``unshare -rn``, a user
   namespace, for a non-root caller) where only an unconfigured loopback exists. Where
   the kernel refuses both, :func:`check_sandbox` refuses to run unless the caller
   passes ``allow_network=True`` (the CLI's ``--unsafe-allow-network``).
3. **An unprivileged user.** Run as root, the program is started as ``nobody`` (via
   ``setpriv``) when that user can reach the interpreter; file permissions then protect
   the host. When it cannot (an interpreter under ``/root``), this layer is off and the
   report says so.
4. **An audit hook** (PEP 578) installed before the program runs: opening files
   outside the working directory (reading the interpreter's own library excepted),
   deleting, renaming or listing outside it, creating processes (fork, exec, spawn,
   ``os.system``, subprocess), signalling other processes, sockets and ctypes are refused
   with ``PermissionError: sandbox: ...``. PEP 578 hooks are not a security boundary on
   their own; here they give each refusal a clear reason and back the layers above.

The result names why a program failed (the last line of its traceback, "timed out
after 10 s", "killed: CPU time limit", ...). Output is captured to files, capped.
"""

from __future__ import annotations

import functools
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass

from aigc.errors import AigcError

NOBODY = "nobody"

# The code that runs first in the child: limits, then the audit hook, then the program.
RUNNER = r'''
import json, os, resource, sys
cfg = json.loads(sys.argv[1])
def limit(kind, value):
    try:
        resource.setrlimit(kind, (value, value))
    except (ValueError, OSError):
        pass
limit(resource.RLIMIT_AS, cfg["memory_bytes"])
limit(resource.RLIMIT_CPU, cfg["cpu_seconds"])
limit(resource.RLIMIT_FSIZE, 10 * 2**20)
limit(resource.RLIMIT_NOFILE, 64)
limit(resource.RLIMIT_CORE, 0)
if os.getuid() != 0:
    limit(resource.RLIMIT_NPROC, 16)
HOME = os.path.realpath(os.getcwd())
READABLE = tuple(os.path.realpath(p) for p in cfg["readable"]) + (HOME,)
BLOCKED = {"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "subprocess.Popen",
           "os.kill", "os.killpg", "signal.pthread_kill", "os.setuid", "os.setgid", "os.chroot",
           "socket.__new__", "socket.bind", "socket.connect", "socket.getaddrinfo", "socket.sendto",
           "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function", "sys.setprofile",
           "sys.settrace", "sys.addaudithook"}
BLOCKED_IMPORTS = {"ctypes", "_ctypes", "_posixsubprocess", "pty", "multiprocessing"}
PATH_EVENTS = {"os.remove", "os.rmdir", "os.rename", "shutil.rmtree", "os.chmod", "os.chown", "os.link",
               "os.symlink", "os.truncate", "os.utime", "os.mkdir", "os.listdir", "os.scandir", "os.chdir",
               "shutil.copyfile", "shutil.move", "os.chflags", "os.lchflags", "os.mkfifo", "os.mknod"}
def inside(path, roots):
    if isinstance(path, int):
        return True  # an open file descriptor: was checked when it was opened
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    real = os.path.realpath(os.path.join(HOME, path))
    return any(real == r or real.startswith(r + os.sep) for r in roots)
def refuse(what):
    raise PermissionError("sandbox: " + what)
def hook(event, args):
    if event == "open":
        path, mode, flags = args
        if path is None:
            return
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        if not inside(path, (HOME,) if writing else READABLE):
            refuse(f"open({path!r}, {mode!r}) outside the working directory")
    elif event == "import":
        if args[0] in BLOCKED_IMPORTS:
            refuse(f"import {args[0]} is not allowed")
    elif event in BLOCKED or event.startswith("socket."):
        refuse(f"{event} is not allowed")
    elif event in PATH_EVENTS:
        roots = READABLE if event in ("os.listdir", "os.scandir") else (HOME,)
        paths = [a for a in args if isinstance(a, (str, bytes, os.PathLike))]
        for p in paths:
            if not inside(os.fspath(p), roots):
                refuse(f"{event}({os.fspath(p)!r}) outside the working directory")
sys.addaudithook(hook)
del json, resource
import runpy
runpy.run_path("program.py", run_name="__main__")
'''


@dataclass
class SandboxResult:
    """How one program ended.

    Attributes:
        passed: exit status 0 within the time limit.
        reason: "passed", the last line of the traceback ("AssertionError", "PermissionError:
            sandbox: ..."), "timed out after N s", or "killed: ..." for a signal.
        seconds: wall-clock time.
        stdout, stderr: the first 10 kB of each.
    """

    passed: bool
    reason: str
    seconds: float
    stdout: str = ""
    stderr: str = ""


@dataclass
class SandboxInfo:
    """Which layers the sandbox can use on this machine."""

    netns: list[str] | None  # the command prefix that gives a new network namespace, or None
    user: str | None  # "nobody" when the program runs as nobody, else None

    def describe(self) -> str:
        net = "new network namespace" if self.netns else "NETWORK NOT ISOLATED (--unsafe-allow-network)"
        who = f"runs as {self.user}" if self.user else "runs as the calling user"
        return f"own process, time/memory/file limits, {net}, {who}, audit hook, throwaway working directory"


def _works(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@functools.lru_cache(maxsize=None)
def sandbox_info() -> SandboxInfo:
    """Probe the machine once: can we make a network namespace, and run as nobody?"""
    root = os.geteuid() == 0
    netns = None
    if shutil.which("unshare"):
        for prefix in (["unshare", "-n"], ["unshare", "-r", "-n"]) if root else (["unshare", "-r", "-n"],):
            if _works(prefix + ["true"]):
                netns = prefix
                break
    user = None
    if root and shutil.which("setpriv"):
        try:
            pwd.getpwnam(NOBODY)
            probe = subprocess.run(_as_nobody() + [sys.executable, "-I", "-S", "-c", "import sys; print(sys.base_prefix)"],
                                   capture_output=True, text=True, timeout=20)
            # the same interpreter, not another one found on the way (a path nobody cannot reach)
            if probe.returncode == 0 and probe.stdout.strip() == sys.base_prefix:
                user = NOBODY
        except (KeyError, OSError, subprocess.TimeoutExpired):
            pass
    return SandboxInfo(netns, user)


def _as_nobody() -> list[str]:
    pw = pwd.getpwnam(NOBODY)
    return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups"]


def check_sandbox(allow_network: bool = False) -> SandboxInfo:
    """The sandbox's layers here.

    Raises:
        AigcError: no network namespace can be made and ``allow_network`` is False.
    """
    info = sandbox_info()
    if info.netns is None and not allow_network:
        raise AigcError("cannot isolate generated code from the network here (`unshare -n` and `unshare -rn` "
                        "both fail: no privileges or user namespaces disabled); refusing to run it. Pass "
                        "--unsafe-allow-network to run it anyway, with the other limits only")
    return info


def _readable_roots() -> list[str]:
    paths = sysconfig.get_paths()
    roots = {paths["stdlib"], paths["platstdlib"], sys.base_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable))}
    return sorted(roots)


def run_sandboxed(program: str, timeout: float = 10.0, memory_mb: int = 1024,
                  allow_network: bool = False) -> SandboxResult:
    """Run Python source ``program`` in the sandbox (see the module docstring).

    Raises:
        AigcError: the network cannot be isolated and ``allow_network`` is False.
    """
    info = check_sandbox(allow_network)
    work = tempfile.mkdtemp(prefix="aigc-sandbox-")
    logs = tempfile.mkdtemp(prefix="aigc-sandbox-logs-")  # outside the program's reach
    try:
        with open(os.path.join(work, "program.py"), "w", encoding="utf-8") as f:
            f.write(program)
        cmd = list(info.netns or [])
        if info.user:
            pw = pwd.getpwnam(info.user)
            os.chown(work, pw.pw_uid, pw.pw_gid)
            os.chown(os.path.join(work, "program.py"), pw.pw_uid, pw.pw_gid)
            cmd += _as_nobody()
        cfg = {"memory_bytes": memory_mb * 2**20, "cpu_seconds": int(timeout) + 1, "readable": _readable_roots()}
        cmd += [sys.executable, "-I", "-S", "-B", "-c", RUNNER, json.dumps(cfg)]
        out_path, err_path = os.path.join(logs, "stdout"), os.path.join(logs, "stderr")
        start = time.perf_counter()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(cmd, cwd=work, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, start_new_session=True)
            try:
                code = proc.wait(timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # everything it started, too
                except (ProcessLookupError, PermissionError):
                    pass
                code = proc.wait()
        seconds = time.perf_counter() - start
        stdout = _read_head(out_path)
        stderr = _read_head(err_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(logs, ignore_errors=True)
    if timed_out:
        return SandboxResult(False, f"timed out after {timeout:g} s", seconds, stdout, stderr)
    if code == 0:
        return SandboxResult(True, "passed", seconds, stdout, stderr)
    if code < 0:
        names = {signal.SIGXCPU: "CPU time limit", signal.SIGXFSZ: "file size limit", signal.SIGKILL: "SIGKILL",
                 signal.SIGSEGV: "segmentation fault"}
        return SandboxResult(False, f"killed: {names.get(-code, signal.Signals(-code).name)}", seconds, stdout,
                             stderr)
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    return SandboxResult(False, lines[-1][:300] if lines else f"exit status {code}", seconds, stdout, stderr)


def _read_head(path: str, limit: int = 10_000) -> str:
    with open(path, "rb") as f:
        return f.read(limit).decode("utf-8", errors="replace")
