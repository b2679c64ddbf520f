"""Serving: an OpenAI-compatible HTTP server (FastAPI + uvicorn, the `lmforge[serve]` extra)."""
from __future__ import annotations

INSTALL_HINT = "pip install 'lmforge[serve]'"


def require_serve_packages() -> None:
    """Raise a clear error when FastAPI or uvicorn is missing."""
    missing = []
    for name in ("fastapi", "uvicorn"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ModuleNotFoundError(f"serving needs {' and '.join(missing)}, which are not installed; "
                                  f"install them with: {INSTALL_HINT}")


def create_app(lm, options=None, chat_template: str | None = None):
    """The FastAPI app serving `lm` (see lmforge.serve.app.create_app); `chat_template` (Jinja) overrides the
    model's own."""
    require_serve_packages()
    from .app import create_app as _create_app

    return _create_app(lm, options, chat_template)


def serve(model_dir: str, *, host: str = "127.0.0.1", port: int = 8000, model_name: str | None = None,
          max_batch: int = 8, max_queue: int = 64, api_key: str | None = None, timeout: float = 120.0,
          max_tokens: int | None = None, device: str = "cpu", log_level: str = "info") -> None:
    """Load a model directory and serve it until interrupted (Ctrl-C / SIGTERM finish in-flight requests)."""
    require_serve_packages()
    from pathlib import Path

    import uvicorn

    from ..api import LM
    from .app import ServerOptions

    lm = LM.from_pretrained(model_dir, device=device)
    path = Path(model_dir).resolve()
    name = model_name or (path.parent.name if path.name in ("final", "best") else path.name)
    options = ServerOptions(model_name=name, max_batch=max_batch, max_queue=max_queue, api_key=api_key,
                            timeout=timeout, max_tokens=max_tokens)
    app = create_app(lm, options)  # chat renders through the model's own template (or the built-in ChatML one)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=int(timeout) + 5)
