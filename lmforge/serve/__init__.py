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

