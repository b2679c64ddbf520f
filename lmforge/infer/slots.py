"""Continuous batching on fixed slots: the server's decoder with one shape for every step, so the step can be
captured once as a CUDA graph (as infer/static.py does for one generation).

`max_batch` slots share one KV cache of the model's context (rounded up to static.ALIGN columns). A sequence that
joins takes a free slot: its prompt is prefilled on its own and copied into the slot's first columns. Each slot
keeps its own column on the device (where its next token's keys go, which is also that token's position) and
its own additive mask row; a step feeds one token to every slot, the free ones included (their outputs are not
read), so rows join and leave without the batch changing shape. The same interface as BatchDecoder (add, step,
remove), which keeps the growing cache for CPUs and recurrent models.
"""
from __future__ import annotations

import torch

from ..models.contract import is_decoder
from .static import aligned, capture_step


class SlotDecoder:
    """Rows join with `add(prompt_ids)` (returning their next-token logits), advance together with
    `step({row: token})` and leave with `remove(row)`, on `slots` fixed cache rows; captured on CUDA."""

    def __init__(self, model, slots: int, capture: bool | None = None):
        if not is_decoder(model) or not model.config.is_transformer:
            raise ValueError("fixed-slot batching needs a Transformer decoder (gpt, llama)")
        param = next(model.parameters())
        self.model, self.slots, self.context = model.eval(), slots, model.config.block_size
        self.dtype, self.device = param.dtype, param.device
        capacity = aligned(self.context)
        self.cache = model.make_cache(slots, capacity, dtype=self.dtype, device=self.device)
        self.column = torch.zeros(slots, dtype=torch.long, device=self.device)  # each slot's next column
        self.mask = torch.full((slots, 1, 1, capacity), float("-inf"), dtype=self.dtype, device=self.device)
        self.token = torch.zeros(slots, 1, dtype=torch.long, device=self.device)
        for layer in self.cache:
            layer.static = (self.column, self.mask)
        self.capacity, self.free = capacity, list(range(slots))
        self.slot_of: dict[int, int] = {}  # row id -> slot
        self.lengths: dict[int, int] = {}  # row id -> tokens in the cache (host side: no read-back)
        self.capture = self.device.type == "cuda" if capture is None else capture
        self.graph, self.logits, self._next_id = None, None, 0

    def __len__(self) -> int:
        return len(self.slot_of)

    def length(self, row: int) -> int:
        """How many tokens of `row` are in the cache."""
        return self.lengths[row]

    @torch.no_grad()
    def add(self, prompt: list[int]) -> tuple[int, torch.Tensor]:
        """Prefill a free slot with `prompt`; returns (row id, logits (vocab,) for its next token)."""
        if not 0 < len(prompt) < self.context:
            raise ValueError(f"a prompt must have 1 to {self.context - 1} tokens, got {len(prompt)}")
        if not self.free:
            raise ValueError(f"all {self.slots} slots are taken; remove a row first")
        T = len(prompt)
        single = self.model.make_cache(1, T, dtype=self.dtype, device=self.device)
        logits = self.model(torch.tensor([prompt], device=self.device), cache=single, last_only=True)[0, -1]
        slot = self.free.pop(0)
        for layer, new in zip(self.cache, single):
            layer.k[slot, :, :T], layer.v[slot, :, :T] = new.k[0], new.v[0]
            layer.length = 0
        self.mask[slot].fill_(float("-inf"))
        self.mask[slot, 0, 0, :T] = 0.0
        self.column[slot] = T
        row, self._next_id = self._next_id, self._next_id + 1
        self.slot_of[row], self.lengths[row] = slot, T
        return row, logits

    def remove(self, row: int) -> None:
        """Free the row's slot (finished or cancelled)."""
        slot = self.slot_of.pop(row)
        del self.lengths[row]
        self.free.append(slot)

    @torch.no_grad()
    def step(self, tokens: dict[int, int]) -> dict[int, torch.Tensor]:
        """Feed one token to every row; returns each row's next-token logits (vocab,)."""
        if set(tokens) != set(self.slot_of):
            raise ValueError(f"step needs one token for each of the rows {sorted(self.slot_of)}, got {sorted(tokens)}")
        if any(self.lengths[row] >= self.context for row in tokens):
            raise ValueError(f"a row already fills the context of {self.context} tokens")
        fed = [0] * self.slots
        for row, token in tokens.items():
            fed[self.slot_of[row]] = token
        self.token.copy_(torch.tensor(fed, device=self.device).view(-1, 1))
        if not self.capture:
            logits = self._step()
        else:
            if self.graph is None:
                self._record()
            self.graph.replay()
            logits = self.logits.clone()  # the next replay overwrites the graph's output
        for row in tokens:
            self.lengths[row] += 1
        return {row: logits[slot] for row, slot in self.slot_of.items()}

    def _step(self) -> torch.Tensor:
        self.mask.scatter_(3, self.column.view(-1, 1, 1, 1), 0.0)  # each new token sees itself
        logits = self.model(self.token, positions=self.column.view(-1, 1), cache=self.cache)[:, -1]
        # free slots step too: keep their column (their position) inside the context; live rows stop before it
        self.column.add_(1).clamp_(max=self.context - 1)
        return logits

    def _record(self) -> None:
        self.graph, self.logits = capture_step(self._step, (self.column, self.mask))
