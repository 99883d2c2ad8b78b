"""A Hugging Face hub on 127.0.0.1 that speaks what ``hf_hub_download`` needs, serving the tiny model.

    HEAD|GET /{owner}/{repo}/resolve/{revision}/{path}      revision: ``main`` or the commit

answer as the hub does for a file at a commit: ``X-Repo-Commit``; for a regular file ``ETag`` (its
git blob sha1) and ``Content-Length``; for an LFS file (weights) also ``X-Linked-Etag`` (sha256)
and ``X-Linked-Size``. GET honours ``Range: bytes=N-`` with 206 and ``Content-Range``. A missing
file is a 404 with ``X-Error-Code: EntryNotFound``, an unknown repo one with ``RepoNotFound``.

Every request is recorded (``requests``), and GET bodies can be streamed slowly (``chunk_delay_s``)
so a test can kill a download half-way; while ``open`` is cleared, requests wait for it (a start-up
held at its download). Point ``HF_ENDPOINT`` at ``url``.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.support.tiny_models import REVISION

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
CHUNK = 64 * 1024


@dataclass
class HubRequest:
    method: str
    repo_id: str
    filename: str
    status: int
    range_start: int = 0
    bytes_sent: int = 0
    completed: bool = False


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """The server; ``files`` maps ``(repo_id, filename)`` to the bytes served at ``commit``."""

    def __init__(self, files: dict[tuple[str, str], bytes], commit: str = REVISION):
        self.files = files
        self.commit = commit
        self.chunk_delay_s = 0.0
        self.open = threading.Event()
        self.open.set()
        self.requests: list[HubRequest] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)

    @classmethod
    def from_cache(cls, hub_cache: Path) -> FakeHub:
        """Serve every file of every repo in a Hugging Face cache (``refs/main``'s snapshot)."""
        files = {}
        for repo_dir in hub_cache.glob("models--*"):
            repo_id = repo_dir.name.removeprefix("models--").replace("--", "/")
            snapshot = repo_dir / "snapshots" / (repo_dir / "refs" / "main").read_text().strip()
            for path in snapshot.rglob("*"):
                if path.is_file():
                    files[(repo_id, path.relative_to(snapshot).as_posix())] = path.read_bytes()
        return cls(files)

    def start(self) -> FakeHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def record(self, request: HubRequest) -> HubRequest:
        with self._lock:
            self.requests.append(request)
        return request

    def gets(self, filename: str | None = None) -> list[HubRequest]:
        return [r for r in list(self.requests) if r.method == "GET" and filename in (None, r.filename)]

    def env(self) -> dict[str, str]:
        """What a process needs to download from this hub."""
        return {"HF_ENDPOINT": self.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def _handler_for(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            hub.open.wait()
            match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", self.path.split("?")[0])
            if match is None:
                return self._error(hub.record(HubRequest(self.command, "", self.path, 404)), "EntryNotFound")
            repo_id, revision, filename = match.groups()
            request = hub.record(HubRequest(self.command, repo_id, filename, 200))
            if revision not in ("main", hub.commit):
                return self._error(request, "RevisionNotFound")
            if not any(repo == repo_id for repo, _ in hub.files):
                return self._error(request, "RepoNotFound")
            data = hub.files.get((repo_id, filename))
            if data is None:
                return self._error(request, "EntryNotFound")
            start = _range_start(self.headers.get("Range")) if body else 0
            request.range_start = start
            request.status = 206 if start else 200
            self.send_response(request.status)
            self.send_header("X-Repo-Commit", hub.commit)
            self.send_header("ETag", f'"{git_blob_sha1(data)}"')
            if filename.endswith(LFS_SUFFIXES):
                self.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("Accept-Ranges", "bytes")
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if not body:
                request.completed = True
                return None
            try:
                for offset in range(start, len(data), CHUNK):
                    self.wfile.write(data[offset:offset + CHUNK])
                    self.wfile.flush()
                    request.bytes_sent += len(data[offset:offset + CHUNK])
                    if hub.chunk_delay_s:
                        time.sleep(hub.chunk_delay_s)
                request.completed = True
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
            return None

        def _error(self, request: HubRequest, code: str) -> None:
            request.status = 404
            payload = f'{{"error": "{code}"}}'.encode()
            self.send_response(404)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Repo-Commit", hub.commit)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

    return Handler


def _range_start(header: str | None) -> int:
    match = re.fullmatch(r"bytes=(\d+)-(\d*)", header or "")
    return int(match.group(1)) if match else 0

