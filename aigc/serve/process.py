"""Start `aigc serve` in a child process on a free loopback port (for scripts, benchmarks and tests)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (another process may still take it before we bind)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(models: list[str], *flags: str, timeout: float = 120,
                 capture: bool = False) -> tuple[subprocess.Popen, str]:
    """Run ``python -m aigc serve MODELS --port P FLAGS`` and wait until ``/health`` answers.

    Args:
        models: ``PATH`` or ``NAME=PATH`` items, as on the command line.
        capture: send the server's output to a pipe (read it on failure) instead of the terminal.

    Returns:
        the process and its base URL ``http://127.0.0.1:P``; terminate the process when done.

    Raises:
        RuntimeError: the server exited or did not answer within ``timeout`` seconds.
    """
    port = free_port()
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    out = subprocess.PIPE if capture else None
    proc = subprocess.Popen([sys.executable, "-m", "aigc", "serve", *models, "--port", str(port), *flags],
                            stdout=out, stderr=subprocess.STDOUT if capture else None, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            output = proc.stdout.read() if capture else ""
            raise RuntimeError(f"aigc serve exited with status {proc.returncode}: {output}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"aigc serve did not answer {url}/health within {timeout:.0f} s")
