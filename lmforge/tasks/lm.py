"""Language-model objectives: next-token prediction (decoders) and masked-LM (encoders)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data.tokens import TokenWindows
from ..infer.score import perplexity
from .chunked import chunked_cross_entropy, float32_cross_entropy

EVAL_SEED = 2**31 - 1


def chunkable(model) -> bool:
    """Whether the chunked loss can stand in for model(ids): a module (not a stand-in that records its logits,
    as distillation's) with hidden_states and a bias-free linear lm_head, outside a torch.compile trace (where
    the compiler fuses the plain loss's float32 copy itself)."""
    head = getattr(model, "lm_head", None) if isinstance(model, nn.Module) else None
    return (type(head) is nn.Linear and head.bias is None and callable(getattr(model, "hidden_states", None))
            and not torch.compiler.is_compiling())


class CausalLMTask:
    """Next-token prediction on random windows of a token file."""

    monitor = ("val_loss", "min")

    def __init__(self, windows: TokenWindows, seed: int, label_smoothing: float = 0.0, chunked: bool = True):
        self.windows, self.seed, self.label_smoothing = windows, seed, label_smoothing
        self.chunked = chunked  # False: the plain loss over full logits (the reference the chunked one must equal)
        self.can_evaluate = windows.has("val")

    def train_batch(self, step: int, micro: int, batch_size: int) -> dict:
        ids, targets = self.windows.sample("train", batch_size, np.random.default_rng([self.seed, step, micro]))
        return {"ids": ids, "targets": targets}

    @staticmethod
    def count_tokens(batch: dict) -> int:
        return batch["ids"].numel()

    def loss(self, model, batch: dict, label_smoothing: float | None = None):
        """Mean next-token cross-entropy, label-smoothed by train.label_smoothing unless told otherwise.
        A model with a plain linear head gets the chunked loss (no full float32 logits; see chunked.py)."""
        smoothing = self.label_smoothing if label_smoothing is None else label_smoothing
        if self.chunked and chunkable(model):
            hidden = model.hidden_states(batch["ids"])
            return chunked_cross_entropy(hidden.reshape(-1, hidden.size(-1)), model.lm_head.weight,
                                         batch["targets"].reshape(-1), label_smoothing=smoothing), {}
        logits = model(batch["ids"])
        loss = float32_cross_entropy(logits.reshape(-1, logits.size(-1)), batch["targets"].reshape(-1), smoothing)
        return loss, {}

    @torch.no_grad()
    def evaluate(self, model, steps: int, batch_size: int, device) -> dict[str, float]:
        """Mean loss on `steps` validation batches drawn the same way every time (comparable across evals)."""
        model.eval()
        rng = np.random.default_rng([self.seed, EVAL_SEED])
        total = 0.0
        for _ in range(steps):
            ids, targets = self.windows.sample("val", batch_size, rng)
            # the true negative log-likelihood: smoothing is a training device, perplexity must not include it
            loss, _ = self.loss(model, {"ids": ids.to(device), "targets": targets.to(device)}, label_smoothing=0.0)
            total += loss.item()
        loss = total / steps
        return {"val_loss": loss, "val_perplexity": perplexity(loss)}


class MaskedLMTask:
    """BERT's masked-LM objective on windows of a token file: [CLS] window [SEP], masked afresh each batch."""

    monitor = ("val_loss", "min")

    def __init__(self, tokens: np.ndarray, tokenizer, block_size: int, val_fraction: float, seed: int,
                 mask_prob: float = 0.15, whole_word: bool = False, label_smoothing: float = 0.0):
        from ..data.masking import Masker

        self.width = block_size - 2  # room for [CLS] and [SEP]
        if self.width < 1:
            raise ValueError(f"block_size {block_size} is too short for masked-LM ([CLS] and [SEP] take 2)")
        # TokenWindows checks each split holds one window (block_size+1 tokens) and splits train/val
        self.windows = TokenWindows(tokens, self.width - 1, val_fraction)
        self.tokens, self.seed, self.label_smoothing = tokens, seed, label_smoothing
        self.cls_id, self.sep_id = tokenizer.cls_id, tokenizer.sep_id
        self.masker = Masker(tokenizer, mask_prob, whole_word)
        self.can_evaluate = val_fraction > 0 and self.windows.has("val")

    def _sample(self, split: str, batch_size: int, rng: np.random.Generator) -> dict:
        start, end = self.windows.splits[split]
        offsets = rng.integers(start, end - self.width + 1, size=batch_size)
        body = np.stack([self.tokens[o:o + self.width] for o in offsets]).astype(np.int64)
        ids = np.concatenate([np.full((batch_size, 1), self.cls_id), body, np.full((batch_size, 1), self.sep_id)], 1)
        inputs, labels = self.masker(ids, rng)
        return {"ids": torch.from_numpy(inputs), "labels": torch.from_numpy(labels)}

    def train_batch(self, step: int, micro: int, batch_size: int) -> dict:
        """Masked windows for (step, micro): the same arguments always give the same windows and masks."""
        return self._sample("train", batch_size, np.random.default_rng([self.seed, step, micro]))

    @staticmethod
    def count_tokens(batch: dict) -> int:
        return batch["ids"].numel()

    def loss(self, model, batch: dict):
        """Mean cross-entropy (label-smoothed when asked) over the masked positions only, and the share of them
        predicted right."""
        from ..infer.fill_mask import mlm_loss

        total, correct, count = mlm_loss(model, batch["ids"], batch["labels"], label_smoothing=self.label_smoothing)
        count = count.clamp(min=1)
        return total / count, {"mlm_accuracy": correct.float() / count}

    @torch.no_grad()
    def evaluate(self, model, steps: int, batch_size: int, device) -> dict[str, float]:
        """Masked-LM loss and accuracy on `steps` validation batches with the same windows and masks each time."""
        from ..infer.fill_mask import mlm_loss

        model.eval()
        rng = np.random.default_rng([self.seed, EVAL_SEED])
        total, correct, count = 0.0, 0, 0
        for _ in range(steps):
            batch = self._sample("val", batch_size, rng)
            loss, hits, n = mlm_loss(model, batch["ids"].to(device), batch["labels"].to(device))
            total, correct, count = total + loss.item(), correct + int(hits), count + int(n)
        loss = total / max(count, 1)
        return {"val_loss": loss, "val_perplexity": perplexity(loss),
                "val_mlm_accuracy": correct / max(count, 1)}
