"""Masked-LM inference: predict the [MASK] tokens of a text, and score a text with masked-LM loss."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.masking import IGNORE, Masker
from ..models.contract import is_encoder
from .score import perplexity

MASK = "[MASK]"


@torch.no_grad()
def fill_mask(model, tokenizer, text: str, top_k: int = 5) -> list[list[tuple[str, float]]]:
    """For each [MASK] of `text`, the top_k (token, probability) pairs; special tokens are never proposed."""
    if not is_encoder(model):
        raise ValueError("fill-mask needs a BERT-style encoder with a masked-LM head (arch 'bert')")
    if tokenizer.mask_id is None:
        raise ValueError("this model's tokenizer has no [MASK] token")
    if MASK not in text:
        raise ValueError(f"the text has no {MASK}: put {MASK} where a word should be predicted, "
                         f"e.g. \"The {MASK} of the function is returned.\"")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    ids = tokenizer.encode(text, add_special_tokens=True)
    positions = [i for i, token in enumerate(ids) if token == tokenizer.mask_id]
    if not positions:  # e.g. "[mask]" or "[MASK]" glued into a word the tokenizer did not split out
        raise ValueError(f"no {MASK} token was found after tokenizing the text; write {MASK} as a separate word")
    limit = model.config.block_size
    if len(ids) > limit:
        raise ValueError(f"the text is {len(ids)} tokens long, more than the model's block_size {limit}; shorten it")
    model.eval()
    device = next(model.parameters()).device
    hidden = model.hidden_states(torch.tensor([ids], device=device))
    logits = model.mlm_logits(hidden[0, positions]).float()
    logits[:, sorted(tokenizer.special_ids)] = float("-inf")
    probs = logits.softmax(-1)
    top = probs.topk(min(top_k, probs.size(-1)), dim=-1)
    return [[(tokenizer.id_to_token(int(i)), float(p)) for p, i in zip(row_p, row_i)]
            for row_p, row_i in zip(top.values.tolist(), top.indices.tolist())]


def mlm_loss(model, inputs: torch.Tensor, labels: torch.Tensor, pad_mask=None, label_smoothing: float = 0.0):
    """Summed cross-entropy (label-smoothed when asked), correct predictions and count over the masked positions
    (logits only there)."""
    hidden = model.hidden_states(inputs, pad_mask=pad_mask)
    chosen = labels != IGNORE
    logits = model.mlm_logits(hidden[chosen]).float()
    targets = labels[chosen]
    total = F.cross_entropy(logits, targets, reduction="sum", label_smoothing=label_smoothing)
    correct = (logits.argmax(-1) == targets).sum()
    return total, correct, chosen.sum()


@torch.no_grad()
def evaluate_mlm(model, tokenizer, tokens: np.ndarray, batch_size: int = 16, mask_prob: float = 0.15,
                 seed: int = 0) -> dict[str, float]:
    """Masked-LM loss, perplexity and accuracy over `tokens`, cut into [CLS] ... [SEP] rows; masks are fixed by `seed`."""
    model.eval()
    device = next(model.parameters()).device
    width = model.config.block_size - 2
    rows = [np.asarray(tokens[s:s + width], dtype=np.int64) for s in range(0, len(tokens), width)]
    rows = [r for r in rows if len(r)]
    if not rows:
        raise ValueError("nothing to evaluate: the text has no tokens")
    masker, rng = Masker(tokenizer, mask_prob), np.random.default_rng(seed)
    total, correct, count, seen = 0.0, 0, 0, 0
    for first in range(0, len(rows), batch_size):
        chunk = rows[first:first + batch_size]
        longest = max(map(len, chunk)) + 2
        ids = np.full((len(chunk), longest), tokenizer.pad_id, dtype=np.int64)
        for i, row in enumerate(chunk):
            ids[i, :len(row) + 2] = [tokenizer.cls_id, *row, tokenizer.sep_id]
        inputs, labels = masker(ids, rng)  # [PAD] is special, so it is never chosen
        pad_mask = torch.from_numpy(ids != tokenizer.pad_id).to(device)
        loss, hits, n = mlm_loss(model, torch.from_numpy(inputs).to(device), torch.from_numpy(labels).to(device), pad_mask)
        total, correct, count = total + loss.item(), correct + int(hits), count + int(n)
        seen += sum(len(r) for r in chunk)
    if count == 0:
        raise ValueError("the text is too short: no token was masked; give more text")
    mean = total / count
    return {"loss": mean, "perplexity": perplexity(mean), "mlm_accuracy": correct / count,
            "tokens": seen, "masked_tokens": count}
