"""HTTPS (and plain HTTP) servers on 127.0.0.1 for the URL-fetching tests, with a self-signed
certificate made by openssl (a process: tests using these carry ``@pytest.mark.process``)."""

from __future__ import annotations

import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A one-day self-signed certificate for 127.0.0.1 and 127.0.0.2, and its key."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,IP:127.0.0.2", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def serve(server: ThreadingHTTPServer) -> str:
    """Run ``server`` in a daemon thread; its ``host:port``."""
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"127.0.0.1:{server.server_address[1]}"


def https_server(handler: type[BaseHTTPRequestHandler], cert: Path, key: Path) -> tuple[ThreadingHTTPServer, str]:
    """``handler`` served over TLS on 127.0.0.1; the server (to shut down) and its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    return server, f"https://{serve(server)}"
