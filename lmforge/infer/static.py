"""Decoding steps of fixed shape over a static KV cache, captured once as a CUDA graph on a GPU.

A 124M-parameter GPT's decoding step is a few hundred small kernels; launched one by one from Python each takes
longer to launch than to run, so batch-1 decoding is set by launch overhead, not by the GPU. Here the cache is
allocated once for the whole generation, the new token's column and its attention mask live on the device, and
every step attends over all cache columns (the unfilled ones masked): the same shapes and addresses every step.
On CUDA that step is recorded once as a CUDA graph and then replayed, one launch per token; elsewhere it runs
eagerly (the plain twin the tests compare with today's growing-cache decoder: the same greedy tokens).
A captured decoder is kept per model and shape, so repeated calls (a benchmark, a server) capture once.

Two details keep each layer's attention at one kernel: the mask is additive (0 or -inf, in the cache's dtype), so
SDPA does not turn a boolean mask into one per layer per step, and the capacity is rounded up to a multiple of
ALIGN columns, so the memory-efficient kernel does not pad the mask per call. With `compile` the step is also
handed to torch.compile (fused norms, residual adds and activations: fewer, larger kernels) before the capture;
a compiler that fails (no C++ compiler, an operation it cannot lower) leaves the step eager, with one warning.
"""
from __future__ import annotations

import warnings
import weakref

import torch

from ..errors import first_line

# captured decoders per model: (batch, capacity, dtype, device, weight addresses) -> StaticDecoder
_CAPTURED: weakref.WeakKeyDictionary[torch.nn.Module, dict] = weakref.WeakKeyDictionary()
KEEP_PER_MODEL = 4
ALIGN = 64  # cache columns: a multiple of this (SDPA's memory-efficient kernel wants aligned mask rows)


def aligned(columns: int) -> int:
    """`columns` rounded up to a multiple of ALIGN."""
    return -(-columns // ALIGN) * ALIGN


def static_supported(model) -> bool:
    """Whether `model` decodes through KVCache layers (a Transformer decoder): the static path applies."""
    config = getattr(model, "config", None)
    return bool(getattr(model, "is_causal", False) and getattr(config, "is_transformer", False)
                and callable(getattr(model, "make_cache", None)))


class StaticDecoder:
    """prefill(ids, positions, pad_mask) fills the cache from column 0 and returns the last logits (B, vocab);
    step(tokens) feeds one token per row and returns the next logits (a buffer the next step overwrites)."""

    def __init__(self, model, batch: int, capacity: int, dtype: torch.dtype, device: torch.device, capture: bool,
                 compile: bool = False, reorder: bool = False):
        capacity = aligned(capacity)
        self.model, self.capacity, self.capture = model, capacity, capture
        self.cache = model.make_cache(batch, capacity, dtype=dtype, device=device)
        self.column = torch.zeros(1, dtype=torch.long, device=device)  # where the next token's keys go
        # what a query adds to its scores per column: 0 where it may look, -inf elsewhere (unfilled, padding)
        self.mask = torch.full((batch, 1, 1, capacity), float("-inf"), dtype=dtype, device=device)
        self._compiled = torch.compile(self._step, dynamic=False) if compile else None
        self.run = self._compiled_or_plain if compile else self._step
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.positions = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.graph, self.logits, self.filled = None, None, 0
        # beam search: before each step row i of the cache becomes a copy of row parents[i] (inside the graph)
        self.parents = torch.arange(batch, device=device) if reorder else None

    def prefill(self, ids: torch.Tensor, positions: torch.Tensor, pad_mask: torch.Tensor | None) -> torch.Tensor:
        """Run the prompt columns (B, T) through the growing-cache path into the static buffers."""
        T = ids.size(1)
        if T > self.capacity:
            raise ValueError(f"a prefill of {T} columns does not fit the static cache of {self.capacity}")
        for layer in self.cache:
            layer.length, layer.static = 0, None
        logits = self.model(ids, positions=positions, pad_mask=pad_mask, cache=self.cache, last_only=True)[:, -1]
        for layer in self.cache:
            layer.static = (self.column, self.mask)
        self.column.fill_(T)
        self.mask.fill_(float("-inf"))
        if pad_mask is None:
            self.mask[:, 0, 0, :T] = 0.0
        else:
            self.mask[:, 0, 0, :T].masked_fill_(pad_mask.bool(), 0.0)
        last = positions[:, -1:] if positions.dim() == 2 else positions[-1:].expand(ids.size(0), 1)
        self.positions.copy_(last + 1)
        self.filled = T
        return logits

    def _compiled_or_plain(self) -> torch.Tensor:
        """The compiled step; after a compiler failure the plain one (a failed compile stops before the step's
        counters advance, and the cache and mask writes it may have made are the same ones again)."""
        if self._compiled is not None:
            try:
                return self._compiled()
            except Exception as error:  # noqa: BLE001 - any compiler failure: decoding goes on without it
                warnings.warn(f"generate(compile=True): torch.compile failed ({type(error).__name__}: "
                              f"{first_line(error)}); decoding continues without it", stacklevel=2)
                self._compiled = None
        return self._step()

    def _step(self) -> torch.Tensor:
        if self.parents is not None:
            for layer in self.cache:
                layer.k.copy_(layer.k.index_select(0, self.parents))
                layer.v.copy_(layer.v.index_select(0, self.parents))
        self.mask.index_fill_(3, self.column, 0.0)  # the new token sees itself
        logits = self.model(self.token, positions=self.positions, cache=self.cache)[:, -1]
        self.column.add_(1)
        self.positions.add_(1)
        return logits

    def step(self, tokens: torch.Tensor, parents: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, vocab) after feeding `tokens` (B,) at the next column; with `parents` (B,) (a decoder made
        with reorder=True) each row first takes over the cache of the row it names."""
        if self.filled >= self.capacity:
            raise ValueError(f"the static cache of {self.capacity} columns is full; prefill again")
        if parents is not None:
            self.parents.copy_(parents)
        elif self.parents is not None:
            self.parents.copy_(torch.arange(self.parents.numel(), device=self.parents.device))
        self.token.copy_(tokens.view(-1, 1))
        self.filled += 1
        if not self.capture:
            return self.run()
        if self.graph is None:
            self._record()
        self.graph.replay()
        return self.logits

    def _record(self) -> None:
        # beam parents are the identity while recording, so the warm-up steps move no cache rows
        parents = self.parents.clone() if self.parents is not None else None
        if parents is not None:
            self.parents.copy_(torch.arange(parents.numel(), device=parents.device))
        self.graph, self.logits = capture_step(self.run, (self.column, self.positions, self.mask))
        if parents is not None:
            self.parents.copy_(parents)


def capture_step(step, state: tuple[torch.Tensor, ...]) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """Record `step()` as a CUDA graph: two warm-up calls on a side stream (as capture requires; with torch.compile
    the first one compiles), then the recording. The `state` tensors the calls advance (columns, positions,
    masks) are put back; the cache columns they wrote are rewritten by the next real step before being read.
    Returns the graph and the output tensor each replay refills."""
    saved = [tensor.clone() for tensor in state]

    def restore() -> None:
        for tensor, value in zip(state, saved):
            tensor.copy_(value)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    restore()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = step()
    restore()
    return graph, output


def static_decoder(model, batch: int, capacity: int, compile: bool = False, reorder: bool = False) -> StaticDecoder:
    """A StaticDecoder for `model` at this batch and cache size: captured (and kept for reuse) on CUDA; with
    `compile` its step goes through torch.compile first; with `reorder` its steps take beam parents."""
    param = next(model.parameters())
    capture = param.device.type == "cuda"
    options = dict(compile=compile, reorder=reorder)
    if not capture:
        return StaticDecoder(model, batch, capacity, param.dtype, param.device, capture=False, **options)
    key = (batch, aligned(capacity), compile, reorder, param.dtype, param.device,
           tuple(p.data_ptr() for p in model.parameters()))
    kept = _CAPTURED.setdefault(model, {})
    if key not in kept:
        while len(kept) >= KEEP_PER_MODEL:
            kept.pop(next(iter(kept)))
        kept[key] = StaticDecoder(model, batch, capacity, param.dtype, param.device, capture=True, **options)
    return kept[key]
