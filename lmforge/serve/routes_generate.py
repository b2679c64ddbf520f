"""POST /v1/completions and /v1/chat/completions: OpenAI's generation endpoints, whole or streamed."""
from __future__ import annotations

import asyncio
import time
import uuid

from fastapi import APIRouter, Depends, Request

from ..infer.chat import chat_prompt
from ..infer.chat_template import TemplateError
from .errors import APIError
from .generation import (beam_choices, chat_logprobs, check_sampling, collect, completion_logprobs, plan,
                         start_generation, stops_of, stream)
from .schemas import ChatRequest, CompletionRequest
from .state import Server, ServerDep, check_key, listed

router = APIRouter(dependencies=[Depends(check_key)])


def _usage(prompt_tokens: int, completion: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request, server: ServerDep):
    """OpenAI's text completions, streamed as server-sent events when `stream` is true."""
    server.check_model(body.model)
    server.need_decoder("/v1/completions")
    check_sampling(body)
    for name, used in {"echo": body.echo, "suffix": body.suffix is not None}.items():
        if used:
            raise APIError(400, f"{name} is not supported by this server (leave it out)", param=name)
    prompts = [server.encode_prompt(p, "prompt") for p in listed(body.prompt, "prompts", "prompt")]
    max_tokens = plan(server, body, prompts, 16, "prompt")
    stops = stops_of(body)
    rid, now, name = f"cmpl-{uuid.uuid4().hex}", int(time.time()), server.options.model_name
    if body.num_beams > 1:
        found = await beam_choices(server, body, prompts, max_tokens, stops)
        choices = [{"index": i, "text": c["text"], "logprobs": None, "finish_reason": c["finish_reason"]}
                   for i, c in enumerate(found)]
        return {"id": rid, "object": "text_completion", "created": now, "model": name,
                "choices": choices, "usage": _usage(sum(map(len, prompts)), sum(c["tokens"] for c in found))}
    loop, queue = asyncio.get_running_loop(), asyncio.Queue()
    generation = start_generation(server, body, prompts, max_tokens, stops, body.logprobs, loop, queue)

    def logprobs(entries):
        return completion_logprobs(server, entries) if body.logprobs is not None else None

    def chunk(index, text, reason, entries):
        return {"id": rid, "object": "text_completion", "created": now, "model": name,
                "choices": [{"index": index, "text": text, "finish_reason": reason, "logprobs": logprobs(entries)}]}

    if body.stream:
        return stream(server, generation, queue, chunk, bool(body.stream_options and body.stream_options.include_usage))
    texts, reasons, entries, usage = await collect(server, request, generation, queue, len(generation.sequences))
    choices = [{"index": i, "text": t, "finish_reason": r, "logprobs": logprobs(e)}
               for i, (t, r, e) in enumerate(zip(texts, reasons, entries))]
    return {"id": rid, "object": "text_completion", "created": now, "model": name, "choices": choices, "usage": usage}


def _chat_prompt(server: Server, body: ChatRequest):
    """The messages rendered through the chat template: (prompt ids, the template's form)."""
    messages = []
    for m in body.messages:
        content = m.content if isinstance(m.content, str) else "".join(p.text for p in m.content or [])
        messages.append({"role": m.role, "content": content})
    try:
        prompt, form = chat_prompt(server.lm.bundle, messages, server.chat_template)
    except TemplateError as error:  # e.g. a template that insists user and assistant alternate
        raise APIError(400, str(error), param="messages") from None
    return server.encode_prompt(prompt, "messages"), form


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request, server: ServerDep):
    """OpenAI's chat completions: the messages go through the model's chat template."""
    server.check_model(body.model)
    server.need_decoder("/v1/chat/completions")
    check_sampling(body)
    if body.max_completion_tokens is not None:
        body.max_tokens = body.max_completion_tokens
    prompt, form = _chat_prompt(server, body)
    max_tokens = plan(server, body, [prompt], None, "messages")
    stops = stops_of(body, form.end_texts)
    rid, now, name = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), server.options.model_name
    if body.num_beams > 1:
        found = await beam_choices(server, body, [prompt], max_tokens, stops, form.end_ids)
        return {"id": rid, "object": "chat.completion", "created": now, "model": name,
                "choices": [{"index": i, "message": {"role": "assistant", "content": c["text"]},
                             "logprobs": None, "finish_reason": c["finish_reason"]} for i, c in enumerate(found)],
                "usage": _usage(len(prompt), sum(c["tokens"] for c in found))}
    top = (body.top_logprobs or 0) if body.logprobs else None
    loop, queue = asyncio.get_running_loop(), asyncio.Queue()
    generation = start_generation(server, body, [prompt], max_tokens, stops, top, loop, queue, form.end_ids)

    def chunk(index, text, reason, entries):
        delta = {"content": text} if text or reason is None else {}
        return {"id": rid, "object": "chat.completion.chunk", "created": now, "model": name,
                "choices": [{"index": index, "delta": delta, "finish_reason": reason,
                             "logprobs": chat_logprobs(server, entries) if top is not None and entries else None}]}

    if body.stream:
        opening = [{"id": rid, "object": "chat.completion.chunk", "created": now, "model": name,
                    "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                                 "logprobs": None}]} for i in range(body.n)]
        return stream(server, generation, queue, chunk,
                      bool(body.stream_options and body.stream_options.include_usage), opening)
    texts, reasons, entries, usage = await collect(server, request, generation, queue, body.n)
    return {"id": rid, "object": "chat.completion", "created": now, "model": name,
            "choices": [{"index": i, "message": {"role": "assistant", "content": t},
                         "logprobs": chat_logprobs(server, e) if top is not None else None, "finish_reason": r}
                        for i, (t, r, e) in enumerate(zip(texts, reasons, entries))], "usage": usage}
