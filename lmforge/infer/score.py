"""Scoring text with a decoder: loss, perplexity and token count over a whole file."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def perplexity(loss: float) -> float:
    """exp(loss), capped so an untrained model's huge loss stays a finite number."""
    return math.exp(min(loss, 50.0))


@torch.no_grad()
def score_tokens(model, tokens: np.ndarray, batch_size: int = 16, stride: int | None = None) -> dict[str, float]:
    """Mean next-token loss over every token of `tokens` (windows of block_size; each token scored once)."""
    model.eval()
    device = next(model.parameters()).device
    context = model.config.block_size
    if len(tokens) < 2:
        raise ValueError("need at least 2 tokens to score")
    stride = stride or context
    # window w covers tokens[s : s + context + 1] and scores the predictions it has not scored before
    starts = list(range(0, max(1, len(tokens) - 1), stride))
    total, count = 0.0, 0
    for first in range(0, len(starts), batch_size):
        chunk = starts[first:first + batch_size]
        rows = [np.asarray(tokens[s:s + context + 1], dtype=np.int64) for s in chunk]
        width = max(map(len, rows))
        ids = torch.zeros(len(rows), width - 1, dtype=torch.long)
        targets = torch.full((len(rows), width - 1), -100, dtype=torch.long)
        for i, (s, row) in enumerate(zip(chunk, rows)):
            skip = 0 if s == 0 else context - stride  # overlap already scored by the previous window
            ids[i, :len(row) - 1] = torch.from_numpy(row[:-1])
            targets[i, skip:len(row) - 1] = torch.from_numpy(row[1 + skip:])
        logits = model(ids.to(device)).float()
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.to(device).reshape(-1),
                               ignore_index=-100, reduction="sum")
        total += loss.item()
        count += int((targets != -100).sum())
    mean = total / count
    return {"loss": mean, "perplexity": perplexity(mean), "tokens": count}
