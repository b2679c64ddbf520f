"""Masked-LM masking as in BERT: pick ~15% of the non-special tokens, then 80% [MASK] / 10% random / 10% kept.

Masking is dynamic (drawn anew each time a batch is made) and driven by a numpy Generator, so the same
(seed, step, micro) always gives the same masks and a resumed run sees what an uninterrupted one would.
"""
from __future__ import annotations

import numpy as np

from ..tokenizer import Tokenizer

IGNORE = -100  # label of positions that carry no loss (cross_entropy's ignore_index)


class Masker:
    """Everything masking needs to know about a tokenizer, looked up once: special ids, the [MASK] id,
    the ids a random replacement may take, and which ids continue a word ('##' pieces)."""

    def __init__(self, tokenizer: Tokenizer, mask_prob: float = 0.15, whole_word: bool = False,
                 replace_prob: float = 0.8, random_prob: float = 0.1):
        if tokenizer.mask_id is None:
            raise ValueError(f"masked-LM needs a tokenizer with a [MASK] token; this one is '{tokenizer.kind}' "
                             "(use tokenizer.kind='wordpiece')")
        if not 0 < mask_prob < 1:
            raise ValueError(f"mask_prob must lie between 0 and 1, got {mask_prob}")
        self.mask_id, self.mask_prob, self.whole_word = tokenizer.mask_id, mask_prob, whole_word
        self.replace_prob, self.random_prob = replace_prob, random_prob
        size = tokenizer.vocab_size
        self.special = np.zeros(size, dtype=bool)
        self.special[sorted(tokenizer.special_ids)] = True
        self.random_ids = np.flatnonzero(~self.special)
        # a '##' piece continues the word before it; whole-word masking keeps such pieces with their word
        self.continuation = np.zeros(size, dtype=bool)
        for token, index in tokenizer.backend.get_vocab(with_added_tokens=False).items():
            self.continuation[index] = token.startswith("##")

    def __call__(self, ids: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Masked inputs and labels (the original id where a token was chosen, IGNORE elsewhere)."""
        return mask_tokens(ids, rng, self.mask_id, self.special, self.random_ids, self.mask_prob,
                           self.continuation if self.whole_word else None, self.replace_prob, self.random_prob)


def mask_tokens(ids: np.ndarray, rng: np.random.Generator, mask_id: int, special: np.ndarray,
                random_ids: np.ndarray, mask_prob: float = 0.15, continuation: np.ndarray | None = None,
                replace_prob: float = 0.8, random_prob: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Choose each non-special token with probability `mask_prob` (whole words when `continuation`, a
    per-id table of '##' pieces, is given); of the chosen, replace_prob -> [MASK], random_prob -> a
    random non-special token, the rest unchanged. Returns (inputs, labels), both int64 like `ids`."""
    ids = np.asarray(ids, dtype=np.int64)
    candidate = ~special[ids]
    if continuation is None:
        chosen = (rng.random(ids.shape) < mask_prob) & candidate
    else:
        # a word starts at every token that is not a '##' piece (or at a special token); number the words
        # along each row, draw once per word, and give every piece of a word its word's draw
        starts = ~continuation[ids] | ~candidate
        starts[..., 0] = True
        word = np.cumsum(starts, axis=-1) - 1
        draws = rng.random(ids.shape) < mask_prob  # one draw per possible word slot
        chosen = np.take_along_axis(draws, word, axis=-1) & candidate
    labels = np.where(chosen, ids, IGNORE)
    inputs = ids.copy()
    action = rng.random(ids.shape)
    to_mask = chosen & (action < replace_prob)
    to_random = chosen & (action >= replace_prob) & (action < replace_prob + random_prob)
    inputs[to_mask] = mask_id
    inputs[to_random] = rng.choice(random_ids, size=int(to_random.sum()))
    return inputs, labels
