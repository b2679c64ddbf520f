"""Nearest tokens in a model's input embedding space (cosine similarity)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .attribution import token_embedding
from .inputs import token_labels


@dataclass
class Neighbors:
    """The query's tokens (their mean embedding is the query when a word is several tokens) and its k nearest."""

    word: str
    query_tokens: list[str]
    neighbors: list[tuple[str, float]]


def _query_ids(tokenizer, word: str) -> list[int]:
    if not word or not word.strip():
        raise ValueError("the word to look up is empty")
    exact = tokenizer.token_to_id(word)
    if exact is not None:
        return [exact]
    if tokenizer.kind == "bpe":  # byte-level BPE stores a word after a space as its own token (" good")
        spaced = tokenizer.encode(" " + word)
        if len(spaced) == 1:
            return spaced
    ids = tokenizer.encode(word)
    if not ids:
        raise ValueError(f"{word!r} gives no tokens with this tokenizer")
    return ids


@torch.no_grad()
def nearest_tokens(model, tokenizer, word: str, k: int = 10) -> Neighbors:
    """The k tokens whose embeddings have the highest cosine similarity to `word`'s (special tokens left out)."""
    if k < 1:
        raise ValueError(f"k must be at least 1 (got {k})")
    weight = token_embedding(model).weight.float()
    query = _query_ids(tokenizer, word)
    vectors = torch.nn.functional.normalize(weight[: tokenizer.vocab_size], dim=-1)
    similarity = vectors @ torch.nn.functional.normalize(weight[query].mean(0), dim=-1)
    similarity[list(set(query) | tokenizer.special_ids)] = -float("inf")
    k = min(k, int(torch.isfinite(similarity).sum()))
    values, indices = similarity.topk(k)
    labels = token_labels(tokenizer, indices.tolist())
    return Neighbors(word, token_labels(tokenizer, query), [(t, float(v)) for t, v in zip(labels, values)])
