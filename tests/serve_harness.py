"""A live lmforge server on 127.0.0.1 (a free port, its own thread) for the serving tests; always shut down."""
from __future__ import annotations

import contextlib
import socket
import threading
import time

import uvicorn

from lmforge.api import LM
from lmforge.config import Config, ModelConfig
from lmforge.models import build_model
from lmforge.serve import create_app
from lmforge.serve.app import ServerOptions
from lmforge.tokenizer import Tokenizer

from conftest import small_corpus


def tiny_lm(arch: str = "gpt", block_size: int = 256, **model) -> LM:
    """A random tiny model with a char tokenizer (decoder) or a WordPiece one (encoder)."""
    import torch

    texts = [small_corpus(80)]
    tokenizer = Tokenizer.train("wordpiece", texts, 200) if arch == "bert" else Tokenizer.train("char", texts)
    cfg = ModelConfig(arch=arch, n_layer=2, n_head=4, n_embd=32, block_size=block_size,
                      vocab_size=tokenizer.vocab_size, **model)
    torch.manual_seed(0)
    return LM(build_model(cfg).eval(), tokenizer, Config(model=cfg))


@contextlib.contextmanager
def live_server(lm: LM, **options):
    """Serve `lm` on 127.0.0.1 at a free port; yields (base_url, app). Shut down (gracefully) on exit."""
    options.setdefault("model_name", "tiny")
    app = create_app(lm, ServerOptions(**options))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=30))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}", app, server
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()
