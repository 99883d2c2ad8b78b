"""url_fetch against real HTTPS and HTTP servers on 127.0.0.1 (self-signed certificate made with openssl).

The worker's address policy (the RunPod SDK's ``rp_ssrf.is_safe_address``) refuses loopback, so the
tests that must reach the local servers replace it, through monkeypatch, with a policy that allows
127.0.0.1 only (``local_policy``), and trust the test certificate through ``REQUESTS_CA_BUNDLE``
(``trust_cert``). The worker's code has no parameter that loosens the check; the default policy is
tested on its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from runpod.serverless.utils import rp_ssrf

from f5worker.url_fetch import FetchError, fetch
from tests.support.https_server import https_server as start_https_server
from tests.support.https_server import make_certificate, serve

BODY = b"RIFF" + bytes(range(256)) * 40


class Routes(BaseHTTPRequestHandler):
    http_base = ""  # the plain-HTTP server's address, set by the fixture

    def do_GET(self) -> None:
        port = self.server.server_address[1]
        if self.path == "/ok":
            self._send(200, BODY, {"Content-Length": str(len(BODY))})
        elif self.path == "/big":
            self._send(200, BODY, {"Content-Length": str(len(BODY))})
        elif self.path == "/big-no-length":  # HTTP/1.0: the body ends when the connection closes
            self._send(200, BODY * 4, {})
        elif self.path == "/trickle":  # 10 KB every 0.1 s, for 6 s
            self._send(200, b"", {})
            try:
                for _ in range(60):
                    self.wfile.write(BODY)
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:  # the client gave up
                pass
        elif self.path == "/to-ok":
            self._send(302, b"", {"Location": "/ok", "Content-Length": "0"})
        elif self.path == "/to-other-host":
            self._send(302, b"", {"Location": f"https://127.0.0.2:{port}/ok", "Content-Length": "0"})
        elif self.path == "/to-http":  # to a plain-HTTP server that does serve the file
            self._send(301, b"", {"Location": f"{self.http_base}/ok", "Content-Length": "0"})
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
def https_server(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """The HTTPS server's base URL and its certificate; a plain-HTTP server runs beside it."""
    cert, key = make_certificate(tmp_path_factory.mktemp("tls"))
    plain = ThreadingHTTPServer(("127.0.0.1", 0), Routes)
    Routes.http_base = f"http://{serve(plain)}"
    server, url = start_https_server(Routes, cert, key)
    yield url, cert
    server.shutdown()
    plain.shutdown()


@pytest.fixture
def local_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only 127.0.0.1 counts as public (so 127.0.0.2 and every real private range stay refused)."""
    monkeypatch.setattr(rp_ssrf, "is_safe_address", lambda ip: ip == "127.0.0.1")


@pytest.fixture
def trust_cert(https_server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(https_server[1]))


def get(https_server, path: str, dest: Path, max_bytes: int = 1 << 20) -> int:
    return fetch(f"{https_server[0]}{path}", dest, max_bytes, timeout_s=10)


@pytest.mark.process  # the https_server fixture makes its certificate with openssl
@pytest.mark.usefixtures("local_policy", "trust_cert")
def test_download_over_tls_and_relative_redirect(https_server, tmp_path):
    assert get(https_server, "/ok", tmp_path / "a") == len(BODY)
    assert (tmp_path / "a").read_bytes() == BODY
    assert get(https_server, "/to-ok", tmp_path / "b") == len(BODY)
    assert (tmp_path / "b").read_bytes() == BODY


@pytest.mark.process  # the https_server fixture makes its certificate with openssl
@pytest.mark.usefixtures("local_policy", "trust_cert")
@pytest.mark.parametrize("path", ["/big", "/big-no-length"])
def test_size_cap(https_server, tmp_path, path):
    with pytest.raises(FetchError, match="size cap"):
        get(https_server, path, tmp_path / "x", max_bytes=len(BODY) - 1 if path == "/big" else len(BODY) * 2)


@pytest.mark.process  # the https_server fixture makes its certificate with openssl
@pytest.mark.usefixtures("local_policy", "trust_cert")
def test_the_whole_download_has_a_deadline(https_server, tmp_path):
    """Every read gets bytes well within the 2 s socket timeout; the download as a whole does not end in 2 s."""
    with pytest.raises(FetchError, match="took too long"):
        fetch(f"{https_server[0]}/trickle", tmp_path / "x", 1 << 20, timeout_s=2)


@pytest.mark.usefixtures("local_policy", "trust_cert")
@pytest.mark.parametrize(("path", "message"), [("/to-other-host", "non-public"), ("/to-http", "only https"),
                                               ("/loop", "redirects"), ("/missing", "HTTP 404")])
@pytest.mark.process  # the https_server fixture makes its certificate with openssl
def test_redirects_are_checked_again_and_errors_are_clear(https_server, tmp_path, path, message):
    with pytest.raises(FetchError, match=message):
        get(https_server, path, tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.process  # the https_server fixture makes its certificate with openssl
@pytest.mark.usefixtures("local_policy")
def test_certificate_is_verified(https_server, tmp_path, monkeypatch):
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(FetchError, match="SSL|CERTIFICATE"):
        get(https_server, "/ok", tmp_path / "x")


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


@pytest.mark.process  # the https_server fixture makes its certificate with openssl
def test_default_policy_refuses_the_local_server(https_server, tmp_path):
    with pytest.raises(FetchError, match="non-public"):
        get(https_server, "/ok", tmp_path / "x")


@pytest.mark.parametrize(("url", "message"), [("http://example.com/a.wav", "only https"),
                                              ("https://user:pw@example.com/a.wav", "credentials"),
                                              ("ftp://example.com/a.wav", "only https"),
                                              (f"https://{'a' * 64}.example/a.wav", "failed: UnicodeError")])
def test_scheme_credentials_and_bad_hosts_refused(tmp_path, url, message):
    with pytest.raises(FetchError, match=message):
        fetch(url, tmp_path / "x", 1 << 20)


def test_public_address():
    assert rp_ssrf.is_safe_address("8.8.8.8")
    assert rp_ssrf.is_safe_address("2001:4860:4860::8888")
    assert not rp_ssrf.is_safe_address("::ffff:10.0.0.1")
    assert not rp_ssrf.is_safe_address("127.0.0.1")
