"""What every route shares: the server's options and its state (the LM, its engine and metrics), built once."""
from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from ..models.contract import is_decoder
from .engine import Call, Engine, QueueFull
from .errors import APIError
from .metrics import Metrics

MAX_INPUTS = 2048


@dataclass
class ServerOptions:
    model_name: str = "lmforge"
    max_batch: int = 8
    max_queue: int = 64
    api_key: str | None = None
    timeout: float = 120.0  # seconds from arrival to the last token
    max_tokens: int | None = None  # per-request ceiling (default: the model's block_size)


@dataclass
class Server:
    """One served LM: its engine thread (which owns the model), metrics, options and chat template."""

    lm: object
    options: ServerOptions
    chat_template: str | None = None
    metrics: Metrics = field(default_factory=Metrics)

    def __post_init__(self):
        self.engine = Engine(self.lm, max_batch=self.options.max_batch, max_queue=self.options.max_queue,
                             metrics=self.metrics)
        self.model, self.tokenizer = self.lm.model, self.lm.tokenizer
        self.context = self.model.config.block_size
        self.token_limit = min(self.options.max_tokens or self.context, self.context)
        self.decoder = is_decoder(self.model)
        self.created = int(time.time())

    def check_model(self, name: str | None) -> None:
        """A request naming another model is a 404."""
        if name is not None and name != self.options.model_name:
            raise APIError(404, f"the model '{name}' does not exist; this server serves '{self.options.model_name}'",
                           param="model", code="model_not_found")

    def need_decoder(self, what: str) -> None:
        """Generation endpoints refuse an encoder with a 400 naming the endpoints it has."""
        if not self.decoder:
            raise APIError(400, f"{what} needs a decoder (gpt, llama); this server's model is "
                                f"'{self.lm.config.model.arch}' (use /v1/fill-mask, /v1/classify or /v1/embeddings)")

    async def run_call(self, fn):
        """Run model work on the engine thread (it owns the model); ValueError becomes a 400."""
        call = Call(fn)
        try:
            self.engine.submit(call)
        except QueueFull as full:
            raise APIError(503, f"server busy: {full}; retry shortly", headers={"Retry-After": "1"}) from None
        try:
            return await asyncio.wrap_future(call.future)
        except ValueError as error:
            raise APIError(400, str(error)) from None
        finally:
            call.cancelled = True  # a client gone before the call ran: skip it

    def encode_prompt(self, prompt, param: str) -> list[int]:
        """A text or a list of token ids as ids (out-of-range ids are a 400; empty starts from end-of-text)."""
        tokenizer = self.tokenizer
        if isinstance(prompt, str):
            ids = tokenizer.encode(prompt)
        else:
            bad = [t for t in prompt if not 0 <= t < tokenizer.vocab_size]
            if bad:
                raise APIError(400, f"token id {bad[0]} is out of range: the vocabulary has {tokenizer.vocab_size} "
                                    "tokens", param=param)
            ids = list(prompt)
        if not ids:
            if tokenizer.eos_id is None:
                raise APIError(400, "empty prompt and the tokenizer has no end-of-text token to start from", param=param)
            ids = [tokenizer.eos_id]
        return ids

    def token_text(self, token: int) -> str:
        return self.tokenizer.decode([token], skip_special_tokens=False)


def current_server(request: Request) -> Server:
    """The route dependency that hands a handler its app's Server."""
    return request.app.state.server


ServerDep = Annotated[Server, Depends(current_server)]  # a handler's parameter `server: ServerDep`


def check_key(request: Request) -> None:
    """With an API key set, every /v1 request must send 'Authorization: Bearer <key>' (else a 401)."""
    api_key = request.app.state.server.options.api_key
    if api_key is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, key = given.partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(key.strip().encode(), api_key.encode()):
        raise APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                       code="invalid_api_key")


def listed(raw, what: str, param: str) -> list:
    """A single input (a text or one token list) or a list of them, as a list of 1 to MAX_INPUTS inputs."""
    if isinstance(raw, str) or (raw and isinstance(raw[0], int)):
        raw = [raw]
    if not raw or len(raw) > MAX_INPUTS:
        raise APIError(400, f"{param} must hold 1 to {MAX_INPUTS} {what}", param=param)
    return raw
