"""The HTTP face: an OpenAI-compatible FastAPI app over one LM, plus fill-mask, classify, /health, /metrics."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import time
import uuid
from dataclasses import dataclass

import numpy as np
import torch
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..infer.beam import beam_search, cut_at_stop
from ..infer.embed import embed_ids, encode_for_embedding
from ..infer.generate import SamplingConfig
from ..models.contract import is_decoder
from .chat import ChatTemplate
from .engine import Call, Engine, Generation, QueueFull, Sequence
from .errors import APIError
from .metrics import CountRequests, Metrics
from .schemas import ChatRequest, ClassifyRequest, CompletionRequest, EmbeddingRequest, FillMaskRequest, Sampling

MAX_INPUTS = 2048


@dataclass
class ServerOptions:
    model_name: str = "lmforge"
    max_batch: int = 8
    max_queue: int = 64
    api_key: str | None = None
    timeout: float = 120.0  # seconds from arrival to the last token
    max_tokens: int | None = None  # per-request ceiling (default: the model's block_size)


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


def create_app(lm, options: ServerOptions | None = None, chat_template: ChatTemplate | None = None) -> FastAPI:
    """The FastAPI app serving `lm`; the engine thread starts and stops with the app's lifespan."""
    options = options or ServerOptions()
    template = chat_template or ChatTemplate()
    metrics = Metrics()
    engine = Engine(lm, max_batch=options.max_batch, max_queue=options.max_queue, metrics=metrics)
    model, tokenizer = lm.model, lm.tokenizer
    context = model.config.block_size
    token_limit = min(options.max_tokens or context, context)
    decoder = is_decoder(model)
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:  # uvicorn has let in-flight responses finish; the engine drains what is left
            await asyncio.get_running_loop().run_in_executor(None, engine.stop)

    app = FastAPI(title="lmforge server", version="1", lifespan=lifespan,
                  description="OpenAI-compatible completions, chat and embeddings, plus fill-mask and classify.")
    app.state.engine, app.state.metrics = engine, metrics

    @app.exception_handler(APIError)
    async def _api_error(request, error: APIError):
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, error: RequestValidationError):
        problems = error.errors()
        first = problems[0] if problems else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
                            for e in problems[:5])
        return APIError(400, f"invalid request: {message}", param=where or None).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, error: StarletteHTTPException):
        return APIError(error.status_code, str(error.detail), headers=getattr(error, "headers", None)).response()

    def check_key(request: Request) -> None:
        if options.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, key = given.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(key.strip().encode(), options.api_key.encode()):
            raise APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    guarded = [Depends(check_key)]
    app.add_middleware(_BodiesAreJson)
    app.add_middleware(CountRequests, metrics=metrics)

    def check_model(name: str | None) -> None:
        if name is not None and name != options.model_name:
            raise APIError(404, f"the model '{name}' does not exist; this server serves '{options.model_name}'",
                           param="model", code="model_not_found")

    def need_decoder(what: str) -> None:
        if not decoder:
            raise APIError(400, f"{what} needs a decoder (gpt, llama); this server's model is "
                                f"'{lm.config.model.arch}' (use /v1/fill-mask, /v1/classify or /v1/embeddings)")

    async def run_call(fn):
        """Run model work on the engine thread (it owns the model); ValueError becomes a 400."""
        call = Call(fn)
        try:
            engine.submit(call)
        except QueueFull as full:
            raise APIError(503, f"server busy: {full}; retry shortly", headers={"Retry-After": "1"}) from None
        try:
            return await asyncio.wrap_future(call.future)
        except ValueError as error:
            raise APIError(400, str(error)) from None
        finally:
            call.cancelled = True  # a client gone before the call ran: skip it

    # -- generation -------------------------------------------------------------------------------
    def stops_of(body: Sampling, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stops) > 4 or not all(stops):
            raise APIError(400, f"stop takes up to 4 non-empty strings, got {stops!r:.200}", param="stop")
        return tuple(stops) + extra

    def check_sampling(body: Sampling) -> None:
        unsupported = {"presence_penalty": body.presence_penalty != 0, "frequency_penalty": body.frequency_penalty != 0,
                       "logit_bias": bool(body.logit_bias)}
        for name, used in unsupported.items():
            if used:
                raise APIError(400, f"{name} is not supported by this server (leave it out)", param=name)
        if body.num_beams > 1:
            if body.stream:
                raise APIError(400, "beam search (num_beams > 1) is not streamed; set stream to false", param="stream")
            if body.n > body.num_beams:
                raise APIError(400, f"n={body.n} is more than num_beams={body.num_beams}", param="n")

    def encode_prompt(prompt, param: str) -> list[int]:
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

    def plan(body: Sampling, prompts: list[list[int]], default_max: int | None, param: str) -> int:
        """Check the lengths against the context; returns max_tokens."""
        longest = max(map(len, prompts))
        if longest >= context:
            raise APIError(400, f"the prompt is {longest} tokens long; this model's context is {context} tokens, "
                                "so the prompt must be shorter", param=param, code="context_length_exceeded")
        max_tokens = body.max_tokens if body.max_tokens is not None else default_max
        if max_tokens is None:
            max_tokens = min(context - longest, token_limit)
        if max_tokens > token_limit:
            raise APIError(400, f"max_tokens={max_tokens} is more than this server allows ({token_limit})",
                           param="max_tokens")
        if longest + max_tokens > context:
            raise APIError(400, f"this model's maximum context length is {context} tokens, but {longest + max_tokens} "
                                f"were requested ({longest} in the prompt, {max_tokens} for the completion); reduce "
                                "the prompt or max_tokens", param="max_tokens", code="context_length_exceeded")
        rows = len(prompts) * body.n
        if body.num_beams == 1 and rows > options.max_batch:
            raise APIError(400, f"{len(prompts)} prompt(s) x n={body.n} = {rows} sequences, more than this server "
                                f"runs at once ({options.max_batch}, --max-batch)", param="n")
        return max_tokens

    def sampling_config(body: Sampling, max_tokens: int, stops: tuple[str, ...], seed: int | None) -> SamplingConfig:
        temperature = 0.0 if body.temperature < 1e-5 else body.temperature
        return SamplingConfig(max_new_tokens=max_tokens, temperature=temperature, top_k=body.top_k,
                              top_p=None if body.top_p >= 1 else body.top_p, repetition_penalty=body.repetition_penalty,
                              stop=stops, seed=seed, ignore_eos=body.ignore_eos)

    def token_text(token: int) -> str:
        return tokenizer.decode([token], skip_special_tokens=False)

    async def beam_choices(body: Sampling, prompts: list[list[int]], max_tokens: int, stops) -> list[dict]:
        def work():
            found = []
            for ids in prompts:
                beams = beam_search(model, ids, num_beams=body.num_beams, max_new_tokens=max_tokens,
                                    length_penalty=body.length_penalty,
                                    eos_id=None if body.ignore_eos else tokenizer.eos_id, num_return=body.n)
                for hyp in beams:
                    text = tokenizer.decode(hyp.tokens)
                    cut = cut_at_stop(text, stops)
                    reason = "stop" if hyp.finished or cut != text else "length"
                    found.append({"text": cut, "finish_reason": reason, "tokens": len(hyp.tokens)})
            return found

        return await run_call(work)

    def start_generation(body: Sampling, prompts: list[list[int]], max_tokens: int, stops, top_logprobs: int | None,
                         loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> Generation:
        sequences = []
        for p, ids in enumerate(prompts):
            for j in range(body.n):
                seed = None if body.seed is None else body.seed + j
                generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed) \
                    if seed is not None else None
                sequences.append(Sequence(p * body.n + j, ids, sampling_config(body, max_tokens, stops, seed), generator))
        for seq in sequences:
            seq.sampling.check()
        generation = Generation(sequences, lambda event: loop.call_soon_threadsafe(queue.put_nowait, event),
                                eos_id=None if body.ignore_eos else tokenizer.eos_id, top_logprobs=top_logprobs,
                                timeout=options.timeout, decode=tokenizer.decode)
        try:
            engine.submit(generation)
        except QueueFull as full:
            raise APIError(503, f"server busy: {full}; retry shortly", headers={"Retry-After": "1"}) from None
        return generation

    async def collect(request: Request, generation: Generation, queue: asyncio.Queue, count: int):
        """Wait for a whole generation (not streamed); a client that leaves cancels it."""
        texts, reasons = [""] * count, [None] * count
        logprobs: list[list[dict]] = [[] for _ in range(count)]
        getter, looked = None, time.monotonic()
        try:
            while True:
                # the getter survives the timeouts, so no event is lost between two looks at the connection
                getter = getter or asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter}, timeout=0.25)
                if time.monotonic() - looked > 0.25:  # events may flow without pause: look by the clock
                    looked = time.monotonic()
                    if await request.is_disconnected():
                        engine.cancel(generation)
                        raise APIError(400, "client disconnected")
                if not done:
                    continue
                event, getter = getter.result(), None
                if event[0] == "delta":
                    texts[event[1]] += event[2]
                    logprobs[event[1]] += event[3]
                elif event[0] == "finish":
                    reasons[event[1]] = event[2]
                elif event[0] == "error":
                    raise APIError(event[1], event[2])
                else:
                    return texts, reasons, logprobs, event[1]
        except asyncio.CancelledError:
            engine.cancel(generation)
            raise
        finally:
            if getter is not None:
                getter.cancel()

    def completion_logprobs(entries: list[dict]) -> dict:
        tokens = [token_text(e["token"]) for e in entries]
        offsets, at = [], 0
        for t in tokens:
            offsets.append(at)
            at += len(t)
        return {"tokens": tokens, "token_logprobs": [e["logprob"] for e in entries],
                "top_logprobs": [{token_text(i): lp for i, lp in e["top"]} for e in entries], "text_offset": offsets}

    def chat_logprobs(entries: list[dict]) -> dict:
        def item(token, lp):
            text = token_text(token)
            return {"token": text, "logprob": lp, "bytes": list(text.encode())}
        return {"content": [{**item(e["token"], e["logprob"]), "top_logprobs": [item(i, lp) for i, lp in e["top"]]}
                            for e in entries]}

    def sse(payload) -> str:
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    def stream(generation: Generation, queue: asyncio.Queue, chunk, include_usage: bool, first=None):
        async def events():
            try:
                for piece in first or ():
                    yield sse(piece)
                while True:
                    event = await queue.get()
                    if event[0] == "delta":
                        yield sse(chunk(event[1], event[2], None, event[3]))
                    elif event[0] == "finish":
                        yield sse(chunk(event[1], "", event[2], []))
                    elif event[0] == "error":
                        yield sse({"error": {"message": event[2], "type": "server_error", "param": None,
                                             "code": event[1]}})
                        break
                    else:
                        if include_usage:
                            yield sse({**chunk(0, "", None, []), "choices": [], "usage": event[1]})
                        break
                yield "data: [DONE]\n\n"
            finally:  # also when the client disconnects: the engine frees the slots at its next step
                engine.cancel(generation)
        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/completions", dependencies=guarded)
    async def completions(body: CompletionRequest, request: Request):
        """OpenAI's text completions, streamed as server-sent events when `stream` is true."""
        check_model(body.model)
        need_decoder("/v1/completions")
        check_sampling(body)
        for name, used in {"echo": body.echo, "suffix": body.suffix is not None}.items():
            if used:
                raise APIError(400, f"{name} is not supported by this server (leave it out)", param=name)
        raw = body.prompt
        if isinstance(raw, str) or (raw and isinstance(raw[0], int)):
            raw = [raw]
        if not raw or len(raw) > MAX_INPUTS:
            raise APIError(400, f"prompt must hold 1 to {MAX_INPUTS} prompts", param="prompt")
        prompts = [encode_prompt(p, "prompt") for p in raw]
        max_tokens = plan(body, prompts, 16, "prompt")
        stops = stops_of(body)
        rid, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if body.num_beams > 1:
            found = await beam_choices(body, prompts, max_tokens, stops)
            choices = [{"index": i, "text": c["text"], "logprobs": None, "finish_reason": c["finish_reason"]}
                       for i, c in enumerate(found)]
            completion = sum(c["tokens"] for c in found)
            prompt_tokens = sum(map(len, prompts))
            return {"id": rid, "object": "text_completion", "created": now, "model": options.model_name,
                    "choices": choices, "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                                                  "total_tokens": prompt_tokens + completion}}
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        generation = start_generation(body, prompts, max_tokens, stops, body.logprobs, loop, queue)

        def chunk(index, text, reason, entries):
            return {"id": rid, "object": "text_completion", "created": now, "model": options.model_name,
                    "choices": [{"index": index, "text": text, "finish_reason": reason,
                                 "logprobs": completion_logprobs(entries) if body.logprobs is not None else None}]}

        if body.stream:
            return stream(generation, queue, chunk, bool(body.stream_options and body.stream_options.include_usage))
        texts, reasons, entries, usage = await collect(request, generation, queue, len(generation.sequences))
        choices = [{"index": i, "text": t, "finish_reason": r,
                    "logprobs": completion_logprobs(e) if body.logprobs is not None else None}
                   for i, (t, r, e) in enumerate(zip(texts, reasons, entries))]
        return {"id": rid, "object": "text_completion", "created": now, "model": options.model_name,
                "choices": choices, "usage": usage}

    @app.post("/v1/chat/completions", dependencies=guarded)
    async def chat_completions(body: ChatRequest, request: Request):
        """OpenAI's chat completions: the messages go through the model's chat template."""
        check_model(body.model)
        need_decoder("/v1/chat/completions")
        check_sampling(body)
        if body.max_completion_tokens is not None:
            body.max_tokens = body.max_completion_tokens
        messages = []
        for m in body.messages:
            content = m.content if isinstance(m.content, str) else "".join(p.text for p in m.content or [])
            messages.append((m.role, content))
        prompt = encode_prompt(template.render(messages), "messages")
        max_tokens = plan(body, [prompt], None, "messages")
        stops = stops_of(body, template.stop)
        rid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.num_beams > 1:
            found = await beam_choices(body, [prompt], max_tokens, stops)
            completion = sum(c["tokens"] for c in found)
            return {"id": rid, "object": "chat.completion", "created": now, "model": options.model_name,
                    "choices": [{"index": i, "message": {"role": "assistant", "content": c["text"]},
                                 "logprobs": None, "finish_reason": c["finish_reason"]} for i, c in enumerate(found)],
                    "usage": {"prompt_tokens": len(prompt), "completion_tokens": completion,
                              "total_tokens": len(prompt) + completion}}
        top = (body.top_logprobs or 0) if body.logprobs else None
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        generation = start_generation(body, [prompt], max_tokens, stops, top, loop, queue)

        def chunk(index, text, reason, entries):
            delta = {"content": text} if text or reason is None else {}
            return {"id": rid, "object": "chat.completion.chunk", "created": now, "model": options.model_name,
                    "choices": [{"index": index, "delta": delta, "finish_reason": reason,
                                 "logprobs": chat_logprobs(entries) if top is not None and entries else None}]}

        if body.stream:
            opening = [{"id": rid, "object": "chat.completion.chunk", "created": now, "model": options.model_name,
                        "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                                     "logprobs": None}]} for i in range(body.n)]
            return stream(generation, queue, chunk, bool(body.stream_options and body.stream_options.include_usage),
                          opening)
        texts, reasons, entries, usage = await collect(request, generation, queue, body.n)
        return {"id": rid, "object": "chat.completion", "created": now, "model": options.model_name,
                "choices": [{"index": i, "message": {"role": "assistant", "content": t},
                             "logprobs": chat_logprobs(e) if top is not None else None, "finish_reason": r}
                            for i, (t, r, e) in enumerate(zip(texts, reasons, entries))], "usage": usage}

    # -- other model work -------------------------------------------------------------------------
    @app.post("/v1/embeddings", dependencies=guarded)
    async def embeddings(body: EmbeddingRequest):
        """Mean-pooled final hidden states, unit length, in OpenAI's shape (float or base64 float32)."""
        check_model(body.model)
        if body.dimensions is not None and body.dimensions != model.config.n_embd:
            raise APIError(400, f"dimensions must be {model.config.n_embd} (this model's width) or left out, got "
                                f"{body.dimensions}", param="dimensions")
        raw = body.input
        if isinstance(raw, str) or (raw and isinstance(raw[0], int)):
            raw = [raw]
        if not raw or len(raw) > MAX_INPUTS:
            raise APIError(400, f"input must hold 1 to {MAX_INPUTS} texts or token lists", param="input")
        rows = []
        for i, item in enumerate(raw):
            if isinstance(item, str) and not item:
                raise APIError(400, f"input {i} is an empty string", param="input")
            if not isinstance(item, str) and not item:
                raise APIError(400, f"input {i} is an empty token list", param="input")
            rows.append(encode_for_embedding(model, tokenizer, item) if isinstance(item, str)
                        else encode_prompt(item, "input"))
        vectors = await run_call(lambda: embed_ids(model, rows))
        data = []
        for i, vector in enumerate(vectors.numpy().astype(np.float32)):
            encoded = base64.b64encode(vector.astype("<f4").tobytes()).decode() if body.encoding_format == "base64" \
                else vector.tolist()
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        tokens = sum(map(len, rows))
        return {"object": "list", "data": data, "model": options.model_name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @app.post("/v1/fill-mask", dependencies=guarded)
    async def fill_mask(body: FillMaskRequest):
        """The top_k tokens for each [MASK] of the text (encoders with a masked-LM head)."""
        check_model(body.model)
        from ..infer.fill_mask import fill_mask as predict

        found = await run_call(lambda: predict(model, tokenizer, body.text, body.top_k))
        return {"object": "list", "model": options.model_name,
                "masks": [{"index": i, "predictions": [{"token": t, "probability": p} for t, p in mask]}
                          for i, mask in enumerate(found)]}

    @app.post("/v1/classify", dependencies=guarded)
    async def classify(body: ClassifyRequest):
        """A label and the probability of every label for each text (models fine-tuned to classify)."""
        check_model(body.model)
        from ..infer.classify import classify_texts

        texts = [body.texts] if isinstance(body.texts, str) else body.texts
        pairs = [body.text_pairs] if isinstance(body.text_pairs, str) else body.text_pairs
        if not texts or len(texts) > MAX_INPUTS:
            raise APIError(400, f"texts must hold 1 to {MAX_INPUTS} texts", param="texts")
        if pairs is not None and len(pairs) != len(texts):
            raise APIError(400, f"got {len(texts)} texts but {len(pairs)} text_pairs", param="text_pairs")
        labels = lm.config.model.labels
        found = await run_call(lambda: classify_texts(model, tokenizer, labels, texts, pairs))
        return {"object": "list", "model": options.model_name,
                "data": [{"index": i, "label": label, "probabilities": probs} for i, (label, probs) in enumerate(found)]}

    # -- service ----------------------------------------------------------------------------------
    @app.get("/v1/models", dependencies=guarded)
    async def models():
        """The one model this server serves."""
        return {"object": "list", "data": [{"id": options.model_name, "object": "model", "created": created,
                                            "owned_by": "lmforge"}]}

    @app.get("/health")
    async def health():
        """Liveness: 200 while the engine thread runs."""
        if not engine.thread.is_alive() and not engine.stopping:
            raise APIError(503, "the engine is not running")
        return {"status": "ok", "model": options.model_name, "queue_depth": len(engine.pending),
                "active_sequences": engine.running_sequences}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus():
        """Prometheus text exposition: requests, tokens, latency histogram, queue depth."""
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    return app
