"""Sentence embeddings from either family: the mean of the final hidden states over a text's tokens."""
from __future__ import annotations

import torch

from ..models.contract import is_decoder


def encode_for_embedding(model, tokenizer, text: str) -> list[int]:
    """The token ids a text is embedded from: with [CLS]/[SEP] for an encoder, plain for a decoder."""
    ids = tokenizer.encode(text, add_special_tokens=not is_decoder(model))
    if not ids:
        ids = [tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.pad_id]
    return ids


@torch.no_grad()
def embed_ids(model, rows: list[list[int]], batch_size: int = 32, normalize: bool = True) -> torch.Tensor:
    """Mean-pooled final hidden states (N, n_embd) of token-id rows (right-padded in batches), float32 on CPU."""
    limit = model.config.block_size
    for i, row in enumerate(rows):
        if not row:
            raise ValueError(f"input {i} is empty: give at least one token")
        if len(row) > limit:
            raise ValueError(f"input {i} is {len(row)} tokens long, more than the model's block_size {limit}; shorten it")
    model.eval()
    device = next(model.parameters()).device
    out = torch.zeros(len(rows), model.config.n_embd)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths together: little padding
    for first in range(0, len(order), batch_size):
        chunk = order[first:first + batch_size]
        width = max(len(rows[i]) for i in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.bool)
        for j, i in enumerate(chunk):
            ids[j, :len(rows[i])] = torch.tensor(rows[i])
            mask[j, :len(rows[i])] = True
        ids, mask = ids.to(device), mask.to(device)
        # right padding: a causal model's real tokens never see the padding after them
        hidden = model.hidden_states(ids, pad_mask=mask).float()
        keep = mask.float()[..., None]
        pooled = (hidden * keep).sum(1) / keep.sum(1)
        out[chunk] = pooled.cpu()
    return torch.nn.functional.normalize(out, dim=-1) if normalize else out


def embed_texts(model, tokenizer, texts: list[str], batch_size: int = 32, normalize: bool = True) -> torch.Tensor:
    """Mean-pooled embeddings (N, n_embd) of texts; unit length when `normalize`."""
    if not texts:
        raise ValueError("no texts given")
    return embed_ids(model, [encode_for_embedding(model, tokenizer, t) for t in texts], batch_size, normalize)
