"""From a request to generation: sampling options checked against the context, beam search, the engine's
Generation started and collected whole, or streamed as server-sent events; logprobs in OpenAI's shapes."""
from __future__ import annotations

import asyncio
import json
import time

import torch
from fastapi import Request
from fastapi.responses import StreamingResponse

from ..infer.beam import beam_search, cut_at_stop
from ..infer.generate import SamplingConfig
from .engine import Generation, QueueFull, Sequence
from .errors import APIError
from .schemas import Sampling
from .state import Server


def stops_of(body: Sampling, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The request's stop strings (up to 4, non-empty) followed by `extra` (a chat template's end texts)."""
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > 4 or not all(stops):
        raise APIError(400, f"stop takes up to 4 non-empty strings, got {stops!r:.200}", param="stop")
    return tuple(stops) + extra


def check_sampling(body: Sampling) -> None:
    """Refuse the options this server does not implement and beam-search combinations it cannot honour."""
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


def plan(server: Server, body: Sampling, prompts: list[list[int]], default_max: int | None, param: str) -> int:
    """Check the lengths against the context; returns max_tokens."""
    context, token_limit = server.context, server.token_limit
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
    if body.num_beams == 1 and rows > server.options.max_batch:
        raise APIError(400, f"{len(prompts)} prompt(s) x n={body.n} = {rows} sequences, more than this server "
                            f"runs at once ({server.options.max_batch}, --max-batch)", param="n")
    return max_tokens


def sampling_config(body: Sampling, max_tokens: int, stops: tuple[str, ...], seed: int | None) -> SamplingConfig:
    """The request's sampling options as the generator's SamplingConfig."""
    temperature = 0.0 if body.temperature < 1e-5 else body.temperature
    return SamplingConfig(max_new_tokens=max_tokens, temperature=temperature, top_k=body.top_k,
                          top_p=None if body.top_p >= 1 else body.top_p, repetition_penalty=body.repetition_penalty,
                          stop=stops, seed=seed, ignore_eos=body.ignore_eos)


def ends_of(server: Server, body: Sampling, end_ids: tuple[int, ...] | None) -> tuple[int, ...]:
    """The token ids that end a sequence: none with ignore_eos, else `end_ids` or the tokenizer's end-of-text."""
    if body.ignore_eos:
        return ()
    eos_id = server.tokenizer.eos_id
    return end_ids if end_ids is not None else ((eos_id,) if eos_id is not None else ())


async def beam_choices(server: Server, body: Sampling, prompts: list[list[int]], max_tokens: int, stops,
                       end_ids: tuple[int, ...] | None = None) -> list[dict]:
    """Beam search for each prompt on the engine thread: body.n hypotheses each (text, finish_reason, tokens)."""
    model, tokenizer = server.model, server.tokenizer

    def work():
        found = []
        for ids in prompts:
            beams = beam_search(model, ids, num_beams=body.num_beams, max_new_tokens=max_tokens,
                                length_penalty=body.length_penalty, eos_id=ends_of(server, body, end_ids),
                                num_return=body.n)
            for hyp in beams:
                text = tokenizer.decode(hyp.tokens)
                cut = cut_at_stop(text, stops)
                reason = "stop" if hyp.finished or cut != text else "length"
                found.append({"text": cut, "finish_reason": reason, "tokens": len(hyp.tokens)})
        return found

    return await server.run_call(work)


def start_generation(server: Server, body: Sampling, prompts: list[list[int]], max_tokens: int, stops,
                     top_logprobs: int | None, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue,
                     end_ids: tuple[int, ...] | None = None) -> Generation:
    """Submit body.n sequences per prompt to the engine; its events arrive on `queue` (503 when it is full)."""
    sequences = []
    for p, ids in enumerate(prompts):
        for j in range(body.n):
            seed = None if body.seed is None else body.seed + j
            generator = torch.Generator(device=next(server.model.parameters()).device).manual_seed(seed) \
                if seed is not None else None
            sequences.append(Sequence(p * body.n + j, ids, sampling_config(body, max_tokens, stops, seed), generator))
    for seq in sequences:
        seq.sampling.check()
    generation = Generation(sequences, lambda event: loop.call_soon_threadsafe(queue.put_nowait, event),
                            end_ids=ends_of(server, body, end_ids), top_logprobs=top_logprobs,
                            timeout=server.options.timeout, decode=server.tokenizer.decode)
    try:
        server.engine.submit(generation)
    except QueueFull as full:
        raise APIError(503, f"server busy: {full}; retry shortly", headers={"Retry-After": "1"}) from None
    return generation


async def collect(server: Server, request: Request, generation: Generation, queue: asyncio.Queue, count: int):
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
                    server.engine.cancel(generation)
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
        server.engine.cancel(generation)
        raise
    finally:
        if getter is not None:
            getter.cancel()


def completion_logprobs(server: Server, entries: list[dict]) -> dict:
    """Logprobs in the text-completions shape (tokens, token_logprobs, top_logprobs, text_offset)."""
    tokens = [server.token_text(e["token"]) for e in entries]
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(t)
    return {"tokens": tokens, "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{server.token_text(i): lp for i, lp in e["top"]} for e in entries], "text_offset": offsets}


def chat_logprobs(server: Server, entries: list[dict]) -> dict:
    """Logprobs in the chat shape (content: token, logprob, bytes, top_logprobs)."""

    def item(token, lp):
        text = server.token_text(token)
        return {"token": text, "logprob": lp, "bytes": list(text.encode())}

    return {"content": [{**item(e["token"], e["logprob"]), "top_logprobs": [item(i, lp) for i, lp in e["top"]]}
                        for e in entries]}


def sse(payload) -> str:
    """One server-sent event carrying `payload` as JSON."""
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def stream(server: Server, generation: Generation, queue: asyncio.Queue, chunk, include_usage: bool, first=None):
    """The generation's events as server-sent events (each through `chunk`), `first` before them, then [DONE]."""

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
            server.engine.cancel(generation)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
