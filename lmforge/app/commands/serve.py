"""`lmforge serve`: serve a model directory over HTTP with an OpenAI-compatible API."""
from __future__ import annotations

import argparse
import sys

from . import Command

EXAMPLES = """examples:
  lmforge serve runs/gpt-tiny/final --port 8000 --max-batch 8
  lmforge serve runs/gpt-tiny/final --api-key secret --max-queue 32 --timeout 60
  curl 127.0.0.1:8000/v1/completions -H 'content-type: application/json' \\
       -d '{"model": "gpt-tiny", "prompt": "Once", "max_tokens": 50, "stream": true}'
  lmforge serve runs/bert-tiny/final      # /v1/fill-mask, /v1/embeddings (and /v1/classify for a classifier)

OpenAI-compatible: /v1/models, /v1/completions, /v1/chat/completions, /v1/embeddings; also /v1/fill-mask,
/v1/classify, /health, /metrics (Prometheus). Needs the serve extra: pip install 'lmforge[serve]'."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `lmforge serve` command's arguments."""
    p.add_argument("model", help="model directory (decoder: completions and chat; encoder: fill-mask, classify)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-name", default=None, help="the name clients use (default: the run's directory name)")
    p.add_argument("--max-batch", type=int, default=8, help="sequences decoded together (1 turns batching off)")
    p.add_argument("--max-queue", type=int, default=64, help="requests that may wait; more get 503 + Retry-After")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/ (401 otherwise)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds a request may take, queueing included")
    p.add_argument("--max-tokens", type=int, default=None, help="most tokens one request may ask for")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")


def run(args) -> int:
    """Run `lmforge serve`; returns the exit status."""
    from ...serve import require_serve_packages

    try:
        require_serve_packages()
    except ModuleNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.max_batch < 1 or args.max_queue < 0 or args.timeout <= 0:
        raise ValueError(f"--max-batch must be >= 1, --max-queue >= 0 and --timeout > 0; got {args.max_batch}, "
                         f"{args.max_queue} and {args.timeout}")
    serve(args.model, host=args.host, port=args.port, model_name=args.model_name, max_batch=args.max_batch,
          max_queue=args.max_queue, api_key=args.api_key, timeout=args.timeout, max_tokens=args.max_tokens,
          device=args.device)
    return 0


def serve(model_dir: str, *, host: str = "127.0.0.1", port: int = 8000, model_name: str | None = None,
          max_batch: int = 8, max_queue: int = 64, api_key: str | None = None, timeout: float = 120.0,
          max_tokens: int | None = None, device: str = "cpu", log_level: str = "info") -> None:
    """Load a model directory and serve it until interrupted (Ctrl-C / SIGTERM finish in-flight requests)."""
    from pathlib import Path

    import uvicorn

    from ...infer.packed import packed_linears
    from ...serve import create_app, require_serve_packages
    from ...serve.app import ServerOptions
    from ..facade import LM

    require_serve_packages()
    lm = LM.from_pretrained(model_dir, device=device)
    path = Path(model_dir).resolve()
    name = model_name or (path.parent.name if path.name in ("final", "best") else path.name)
    options = ServerOptions(model_name=name, max_batch=max_batch, max_queue=max_queue, api_key=api_key,
                            timeout=timeout, max_tokens=max_tokens)
    app = create_app(lm, options)  # chat renders through the model's own template (or the built-in ChatML one)
    # big CPU weights packed for oneDNN once for the server's life (for up to max_batch rows; fewer run as fast)
    with packed_linears(lm.model, max_batch):
        uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=int(timeout) + 5)


COMMAND = Command("serve", "Serve a model directory over HTTP with an OpenAI-compatible API.",
                  EXAMPLES, add_arguments, run)
