"""Start `llavakit serve` in its own process for a benchmark and wait until it answers /health.

    from served import launch        # benchmarks run as scripts, so this folder is on sys.path
    proc, url = launch("nano", ["--max-batch-size", "16"])
"""

from __future__ import annotations

import subprocess
import sys
import time

import httpx


def launch(model: str, options: list[str], *, log_level: str = "warning",
           timeout_s: float = 300.0) -> tuple[subprocess.Popen, str]:
    """The server process and its base URL, once /health answers 200 (SystemExit if it dies or hangs)."""
    from llavakit.serve.cli import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llavakit", "serve", model, "--port", str(port),
                             "--log-level", log_level, *options])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"the server did not come up within {timeout_s:.0f} s")
