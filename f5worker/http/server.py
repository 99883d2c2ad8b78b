"""Serving: the sockets of ``PORT`` and ``PORT_HEALTH``, uvicorn, and the model loaded meanwhile."""

from __future__ import annotations

import logging
import socket
import threading

import uvicorn

from f5worker.http.app import create_app
from f5worker.http.state import ServerState
from f5worker.settings import Settings

log = logging.getLogger("f5tts.worker")
GRACEFUL_SHUTDOWN_S = 30  # SIGTERM: requests under way get this long to finish


def serve(settings: Settings) -> None:
    """Answer ``/ping`` at once (204), load the worker in a thread, serve until SIGTERM/SIGINT.
    Raises OSError when a port cannot be bound."""
    server = ServerState()
    app = create_app(settings, server)
    config = uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    ports = sorted({settings.http.port, settings.http.ping_port})
    sockets = [bind(settings.http.host, port) for port in ports]
    threading.Thread(target=server.load, args=(settings,), name="load-worker", daemon=True).start()
    log.info("serving http on %s port %s (/ping on %s)", settings.http.host, settings.http.port,
             settings.http.ping_port)
    uvicorn.Server(config).run(sockets=sockets)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock
