"""The worker as a real process on 127.0.0.1: ``runpod_handler.py --rp_serve_api`` (the queue handler's
local API) or ``WORKER_MODE=http`` (the load-balancing endpoint's server)."""

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


def process_env(env: dict[str, str], tmpdir: Path) -> dict[str, str]:
    """This process's environment without the bucket variables, then ``env``, with ``TMPDIR`` at ``tmpdir``."""
    full_env = {k: v for k, v in os.environ.items() if k not in BUCKET_ENV_KEYS}
    full_env.update({"TMPDIR": str(tmpdir), "PYTHONUNBUFFERED": "1", **env})
    return full_env


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
        self.proc = subprocess.Popen(
            [sys.executable, "runpod_handler.py", "--rp_serve_api", "--rp_api_host", "127.0.0.1",
             "--rp_api_port", str(self.port)],
            cwd=ROOT, env=process_env(env, tmpdir), stdout=log_path.open("wb"), stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
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


class HttpWorkerProcess:
    """``WORKER_MODE=http python runpod_handler.py`` on 127.0.0.1 (``PORT``, and ``PORT_HEALTH`` when
    ``health_port``); the environment as :class:`WorkerProcess`'s. ``pings`` records every ``/ping``
    status :meth:`wait_ready` saw, in order."""

    def __init__(self, env: dict[str, str], tmpdir: Path, log_path: Path, health_port: bool = False):
        self.port = free_port()
        self.health_port = free_port() if health_port else self.port
        self.url = f"http://127.0.0.1:{self.port}"
        self.ping_url = f"http://127.0.0.1:{self.health_port}/ping"
        self.tmpdir = tmpdir
        self.log_path = log_path
        self.pings: list[int] = []
        server_env = {"WORKER_MODE": "http", "HTTP_HOST": "127.0.0.1", "PORT": str(self.port),
                      **({"PORT_HEALTH": str(self.health_port)} if health_port else {}), **env}
        self.proc = subprocess.Popen([sys.executable, "runpod_handler.py"], cwd=ROOT,
                                     env=process_env(server_env, tmpdir), stdout=log_path.open("wb"),
                                     stderr=subprocess.STDOUT)

    def ping(self) -> int | None:
        """``/ping``'s status, recorded; None while nothing listens yet."""
        try:
            status = requests.get(self.ping_url, timeout=5).status_code
        except requests.ConnectionError:
            return None
        self.pings.append(status)
        return status

    def wait_for_ping(self, wanted: Callable[[int], bool], timeout_s: float = 120) -> int:
        """Poll ``/ping`` until its status is one ``wanted`` accepts; return it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited {self.proc.returncode}:\n{self.log()}")
            status = self.ping()
            if status is not None and wanted(status):
                return status
            time.sleep(0.05)
        raise TimeoutError(f"/ping never answered as wanted after {timeout_s}s (saw {self.pings}):\n{self.log()}")

    def wait_ready(self, timeout_s: float = 120) -> None:
        status = self.wait_for_ping(lambda code: code in (200, 503), timeout_s)
        if status != 200:
            raise RuntimeError(f"/ping answered {status}:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc)
