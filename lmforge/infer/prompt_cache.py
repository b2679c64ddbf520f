"""Keeping a conversation's KV cache between replies: the next prompt of a chat repeats the previous prompt and its
reply, so only the new turn needs a prefill.

A PromptCache holds one row's cache and the token ids in it. `take` hands it to the next generation with the
longest common prefix of those ids kept (at least the prompt's last token is fed again, for its logits);
`keep` records what the generation left in it. A generation that fails between the two leaves the PromptCache
empty, so a half-written cache is never trusted. Transformer caches only: a recurrent state cannot be cut back to
a prefix, so recurrent models prefill in full as before.
"""
from __future__ import annotations

import torch

from ..models.layers import KVCache


def _key(model) -> tuple[int, int]:
    """The model and the state of its weights: any in-place change (an optimizer step, a LoRA merge) bumps a
    tensor's version counter, and a cache made with other weights is not reused."""
    return id(model), sum(p._version for p in model.parameters())


class PromptCache:
    """One row's KV cache and the token ids it holds, carried from one `continue_prompts` call to the next."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.cache: list[KVCache] | None = None
        self.model_key: tuple | None = None
        self.reused = 0  # tokens the last `take` did not prefill again (read by tests and benchmarks)

    def take(self, model, prompt: list[int], capacity: int, dtype: torch.dtype,
             device: torch.device) -> tuple[list[KVCache] | None, int]:
        """(a cache holding the first n tokens of `prompt`, n), or (None, 0) when nothing can be reused. The
        PromptCache is empty afterwards until `keep`."""
        cache, ids = self.cache, self.ids
        self.cache, self.ids, self.reused = None, [], 0
        if cache is None or self.model_key != _key(model) or cache[0].k.dtype != dtype or cache[0].k.device != device:
            return None, 0
        shared = 0
        for a, b in zip(ids, prompt[:-1]):  # the prompt's last token is fed again: its logits pick the next one
            if a != b:
                break
            shared += 1
        if shared == 0:
            return None, 0
        for layer in cache:  # too small for this call: widened, the prefix kept
            layer.widen(capacity, keep=shared)
            layer.length = shared
        self.reused = shared
        return cache, shared

    def keep(self, model, cache, ids: list[int]) -> None:
        """Record that `cache` holds `ids` (a Transformer's list of KVCaches; anything else is not kept)."""
        if isinstance(cache, list) and cache and all(isinstance(layer, KVCache) and layer.static is None
                                                     for layer in cache):
            self.cache, self.ids, self.model_key = cache, list(ids), _key(model)
