"""The HTTP face: an OpenAI-compatible FastAPI app over one LM, plus fill-mask, classify, /health, /metrics.
The routes live in routes_generate.py, routes_model.py and routes_service.py; what they share in state.py."""
from __future__ import annotations

import asyncio
import contextlib

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import routes_generate, routes_model, routes_service
from .errors import APIError
from .metrics import CountRequests
from .state import MAX_INPUTS, Server, ServerOptions  # noqa: F401 - ServerOptions and MAX_INPUTS are this module's API


class _BodiesAreJson:
    """ASGI middleware: a POST body is read as JSON whatever its content type, since `curl -d '{...}'` sends
    JSON labelled as a form."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = {**scope, "headers": headers + [(b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI):
    """The engine thread starts with the app and stops after it."""
    engine = app.state.engine
    engine.start()
    try:
        yield
    finally:  # uvicorn has let in-flight responses finish; the engine drains what is left
        await asyncio.get_running_loop().run_in_executor(None, engine.stop)


async def _api_error(request, error: APIError):
    return error.response()


async def _invalid(request, error: RequestValidationError):
    problems = error.errors()
    first = problems[0] if problems else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    message = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
                        for e in problems[:5])
    return APIError(400, f"invalid request: {message}", param=where or None).response()


async def _http_error(request, error: StarletteHTTPException):
    return APIError(error.status_code, str(error.detail), headers=getattr(error, "headers", None)).response()


def create_app(lm, options: ServerOptions | None = None, chat_template: str | None = None) -> FastAPI:
    """The FastAPI app serving `lm`; the engine thread starts and stops with the app's lifespan. Chat renders
    through `chat_template` (Jinja) when given, else the model's own, else the built-in ChatML one."""
    server = Server(lm, options or ServerOptions(), chat_template)
    app = FastAPI(title="lmforge server", version="1", lifespan=_lifespan,
                  description="OpenAI-compatible completions, chat and embeddings, plus fill-mask and classify.")
    app.state.server, app.state.engine, app.state.metrics = server, server.engine, server.metrics
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_middleware(_BodiesAreJson)
    app.add_middleware(CountRequests, metrics=server.metrics)
    for routes in (routes_generate, routes_model, routes_service):
        app.include_router(routes.router)
    return app
