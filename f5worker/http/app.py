"""The FastAPI application: ``/ping`` and the playground page open, every API route behind the key."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib.resources import files

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from f5worker.http import routes, speech
from f5worker.http.bodies import check_api_key
from f5worker.http.errors import ApiError
from f5worker.http.state import ServerState
from f5worker.settings import CONCURRENCY_LIMIT, Settings

log = logging.getLogger("f5tts.worker")
PAGES = {"/": ("index.html", "text/html; charset=utf-8"),
         "/playground.js": ("playground.js", "text/javascript; charset=utf-8"),
         "/playground.css": ("playground.css", "text/css; charset=utf-8")}


def create_app(settings: Settings, server: ServerState) -> FastAPI:
    """The app for ``settings.http``; ``server`` holds the worker once it is loaded (``ServerState.load``)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        server.close()  # SIGTERM: uvicorn has finished the requests under way
        app.state.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="F5-TTS worker", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.settings = settings
    app.state.server = server
    # A thread per job under way: the engine's bounded queue (ENGINE_MAX_QUEUE, 429 when full) limits them.
    app.state.executor = ThreadPoolExecutor(CONCURRENCY_LIMIT, thread_name_prefix="http-job")

    def authorized(request: Request) -> None:
        check_api_key(request, settings.http.api_key)

    app.include_router(speech.router, dependencies=[Depends(authorized)])
    app.include_router(routes.router, dependencies=[Depends(authorized)])
    add_open_routes(app, server)
    add_error_handlers(app)
    if settings.http.ping_port != settings.http.port:
        add_health_port_guard(app, settings.http.ping_port)
    return app


def add_open_routes(app: FastAPI, server: ServerState) -> None:
    @app.get("/ping")
    async def ping() -> Response:
        """RunPod's load balancer: 204 while the model loads, 200 ready, 503 when the worker cannot serve."""
        if server.status == "loading":
            return Response(status_code=204)
        if server.status == "ready":
            return JSONResponse({"status": "ready"})
        return ApiError(503, server.error or "", "server_error", "worker_unavailable").response()

    assets = files("f5worker.http").joinpath("playground")
    for path, (name, media_type) in PAGES.items():
        content = assets.joinpath(name).read_bytes()

        async def page(content: bytes = content, media_type: str = media_type) -> Response:
            return Response(content, media_type=media_type)

        app.add_api_route(path, page, methods=["GET"], include_in_schema=False)


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, err: ApiError) -> JSONResponse:
        return err.response()

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, err: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
        return ApiError(err.status_code, str(err.detail), code=code).response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, err: RequestValidationError) -> JSONResponse:
        return ApiError(400, str(err), code="invalid_value").response()


def add_health_port_guard(app: FastAPI, health_port: int) -> None:
    """``PORT_HEALTH`` serves ``/ping`` alone."""

    @app.middleware("http")
    async def only_ping(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        server = request.scope.get("server") or ("", None)
        if server[1] == health_port and request.url.path != "/ping":
            return ApiError(404, f"port {health_port} serves /ping only", code="not_found").response()
        return await call_next(request)
