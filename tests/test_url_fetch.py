"""url_fetch against a real HTTPS server on 127.0.0.1 (self-signed certificate made with openssl).

The worker's address policy refuses loopback, so the success, size-cap and redirect tests pass
``allow=`` (a loopback-only policy) and ``context=`` (trusting the test certificate) to the same
``fetch``; the worker itself always uses the defaults, and the default policy is tested on its own.
"""

from __future__ import annotations

import ipaddress
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from f5worker.url_fetch import FetchError, fetch, public_address

BODY = b"RIFF" + bytes(range(256)) * 40


def only_127_0_0_1(ip) -> bool:
    return str(ip) == "127.0.0.1"


class Routes(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        port = self.server.server_address[1]
        if self.path == "/ok":
            self._send(200, BODY, {"Content-Length": str(len(BODY))})
        elif self.path == "/big":
            self._send(200, BODY, {"Content-Length": str(len(BODY))})
        elif self.path == "/big-no-length":  # HTTP/1.0: the body ends when the connection closes
            self._send(200, BODY * 4, {})
        elif self.path == "/to-ok":
            self._send(302, b"", {"Location": "/ok", "Content-Length": "0"})
        elif self.path == "/to-other-host":
            self._send(302, b"", {"Location": f"https://127.0.0.2:{port}/ok", "Content-Length": "0"})
        elif self.path == "/to-http":
            self._send(301, b"", {"Location": f"http://127.0.0.1:{port}/ok", "Content-Length": "0"})
        elif self.path == "/loop":
            self._send(302, b"", {"Location": "/loop", "Content-Length": "0"})
        else:
            self._send(404, b"", {"Content-Length": "0"})

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def https_server(tmp_path_factory) -> Iterator[tuple[str, ssl.SSLContext]]:
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,IP:127.0.0.2", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Routes)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    server.socket = server_ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client_ctx = ssl.create_default_context(cafile=str(cert))
    yield f"https://127.0.0.1:{server.server_address[1]}", client_ctx
    server.shutdown()


def get(https_server, path: str, dest: Path, max_bytes: int = 1 << 20) -> int:
    base, context = https_server
    return fetch(f"{base}{path}", dest, max_bytes, timeout_s=10, allow=only_127_0_0_1, context=context)


@pytest.mark.process
def test_download_over_tls_and_relative_redirect(https_server, tmp_path):
    assert get(https_server, "/ok", tmp_path / "a") == len(BODY)
    assert (tmp_path / "a").read_bytes() == BODY
    assert get(https_server, "/to-ok", tmp_path / "b") == len(BODY)
    assert (tmp_path / "b").read_bytes() == BODY


@pytest.mark.process
@pytest.mark.parametrize("path", ["/big", "/big-no-length"])
def test_size_cap(https_server, tmp_path, path):
    with pytest.raises(FetchError, match="limit"):
        get(https_server, path, tmp_path / "x", max_bytes=len(BODY) - 1 if path == "/big" else len(BODY) * 2)


@pytest.mark.process
@pytest.mark.parametrize(("path", "message"), [("/to-other-host", "non-public"), ("/to-http", "only https"),
                                               ("/loop", "redirects"), ("/missing", "HTTP 404")])
def test_redirects_are_checked_again_and_errors_are_clear(https_server, tmp_path, path, message):
    with pytest.raises(FetchError, match=message):
        get(https_server, path, tmp_path / "x")


@pytest.mark.process
def test_certificate_is_verified(https_server, tmp_path):
    base, _ = https_server
    with pytest.raises(FetchError, match="SSL|CERTIFICATE"):
        fetch(f"{base}/ok", tmp_path / "x", 1 << 20, timeout_s=10, allow=only_127_0_0_1)


@pytest.mark.parametrize("url", [
    "https://127.0.0.1/x", "https://localhost/x", "https://10.1.2.3/x", "https://192.168.0.1/x",
    "https://172.16.0.1/x", "https://169.254.169.254/latest/meta-data/", "https://100.64.0.1/x",
    "https://[::1]/x", "https://[::ffff:127.0.0.1]/x", "https://[fe80::1]/x", "https://[fd00::1]/x",
    "https://0.0.0.0/x", "https://224.0.0.1/x",
])
def test_default_policy_refuses_internal_addresses_before_connecting(tmp_path, url):
    with pytest.raises(FetchError, match="non-public"):
        fetch(url, tmp_path / "x", 1 << 20, timeout_s=2)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(("url", "message"), [("http://example.com/a.wav", "only https"),
                                              ("https://user:pw@example.com/a.wav", "credentials"),
                                              ("ftp://example.com/a.wav", "only https")])
def test_scheme_and_credentials_refused(tmp_path, url, message):
    with pytest.raises(FetchError, match=message):
        fetch(url, tmp_path / "x", 1 << 20)


def test_public_address():
    assert public_address(ipaddress.ip_address("8.8.8.8"))
    assert public_address(ipaddress.ip_address("2001:4860:4860::8888"))
    assert not public_address(ipaddress.ip_address("::ffff:10.0.0.1"))
    assert not public_address(ipaddress.ip_address("127.0.0.1"))
