"""Download a client-supplied https URL without letting it reach inside the worker's network.

Every address the host resolves to must be public (no loopback, private, link-local, CGNAT,
multicast or reserved ranges); the connection goes to the address that was checked, so a DNS
answer that changes between check and connect (rebinding) cannot redirect it; redirects are
followed only to URLs that pass the same checks; the body is capped in size and time.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urljoin, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
REDIRECTS = {301, 302, 303, 307, 308}
BLOCK = 64 * 1024


class FetchError(ValueError):
    """The URL was refused or its download failed; the message is safe to show to the client."""


def public_address(ip: IPAddress) -> bool:
    """Globally routable unicast. IPv4-mapped IPv6 (``::ffff:127.0.0.1``) is judged as IPv4."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to ``host`` (SNI, certificate check, Host header) over a socket to ``address``."""

    def __init__(self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext):
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def resolve_checked(host: str, port: int, allow: Callable[[IPAddress], bool]) -> str:
    """One address of ``host``, after checking that every address it resolves to is allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        raise FetchError(f"cannot resolve {host!r}: {err}") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
    refused = [str(a) for a in addresses if not allow(a)]
    if refused or not addresses:
        raise FetchError(f"{host!r} resolves to a non-public address ({', '.join(refused) or 'none'}): refused")
    return str(addresses[0])


def fetch(url: str, dest: Path, max_bytes: int, timeout_s: float = 30.0, max_redirects: int = 3,
          allow: Callable[[IPAddress], bool] = public_address, context: ssl.SSLContext | None = None) -> int:
    """Save ``url``'s body to ``dest``; returns its size. ``allow`` and ``context`` exist for the
    tests' local HTTPS server; the worker always uses the defaults."""
    context = context or ssl.create_default_context()
    deadline = time.monotonic() + timeout_s
    for _ in range(max_redirects + 1):
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise FetchError(f"only https:// URLs are fetched, not {url[:100]!r}")
        if parts.username or parts.password:
            raise FetchError("URLs with credentials are refused")
        port = parts.port or 443
        address = resolve_checked(parts.hostname, port, allow)
        conn = _PinnedHTTPSConnection(parts.hostname, port, address, timeout_s, context)
        try:
            conn.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                         headers={"User-Agent": "f5tts-runpod-worker", "Accept": "audio/*"})
            response = conn.getresponse()
            if response.status in REDIRECTS and response.getheader("Location"):
                url = urljoin(url, response.getheader("Location"))
                continue
            if response.status != 200:
                raise FetchError(f"{parts.hostname} answered HTTP {response.status}")
            return _save(response, dest, max_bytes, deadline)
        except (OSError, http.client.HTTPException) as err:
            raise FetchError(f"download from {parts.hostname} failed: {type(err).__name__}: {err}") from None
        finally:
            conn.close()
    raise FetchError(f"more than {max_redirects} redirects")


def _save(response: http.client.HTTPResponse, dest: Path, max_bytes: int, deadline: float) -> int:
    declared = response.getheader("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise FetchError(f"the file is {declared} bytes, over the {max_bytes}-byte limit")
    size = 0
    with dest.open("wb") as out:
        while block := response.read(BLOCK):
            size += len(block)
            if size > max_bytes:
                raise FetchError(f"the file is over the {max_bytes}-byte limit")
            if time.monotonic() > deadline:
                raise FetchError("the download took too long")
            out.write(block)
    return size
