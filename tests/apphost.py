"""app.py as a real process on a free port, for the tests that talk to it over HTTP or drive a browser."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from jobs.launcher import free_port

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def running_app(args: list[str], env: dict | None = None, timeout: float = 90):
    """Yields the app's URL once it answers; the process is stopped afterwards."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"the app did not start: {proc.stdout.read()}")
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
