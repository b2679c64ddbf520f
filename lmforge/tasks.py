"""Objectives as small objects: batch in, loss and metrics out. The trainer knows none of them.

Every task has: train_batch(step, micro, batch_size) -> dict of tensors (the same step always gives the
same batch, so a resumed run sees the data an uninterrupted one would), loss(model, batch) ->
(loss, metrics), evaluate(model, steps, batch_size, device) -> dict, count_tokens(batch), can_evaluate,
and monitor = (metric name, "min" | "max") for early stopping.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data.tokens import TokenWindows, build_token_file, open_tokens

EVAL_SEED = 2**31 - 1


class CausalLMTask:
    """Next-token prediction on random windows of a token file."""

    monitor = ("val_loss", "min")

    def __init__(self, windows: TokenWindows, seed: int):
        self.windows, self.seed = windows, seed
        self.can_evaluate = windows.has("val")

    def train_batch(self, step: int, micro: int, batch_size: int) -> dict:
        ids, targets = self.windows.sample("train", batch_size, np.random.default_rng([self.seed, step, micro]))
        return {"ids": ids, "targets": targets}

    @staticmethod
    def count_tokens(batch: dict) -> int:
        return batch["ids"].numel()

    @staticmethod
    def loss(model, batch: dict):
        logits = model(batch["ids"])
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), batch["targets"].reshape(-1))
        return loss, {}

    @torch.no_grad()
    def evaluate(self, model, steps: int, batch_size: int, device) -> dict[str, float]:
        """Mean loss on `steps` validation batches drawn the same way every time (comparable across evals)."""
        model.eval()
        rng = np.random.default_rng([self.seed, EVAL_SEED])
        total = 0.0
        for _ in range(steps):
            ids, targets = self.windows.sample("val", batch_size, rng)
            loss, _ = self.loss(model, {"ids": ids.to(device), "targets": targets.to(device)})
            total += loss.item()
        loss = total / steps
        return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 50.0))}


def make_task(lm, work_dir: Path):
    """The task for lm.config.train.objective, with its data prepared under `work_dir`."""
    config = lm.config
    objective = config.train.objective
    if objective == "clm":
        if not getattr(lm.model, "is_causal", False):
            raise ValueError(f"objective 'clm' needs a decoder; this model is '{config.model.arch}'")
        bin_path = build_token_file(config.data.paths, lm.tokenizer, Path(work_dir) / "data",
                                    config.data.text_field, config.data.encoding_errors)
        windows = TokenWindows(open_tokens(bin_path), config.model.block_size, config.data.val_fraction)
        return CausalLMTask(windows, config.train.seed)
    raise ValueError(f"unknown train.objective '{objective}'")
