"""Download a client-supplied https URL (``upload_voice``'s ``audio_url``) without letting it reach
inside the worker's network.

The guard is the RunPod SDK's ``runpod.serverless.utils.rp_ssrf``: every address the host resolves
to must be public (loopback, private, link-local, CGNAT, multicast and reserved ranges are refused),
the connection goes to an address that was checked (no DNS rebinding), every redirect is checked
the same way, and the body is capped in size. What this module adds, and why:

- https only: the SDK fetches http:// too. The URL is checked before, and the URL the answer finally
  came from after, so a redirect to http:// is refused before its body is read. (The SDK follows
  redirects itself, so an http:// hop in the middle of a chain that ends on https:// is not seen.)
- URLs with credentials are refused: the SDK would send them to the host.
- A deadline on the whole download: the SDK's timeout is per socket operation, so a server that
  sends a trickle of bytes could otherwise hold the job much longer.
- Errors as :class:`FetchError`, whose message is shown to the client.

As for the SDK's own downloads, ``RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS=true`` turns the address check
off, and a URL that the environment routes through a proxy (``HTTPS_PROXY`` without a matching
``NO_PROXY``) is refused, since the connection cannot be pinned through one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import requests

BLOCK = 64 * 1024
HEADERS = {"User-Agent": "f5tts-runpod-worker", "Accept": "audio/*"}


class FetchError(ValueError):
    """The URL was refused or its download failed; the message is safe to show to the client."""


def check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise FetchError(f"only https:// URLs are fetched, not {url[:100]!r}")
    if parts.username or parts.password:
        raise FetchError("URLs with credentials are refused")


def fetch(url: str, dest: Path, max_bytes: int, timeout_s: float = 30.0, max_redirects: int = 3) -> int:
    """Save ``url``'s body to ``dest``; returns its size."""
    # Imported on first use: importing the SDK takes 1-2 s, which start-up overlaps with the model load.
    from runpod.serverless.utils import rp_ssrf

    check_url(url)
    deadline = time.monotonic() + timeout_s
    host = urlsplit(url).hostname
    try:
        with rp_ssrf.safe_get(url, timeout=timeout_s, headers=HEADERS, max_bytes=max_bytes,
                              max_redirects=max_redirects) as response:
            check_url(response.url)
            host = urlsplit(response.url).hostname
            if response.status_code != 200:
                raise FetchError(f"{host} answered HTTP {response.status_code}")
            return _save(rp_ssrf.iter_content_capped(response, BLOCK, max_bytes), dest, deadline)
    except rp_ssrf.SSRFError as err:
        raise FetchError(str(err)) from None
    except (OSError, UnicodeError, requests.RequestException) as err:
        raise FetchError(f"download from {host} failed: {type(err).__name__}: {err}") from None


def _save(blocks: Iterator[bytes], dest: Path, deadline: float) -> int:
    size = 0
    with dest.open("wb") as out:
        for block in blocks:
            if time.monotonic() > deadline:
                raise FetchError("the download took too long")
            out.write(block)
            size += len(block)
    return size
