"""The worker as a real process: ``runpod_handler.py --rp_serve_api`` on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests

from tests.support.bucket import BUCKET_ENV_KEYS
from tests.support.net import free_port, stop_process
from tests.support.paths import ROOT


class WorkerProcess:
    """``runpod_handler.py --rp_serve_api`` running as a real process on 127.0.0.1.

    Its environment is this process's without the bucket variables, then ``env``: pass the model
    cache (e.g. ``tiny_models.tiny_cache_env``) and the bucket explicitly.
    """

    def __init__(self, env: dict[str, str], tmpdir: Path, log_path: Path,
                 preexec_fn: Callable[[], None] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmpdir = tmpdir
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items() if k not in BUCKET_ENV_KEYS}
        full_env.update({"TMPDIR": str(tmpdir), "PYTHONUNBUFFERED": "1", **env})
        self.proc = subprocess.Popen(
            [sys.executable, "runpod_handler.py", "--rp_serve_api", "--rp_api_host", "127.0.0.1",
             "--rp_api_port", str(self.port)],
            cwd=ROOT, env=full_env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT, preexec_fn=preexec_fn,
        )

    def wait_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited {self.proc.returncode}:\n{self.log()}")
            try:
                requests.get(f"{self.url}/docs", timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout_s}s:\n{self.log()}")

    def post(self, path: str, payload: dict | None = None, timeout: float = 120) -> dict:
        response = requests.post(f"{self.url}{path}", json=payload, timeout=timeout)
        assert response.status_code == 200, response.text
        return response.json()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc)
