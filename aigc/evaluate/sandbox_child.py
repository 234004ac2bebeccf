"""The code that runs in the sandbox's child processes (standard library only: it is started with
``python -I -S -B`` and never imports aigc).

Two roles, each its own process (:mod:`aigc.evaluate.sandbox` starts them):

- ``worker`` (inside the kernel sandbox, the only process that runs generated code): sets its
  resource limits, installs the audit hook, then either runs ``program.py`` to its end
  (``run``), or executes it (the prompt and the completion) and answers calls of its entry
  point coming in on one pipe with the returned values on another (``serve``);
- ``judge`` (outside, never loads generated code): executes the problem's prompt and tests,
  with the entry point replaced by a proxy that calls the worker, and prints the verdict.

A completion therefore cannot fake a pass: the assertions run in the judge, a process it
cannot reach; the worker can only answer calls with values, and an exit, a crash, a hang or a
garbled answer ends the test as failed.

Values cross as one JSON line each: None, bools, ints and strings as themselves, lists as
arrays, and one-key objects for the rest (``{"float": repr}``, ``{"tuple": [...]}``,
``{"dict": [[k, v], ...]}``, ``{"set": [...]}``, ``{"frozenset": [...]}``, ``{"bytes": hex}``,
``{"complex": [re, im]}``).
"""

from __future__ import annotations

import builtins
import json
import os
import sys

MAX_LINE = 4 * 2**20  # bytes of one message at most (the judge decodes it: keep it small)
MAX_DEPTH = 100  # nesting of one value at most


# ---------------------------------------------------------------- values across the pipe
def encode(value, depth: int = 0):
    """A JSON-ready form of ``value`` (see the module docstring). Raises TypeError for other types."""
    if depth > MAX_DEPTH:
        raise TypeError("value nested too deeply to leave the sandbox")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return {"float": repr(float(value))}
    if isinstance(value, list):
        return [encode(v, depth + 1) for v in value]
    if isinstance(value, tuple):
        return {"tuple": [encode(v, depth + 1) for v in value]}
    if isinstance(value, dict):
        return {"dict": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if isinstance(value, (set, frozenset)):
        return {"frozenset" if isinstance(value, frozenset) else "set": [encode(v, depth + 1) for v in value]}
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": bytes(value).hex()}
    if isinstance(value, complex):
        return {"complex": [repr(value.real), repr(value.imag)]}
    raise TypeError(f"a {type(value).__name__} cannot leave the sandbox (only plain data: numbers, strings, "
                    "lists, tuples, dicts, sets, bytes, None)")


def decode(data, depth: int = 0):
    """The value of an encoded form. Raises ValueError for anything that is not one."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if data is None or isinstance(data, (bool, int, str)):
        return data
    if isinstance(data, list):
        return [decode(v, depth + 1) for v in data]
    if isinstance(data, dict) and len(data) == 1:
        (tag, body), = data.items()
        if tag == "float" and isinstance(body, str):
            return float(body)
        if tag == "complex" and isinstance(body, list) and len(body) == 2:
            return complex(float(body[0]), float(body[1]))
        if tag == "bytes" and isinstance(body, str):
            return bytes.fromhex(body)
        if isinstance(body, list):
            items = [decode(v, depth + 1) for v in body]
            if tag == "tuple":
                return tuple(items)
            if tag == "set":
                return set(items)
            if tag == "frozenset":
                return frozenset(items)
            if tag == "dict" and all(isinstance(kv, list) and len(kv) == 2 for kv in items):
                return {k: v for k, v in items}
    raise ValueError("not an encoded value")


class Channel:
    """One JSON object per line over two pipe file descriptors."""

    def __init__(self, read_fd: int, write_fd: int):
        self.reader = os.fdopen(read_fd, "rb")
        self.write_fd = write_fd

    def send(self, message: dict) -> None:
        data = (json.dumps(message, ensure_ascii=True) + "\n").encode("ascii")
        view = memoryview(data)
        while view:
            view = view[os.write(self.write_fd, view):]

    def receive(self) -> dict | None:
        """The next message; None at the end of the stream. Raises ValueError for a malformed one."""
        line = self.reader.readline(MAX_LINE + 1)
        if not line:
            return None
        if len(line) > MAX_LINE or not line.endswith(b"\n"):
            raise ValueError("message too long")
        message = json.loads(line)
        if not isinstance(message, dict):
            raise ValueError("message is not an object")
        return message


# ---------------------------------------------------------------- the worker (generated code)
def limit(cfg: dict) -> None:
    """Resource limits of the worker, set before any generated code runs (it cannot raise them)."""
    import resource

    for kind, value in ((resource.RLIMIT_AS, cfg["memory_bytes"]), (resource.RLIMIT_CPU, cfg["cpu_seconds"]),
                        (resource.RLIMIT_FSIZE, 10 * 2**20), (resource.RLIMIT_NOFILE, 64),
                        (resource.RLIMIT_CORE, 0)):
        try:
            resource.setrlimit(kind, (value, value))
        except (ValueError, OSError):
            pass


def install_audit_hook(readable: list[str]) -> None:
    """PEP 578 hook refusing, with a clear reason, what a completion should not do: files outside
    the working folder (reading the interpreter's library excepted), processes, signals, sockets,
    ctypes. Not a security boundary (code in the process can reach around it): the kernel layers
    are; this one names what was refused."""
    home = os.path.realpath(os.getcwd())
    roots_read = tuple(os.path.realpath(p) for p in readable) + (home,)
    blocked = {"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "subprocess.Popen",
               "os.kill", "os.killpg", "signal.pthread_kill", "os.setuid", "os.setgid", "os.chroot",
               "socket.__new__", "socket.bind", "socket.connect", "socket.getaddrinfo", "socket.sendto",
               "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function", "sys.setprofile",
               "sys.settrace", "sys.addaudithook"}
    blocked_imports = {"ctypes", "_ctypes", "_posixsubprocess", "pty", "multiprocessing"}
    path_events = {"os.remove", "os.rmdir", "os.rename", "shutil.rmtree", "os.chmod", "os.chown", "os.link",
                   "os.symlink", "os.truncate", "os.utime", "os.mkdir", "os.listdir", "os.scandir", "os.chdir",
                   "shutil.copyfile", "shutil.move", "os.chflags", "os.lchflags", "os.mkfifo", "os.mknod"}

    def inside(path, roots):
        if isinstance(path, int):
            return True  # an open file descriptor: checked when it was opened
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        real = os.path.realpath(os.path.join(home, path))
        return any(real == r or real.startswith(r + os.sep) for r in roots)

    def refuse(what):
        raise PermissionError("sandbox: " + what)

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            if path is None:
                return
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                (flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if not inside(path, (home,) if writing else roots_read):
                refuse(f"open({path!r}, {mode!r}) outside the working directory")
        elif event == "import":
            if args[0] in blocked_imports:
                refuse(f"import {args[0]} is not allowed")
        elif event in blocked or event.startswith("socket."):
            refuse(f"{event} is not allowed")
        elif event in path_events:
            roots = roots_read if event in ("os.listdir", "os.scandir") else (home,)
            for p in (a for a in args if isinstance(a, (str, bytes, os.PathLike))):
                if not inside(os.fspath(p), roots):
                    refuse(f"{event}({os.fspath(p)!r}) outside the working directory")

    sys.addaudithook(hook)


def serve(channel: Channel, namespace: dict, entry_point: str) -> None:
    """Answer calls of ``namespace[entry_point]`` until the judge closes the channel."""
    function = namespace.get(entry_point)
    if not callable(function):
        channel.send({"loaded": False, "error": f"NameError: the program defines no function {entry_point!r}"})
        return
    channel.send({"loaded": True})
    while True:
        request = channel.receive()
        if request is None:
            return
        try:
            args = decode(request["args"])
            kwargs = decode(request["kwargs"])
            reply = {"value": encode(function(*args, **kwargs))}
        except BaseException as e:  # the candidate's own exception, returned to the test that called it
            reply = {"raised": type(e).__name__, "message": str(e)[:2000]}
        channel.send(reply)


def worker(cfg: dict) -> None:
    """Run (``cfg["mode"] == "run"``) or serve (``"serve"``) ``program.py`` in this folder."""
    channel = Channel(*cfg["fds"]) if cfg["mode"] == "serve" else None
    limit(cfg)
    install_audit_hook(cfg["readable"])
    with open("program.py", encoding="utf-8") as f:
        source = f.read()
    namespace = {"__name__": "__main__", "__file__": "program.py", "__builtins__": __builtins__}
    if channel is None:
        exec(compile(source, "program.py", "exec"), namespace)
        return
    try:
        exec(compile(source, "program.py", "exec"), namespace)
    except BaseException as e:  # SystemExit included: a program that leaves before its tests fails
        lines = str(e).splitlines()
        channel.send({"loaded": False, "error": f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")})
        return
    serve(channel, namespace, cfg["entry_point"])


# ---------------------------------------------------------------- the judge (the tests)
class ProgramEnded(Exception):
    """The worker stopped answering: it exited, crashed or sent something that is not an answer."""


class Remote:
    """Stands for the entry point in the tests: each call is answered by the worker."""

    def __init__(self, channel: Channel, name: str):
        self.channel, self.__name__ = channel, name

    def __call__(self, *args, **kwargs):
        self.channel.send({"args": encode(list(args)), "kwargs": encode(dict(kwargs))})
        try:
            reply = self.channel.receive()
            if reply is None:
                raise ProgramEnded("the program ended before its tests did")
            raised = str(reply["raised"]) if "raised" in reply else None
            value = decode(reply["value"]) if raised is None else None
        except (ValueError, KeyError, TypeError, RecursionError, MemoryError) as e:
            raise ProgramEnded(f"the program sent something that is not an answer ({type(e).__name__})") from None
        if raised is not None:  # the candidate's own exception, for the test to catch or fail on
            raise _exception(raised, str(reply.get("message", "")))
        return value


def _exception(name: str, message: str) -> Exception:
    """The built-in exception class ``name`` (an Exception, not SystemExit and the like) with
    ``message``; a RuntimeError naming it for any other."""
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except Exception:
            pass
    return RuntimeError(f"{name}: {message}")


def judge(cfg: dict) -> dict:
    """Run the problem's tests against the worker; return the verdict ``{"passed", "reason"}``."""
    channel = Channel(*cfg["fds"])
    with open(cfg["problem"], encoding="utf-8") as f:
        problem = json.load(f)
    try:
        hello = channel.receive()
    except ValueError:
        hello = None
    if hello is None:
        return {"passed": False, "reason": "ended", "detail": "the program ended before its tests ran"}
    if not hello.get("loaded"):
        return {"passed": False, "reason": str(hello.get("error", "the program did not load"))[:300]}
    namespace = {"__name__": "__main__"}
    entry = problem["entry_point"]
    try:
        exec(compile(problem["prompt"], "prompt.py", "exec"), namespace)  # the problem's helpers (trusted)
        remote = namespace[entry] = Remote(channel, entry)
        exec(compile(problem["test"], "test.py", "exec"), namespace)
        namespace["check"](remote)
    except ProgramEnded as e:
        return {"passed": False, "reason": "ended", "detail": str(e)}
    except Exception as e:
        lines = str(e).splitlines()
        return {"passed": False, "reason": f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")[:300]}
    return {"passed": True, "reason": "passed"}


def main() -> None:
    role, cfg = sys.argv[1], json.loads(sys.argv[2])
    if role == "worker":
        worker(cfg)
    elif role == "judge":
        verdict = judge(cfg)
        sys.stdout.write(json.dumps(verdict) + "\n")
        sys.stdout.flush()
        os._exit(0)  # the verdict is written: no interpreter shutdown work (a worker may still be dying)
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main()
