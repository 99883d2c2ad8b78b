"""S3 endpoints for fault tests and the load bench: moto as its own process (optionally enforcing
credentials, as real S3 does), and a TCP proxy in front of it that can cut the endpoint mid-
transfer and restore it, with moto's state kept, while recording every request that reached S3."""

from __future__ import annotations

import json
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import requests

from tests.support.net import stop_process

REQUEST_LINE = re.compile(rb"(GET|PUT|POST|HEAD|DELETE) (\S+) HTTP/1\.[01]\r\n")
MOTO_SERVER = Path(sys.executable).with_name("moto_server")


class MotoProcess:
    """``moto_server -H 127.0.0.1 -p PORT`` as a child process."""

    def __init__(self, port: int, log_path: Path):
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)],
                                     stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:  # a TCP connect, not an HTTP request: moto counts requests towards INITIAL_NO_AUTH
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start: {log_path.read_text()}") from None
                time.sleep(0.1)

    def enforce_credentials(self) -> tuple[str, str]:
        """Create an IAM user allowed everything, then make moto check every request's signature
        from here on, as S3 does; returns that user's ``(access key id, secret)``."""
        import boto3

        iam = boto3.client("iam", endpoint_url=self.url, region_name="us-east-1",
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="worker")
        key = iam.create_access_key(UserName="worker")["AccessKey"]
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName="worker", PolicyName="all", PolicyDocument=json.dumps(policy))
        requests.post(f"{self.url}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
        return key["AccessKeyId"], key["SecretAccessKey"]

    def stop(self) -> None:
        stop_process(self.proc)


class S3Proxy:
    """A TCP proxy on 127.0.0.1 in front of ``upstream``.

    ``cut()`` takes the endpoint down: open connections are dropped and new ones are accepted and
    reset at once (counted in ``refused``), which is what a client sees of a dead S3 endpoint
    behind a load balancer. ``stall()`` makes it hang instead: open connections are dropped and
    new ones are accepted and then never answered (counted in ``stalled``). ``cut_during()`` arms a
    cut for the middle of a transfer: after the first ``after_bytes`` of the request (an upload's
    body) or of the response (a download's body) to the first request whose request line matches
    ``pattern``. ``requests`` lists every ``"METHOD /path"`` that reached S3 through the proxy.
    """

    def __init__(self, upstream: str):
        parsed = urlparse(upstream)
        self.upstream = (parsed.hostname, parsed.port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.requests: list[str] = []
        self.refused = 0
        self.stalled = 0
        self.down = False
        self.hanging = False
        self._trigger: tuple[re.Pattern[str], str, int] | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            self.down = True
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _reset(sock)

    def stall(self) -> None:
        self.hanging = True
        self.cut()
        self.down = False

    def restore(self) -> None:
        with self._lock:
            self.down = self.hanging = False
            self._trigger = None
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:  # connections held by a stall
            _reset(sock)

    def cut_during(self, pattern: str, direction: str, after_bytes: int) -> None:
        assert direction in ("request", "response")
        self._trigger = (re.compile(pattern), direction, after_bytes)

    def close(self) -> None:
        self.cut()
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down:
                self.refused += 1
                _reset(client)
                continue
            if self.hanging:
                self.stalled += 1
                with self._lock:
                    self._sockets.add(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
                upstream.settimeout(None)
            except OSError:  # moto itself unreachable: this connection fails, the proxy goes on
                _reset(client)
                continue
            with self._lock:
                self._sockets |= {client, upstream}
            state = {"cut_response_after": None}
            threading.Thread(target=self._pump_request, args=(client, upstream, state), daemon=True).start()
            threading.Thread(target=self._pump_response, args=(upstream, client, state), daemon=True).start()

    def _pump_request(self, src: socket.socket, dst: socket.socket, state: dict) -> None:
        tail = b""
        while data := _recv(src):
            scan = tail + data
            for match in REQUEST_LINE.finditer(scan):
                if match.end() <= len(tail):
                    continue  # seen in the previous chunk already
                line = f"{match.group(1).decode()} {match.group(2).decode(errors='replace')}"
                self.requests.append(line)
                trigger = self._trigger
                if trigger and trigger[0].search(line):
                    self._trigger = None
                    if trigger[1] == "response":
                        state["cut_response_after"] = trigger[2]
                    else:
                        keep = max(0, match.start() - len(tail) + trigger[2])
                        _send(dst, data[:keep])
                        self.cut()
                        return
            tail = scan[-256:]
            if not _send(dst, data):
                return
        _reset(dst)

    def _pump_response(self, src: socket.socket, dst: socket.socket, state: dict) -> None:
        while data := _recv(src):
            budget = state["cut_response_after"]
            if budget is not None:
                _send(dst, data[:budget])
                if budget <= len(data):
                    self.cut()
                    return
                state["cut_response_after"] = budget - len(data)
            elif not _send(dst, data):
                return
        _reset(dst)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _send(sock: socket.socket, data: bytes) -> bool:
    try:
        sock.sendall(data)
        return True
    except OSError:
        return False


def _reset(sock: socket.socket) -> None:
    """Close with an RST (linger 0), as a dead endpoint's host does. ``shutdown`` first: a plain
    ``close`` would wait for the other pump thread's blocked ``recv`` and the peer would see nothing."""
    for step in (lambda: sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)),
                 lambda: sock.shutdown(socket.SHUT_RDWR), sock.close):
        try:
            step()
        except OSError:
            pass

