"""GET /v1/models, /health and /metrics: what the server serves and how it is doing."""
from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse

from .errors import APIError
from .state import ServerDep, check_key

router = APIRouter()


@router.get("/v1/models", dependencies=[Depends(check_key)])
async def models(server: ServerDep):
    """The one model this server serves."""
    return {"object": "list", "data": [{"id": server.options.model_name, "object": "model", "created": server.created,
                                        "owned_by": "lmforge"}]}


@router.get("/health")
async def health(server: ServerDep):
    """Liveness: 200 while the engine thread runs."""
    engine = server.engine
    if not engine.thread.is_alive() and not engine.stopping:
        raise APIError(503, "the engine is not running")
    return {"status": "ok", "model": server.options.model_name, "queue_depth": len(engine.pending),
            "active_sequences": engine.running_sequences}


@router.get("/metrics", response_class=PlainTextResponse)
async def prometheus(server: ServerDep):
    """Prometheus text exposition: requests, tokens, latency histogram, queue depth."""
    return PlainTextResponse(server.metrics.render(), media_type="text/plain; version=0.0.4")
