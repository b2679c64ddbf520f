"""The engine: one thread that owns the model. Generation requests share a continuously batched decoder
(up to `max_batch` sequences); other model work (embeddings, fill-mask, classify, beam search) runs between
decoding steps. A bounded queue holds what waits; deadlines and cancellation are checked every step."""
from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..infer.batching import BatchDecoder
from ..infer.generate import SamplingConfig, next_token
from ..infer.slots import SlotDecoder
from ..models.contract import is_decoder
from .metrics import Metrics


class QueueFull(Exception):
    """The waiting queue is at its bound: the server answers 503 with Retry-After."""


@dataclass
class Sequence:
    """One continuation being generated (a request with n=3 has three)."""

    index: int
    prompt: list[int]
    sampling: SamplingConfig
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the text already sent
    logprobs: list[dict] = field(default_factory=list)  # per token, not yet sent
    row: int | None = None
    logits: torch.Tensor | None = None
    finish_reason: str | None = None


class Generation:
    """A completion request: its sequences, options, and `emit(event)`, which must be thread-safe.

    Events: ("delta", index, text, logprob entries), ("finish", index, reason), ("done", usage),
    ("error", http status, message).
    """

    def __init__(self, sequences: list[Sequence], emit: Callable[[tuple], None], *, end_ids: tuple[int, ...],
                 top_logprobs: int | None, timeout: float, decode: Callable[[list[int]], str]):
        self.sequences, self.emit, self.end_ids = sequences, emit, frozenset(end_ids)  # tokens that end a sequence
        self.top_logprobs, self.decode = top_logprobs, decode
        self.submitted = time.monotonic()
        self.deadline = self.submitted + timeout
        self.timeout = timeout
        self.cancelled = False

    @property
    def prompt_tokens(self) -> int:
        return sum(len(s.prompt) for s in self.sequences)


class Call:
    """Other model work: `fn()` runs on the engine thread; its result (or exception) lands in `future`."""

    def __init__(self, fn: Callable[[], object]):
        self.fn, self.future = fn, concurrent.futures.Future()
        self.cancelled = False


def _longest_stop_prefix(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of `text` could be the start of a stop string (held back when streaming)."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:k]):
                best = k
                break
    return best


class Engine:
    """Runs generation and model calls on one thread; `max_batch=1` turns batching off."""

    def __init__(self, lm, *, max_batch: int = 8, max_queue: int = 64, metrics: Metrics | None = None):
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch} and {max_queue}")
        self.lm, self.max_batch, self.max_queue = lm, max_batch, max_queue
        self.metrics = metrics or Metrics()
        self.decoder = None
        if is_decoder(lm.model):  # on a GPU fixed slots, one captured step; elsewhere the growing shared cache
            on_gpu = next(lm.model.parameters()).device.type == "cuda" and lm.model.config.is_transformer
            self.decoder = SlotDecoder(lm.model, max_batch) if on_gpu else BatchDecoder(lm.model)
        self.pending: collections.deque = collections.deque()
        self.active: list[Generation] = []
        self.lock = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name="lmforge-engine", daemon=True)

    # -- the face the server uses ---------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is running and queued, then end the thread."""
        with self.lock:
            self.stopping = True
            self.lock.notify_all()
        self.thread.join(timeout)

    def submit(self, job: Generation | Call) -> None:
        """Queue a job; raises QueueFull when `max_queue` jobs already wait."""
        with self.lock:
            if self.stopping:
                raise QueueFull("the server is shutting down")
            if len(self.pending) >= self.max_queue:
                self.metrics.rejected += 1
                raise QueueFull(f"{len(self.pending)} requests are waiting, the most this server queues (--max-queue)")
            self.pending.append(job)
            self.metrics.queue_depth = len(self.pending)
            self.lock.notify_all()

    def cancel(self, job: Generation | Call) -> None:
        """Stop a job (client gone); its batch slots free at the next step."""
        job.cancelled = True
        with self.lock:
            self.lock.notify_all()

    @property
    def running_sequences(self) -> int:
        return sum(1 for g in self.active for s in g.sequences if s.row is not None)

    # -- the thread -----------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self.lock:
                while not self.pending and not self.active and not self.stopping:
                    self.lock.wait()
                if self.stopping and not self.pending and not self.active:
                    return
                calls, admitted = self._take()
                self.metrics.queue_depth = len(self.pending)
            for call in calls:
                self._run_call(call)
            for generation in admitted:
                self._prefill(generation)
            self._expire()
            self._step()
            self.metrics.active_sequences = self.running_sequences

    def _take(self) -> tuple[list[Call], list[Generation]]:
        # calls need no batch slot and run at once; generations enter in order while slots are free
        calls = [job for job in self.pending if isinstance(job, Call)]
        waiting = [job for job in self.pending if isinstance(job, Generation)]
        admitted = []
        free = self.max_batch - self.running_sequences
        while waiting and (waiting[0].cancelled or len(waiting[0].sequences) <= free):
            job = waiting.pop(0)
            if job.cancelled:
                self.metrics.cancelled += 1
                continue
            admitted.append(job)
            free -= len(job.sequences)
        now = time.monotonic()
        for job in [j for j in waiting if j.deadline < now or j.cancelled]:
            waiting.remove(job)
            if job.cancelled:
                self.metrics.cancelled += 1
            else:
                self._fail(job, 504, f"the request waited longer than the timeout of {job.timeout:g} s")
        self.pending = collections.deque(waiting)
        self.active.extend(admitted)
        return calls, admitted

    def _run_call(self, call: Call) -> None:
        if call.cancelled:
            call.future.cancel()
            return
        try:
            call.future.set_result(call.fn())
        except BaseException as error:  # the caller turns it into an HTTP error
            call.future.set_exception(error)

    def _prefill(self, generation: Generation) -> None:
        try:
            for seq in generation.sequences:
                seq.row, seq.logits = self.decoder.add(seq.prompt)
        except Exception as error:
            self._fail(generation, 500, f"prefill failed: {error}")

    def _expire(self) -> None:
        now = time.monotonic()
        for generation in list(self.active):
            if generation.cancelled:
                self.metrics.cancelled += 1
                self._release(generation)
            elif now > generation.deadline:
                self._fail(generation, 504, f"generation ran longer than the timeout of {generation.timeout:g} s")

    def _fail(self, generation: Generation, status: int, message: str) -> None:
        self._release(generation)
        generation.emit(("error", status, message))

    def _release(self, generation: Generation) -> None:
        for seq in generation.sequences:
            if seq.row is not None:
                self.decoder.remove(seq.row)
                seq.row = None
        if generation in self.active:
            self.active.remove(generation)

    def _step(self) -> None:
        feed: dict[int, int] = {}
        owners: dict[int, Sequence] = {}
        for generation in list(self.active):
            rows = [seq.row for seq in generation.sequences]
            try:
                for seq in generation.sequences:
                    if seq.row is not None:
                        token = self._advance(generation, seq)
                        if seq.finish_reason is None:
                            feed[seq.row], owners[seq.row] = token, seq
                        else:
                            self.decoder.remove(seq.row)
                            seq.row = None
            except Exception as error:  # one request's failure must not stop the others
                for row in rows:
                    feed.pop(row, None)
                self._fail(generation, 500, f"generation failed: {error}")
                continue
            if all(seq.finish_reason is not None for seq in generation.sequences):
                self.active.remove(generation)
                completion = sum(len(seq.tokens) for seq in generation.sequences)
                self.metrics.observe_generation(time.monotonic() - generation.submitted, generation.prompt_tokens)
                generation.emit(("done", {"prompt_tokens": generation.prompt_tokens, "completion_tokens": completion,
                                          "total_tokens": generation.prompt_tokens + completion}))
        if feed:
            self.metrics.decode_steps += 1
            for row, logits in self.decoder.step(feed).items():
                owners[row].logits = logits

    def _advance(self, generation: Generation, seq: Sequence) -> int:
        """Sample the next token of `seq`, send the new text, and decide whether it is finished."""
        cfg = seq.sampling
        history = torch.tensor([seq.prompt + seq.tokens], device=seq.logits.device)
        token = int(next_token(seq.logits[None], history, torch.ones_like(history, dtype=torch.bool), cfg,
                               seq.generator)[0])
        if generation.top_logprobs is not None:
            logprobs = seq.logits.float().log_softmax(-1)
            top = logprobs.topk(min(generation.top_logprobs, logprobs.numel()))
            seq.logprobs.append({"token": token, "logprob": float(logprobs[token]),
                                 "top": list(zip(top.indices.tolist(), top.values.tolist()))})
        self.metrics.generated_tokens += 1
        ended = token in generation.end_ids
        if not ended:
            seq.tokens.append(token)
        text = generation.decode(seq.tokens)
        cuts = [text.find(s) for s in cfg.stop if s in text]
        if cuts:
            text, seq.finish_reason = text[:min(cuts)], "stop"
        elif ended:
            seq.finish_reason = "stop"
        elif len(seq.tokens) >= cfg.max_new_tokens:
            seq.finish_reason = "length"
        if seq.finish_reason is None:
            if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the rest
                return token
            text = text[:len(text) - _longest_stop_prefix(text, cfg.stop)]
        if len(text) > seq.sent or (seq.logprobs and seq.finish_reason is not None):
            generation.emit(("delta", seq.index, text[seq.sent:], seq.logprobs))
            seq.sent, seq.logprobs = max(seq.sent, len(text)), []
        if seq.finish_reason is not None:
            generation.emit(("finish", seq.index, seq.finish_reason))
        return token
