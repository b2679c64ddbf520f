"""Instruction tuning (SFT): next-token loss on the assistant's tokens only, over packed conversations.

Each micro-batch's conversations are packed into rows (first-fit by length, up to model.block_size tokens a
row) with positions restarting at every conversation and a block-diagonal causal mask, so no token attends
across conversations and short examples waste no compute on padding. The loss is the sum of the assistant
tokens' cross-entropies divided by their count over the whole accumulated step (every micro-step of every
rank), not a mean per micro-batch: with grad_accum > 1 it equals the one-batch loss and gradients whatever the
rows' lengths (the bug transformers fixed in its PR #34191). Batches stay a pure function of (seed, step, micro).
"""
from __future__ import annotations

import inspect
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ..data.chat import read_conversations
from ..infer.chat_encode import Encoded, check_template_tokens, encode_conversation, special_strings, template_of
from ..errors import ConfigError, DataError
from ..infer.score import perplexity

if TYPE_CHECKING:
    from ..bundle import Bundle
    from ..config import DataConfig, TrainConfig

IGNORE = -100


def pack(examples: list[Encoded], block_size: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Rows of packed conversations: ids, positions (restarting per conversation), segments (1, 2, ... per
    conversation in a row, 0 for padding) and targets (the next token where it is the assistant's, else -100)."""
    rows: list[list[int]] = []
    fill: list[int] = []
    # longest first, each into the first row it fits (ties by index: the same examples always pack the same way)
    for index in sorted(range(len(examples)), key=lambda i: (-len(examples[i].ids), i)):
        size = len(examples[index].ids)
        for r, used in enumerate(fill):
            if used + size <= block_size:
                rows[r].append(index)
                fill[r] += size
                break
        else:
            rows.append([index])
            fill.append(size)
    width = max(fill)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segments = torch.zeros((len(rows), width), dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for r, members in enumerate(rows):
        at = 0
        for segment, index in enumerate(members, start=1):
            example = examples[index]
            n = len(example.ids)
            ids[r, at:at + n] = torch.from_numpy(example.ids)
            positions[r, at:at + n] = torch.arange(n)
            segments[r, at:at + n] = segment
            # position t predicts token t+1: a target where that next token is the assistant's
            targets[r, at:at + n - 1] = torch.from_numpy(np.where(example.trained[1:], example.ids[1:], IGNORE))
            at += n
    return {"ids": ids, "positions": positions, "segments": segments, "targets": targets}


def token_losses(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the assistant tokens' cross-entropies, their count) of a packed batch."""
    logits = model(batch["ids"], positions=batch["positions"], segments=batch["segments"])
    targets = batch["targets"]
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits  # float64 stays
    total = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                            ignore_index=IGNORE, reduction="sum")
    return total, (targets != IGNORE).sum()


class SFTTask:
    """Supervised fine-tuning on conversations: loss on the assistant's tokens, normalized over the whole step."""

    monitor = ("val_loss", "min")

    def __init__(self, train: list[Encoded], val: list[Encoded] | None, block_size: int, pad_id: int, seed: int,
                 grad_accum: int = 1):
        self.train, self.val, self.block_size, self.pad_id = train, val, block_size, pad_id
        self.seed, self.grad_accum = seed, grad_accum  # the trainer sets grad_accum (x ranks) before step 0
        self.can_evaluate = bool(val)
        self._orders: dict[int, np.ndarray] = {}
        self._step_counts: dict[tuple[int, int, int], int] = {}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.train))}
        return self._orders[epoch]

    def rows(self, step: int, micro: int, batch_size: int) -> list[int]:
        """The conversations of (step, micro): the next batch_size of an endless stream of per-epoch shuffles."""
        first = (step * self.grad_accum + micro) * batch_size
        n = len(self.train)
        return [int(self._order(p // n)[p % n]) for p in range(first, first + batch_size)]

    def step_tokens(self, step: int, batch_size: int) -> int:
        """Assistant tokens of every micro-step of `step` together (all ranks): the loss's denominator."""
        key = (step, batch_size, self.grad_accum)
        if key not in self._step_counts:
            count = sum(self.train[i].n_trained for micro in range(self.grad_accum)
                        for i in self.rows(step, micro, batch_size))
            self._step_counts = {key: max(count, 1)}
        return self._step_counts[key]

    def train_batch(self, step: int, micro: int, batch_size: int) -> dict:
        """Packed rows of (step, micro) and `scale`: grad_accum / the step's assistant tokens, so that the
        trainer's mean over micro-steps (and ranks) of the scaled sums is the step's token mean."""
        batch = pack([self.train[i] for i in self.rows(step, micro, batch_size)], self.block_size, self.pad_id)
        batch["scale"] = torch.tensor(self.grad_accum / self.step_tokens(step, batch_size), dtype=torch.float32)
        return batch

    @staticmethod
    def count_tokens(batch: dict) -> int:
        return int((batch["segments"] > 0).sum())

    def loss(self, model, batch: dict):
        """The assistant tokens' summed cross-entropy times the batch's scale (see train_batch)."""
        total, _ = token_losses(model, batch)
        return total * batch["scale"], {}

    @torch.no_grad()
    def evaluate(self, model, steps: int, batch_size: int, device) -> dict[str, float]:
        """Mean loss per assistant token over the whole validation set (`steps` is not needed)."""
        model.eval()
        total, count = 0.0, 0
        for first in range(0, len(self.val), batch_size):
            batch = pack(self.val[first:first + batch_size], self.block_size, self.pad_id)
            loss, n = token_losses(model, {k: v.to(device) for k, v in batch.items()})
            total, count = total + loss.item(), count + int(n)
        loss = total / max(count, 1)
        return {"val_loss": loss, "val_perplexity": perplexity(loss)}


def encode_all(conversations: list[list[dict]], tokenizer, template: str, block_size: int, source: str) -> list[Encoded]:
    """Encode conversations (cut to block_size); those left with no assistant token to learn are dropped."""
    tokens = special_strings(tokenizer)
    encoded = [encode_conversation(tokenizer, template, messages, block_size, tokens) for messages in conversations]
    kept = [e for e in encoded if e.n_trained > 0]
    if not kept:
        raise DataError(f"'{source}': no conversation has an assistant token within model.block_size={block_size} "
                        "tokens; raise model.block_size or shorten the prompts")
    return kept


def supports_packing(model) -> bool:
    """Whether the model's forward takes `segments` (packed documents), as lmforge's Transformer decoders do."""
    return getattr(model, "is_causal", False) and "segments" in inspect.signature(model.forward).parameters


def make_sft_task(bundle: Bundle, train: TrainConfig, data: DataConfig) -> tuple[SFTTask, Bundle]:
    """Read data.train (and data.test, else a data.val_fraction split) as conversations and encode them through
    the model's chat template (the built-in ChatML one when it has none); the task, and the Bundle whose meta
    records the template, the base model and the datasets."""
    model, tokenizer, config, meta = bundle
    if not supports_packing(model):
        raise ConfigError(f"objective 'sft' needs a Transformer decoder (arch gpt or llama); this model is "
                          f"'{config.arch}'")
    if not data.train:
        raise ConfigError("objective 'sft' needs conversations: set data.train to a .jsonl file (OpenAI messages, "
                          "ShareGPT conversations or alpaca instruction/output rows)")
    template = template_of(meta)
    check_template_tokens(template, tokenizer)
    block = min(config.block_size, data.max_length or config.block_size)
    _, conversations = read_conversations(data.train)
    if data.test:
        val_conversations = read_conversations(data.test)[1]
    elif data.val_fraction > 0 and len(conversations) >= 2:
        order = np.random.default_rng([train.seed, 7]).permutation(len(conversations))
        n_val = max(1, int(round(len(conversations) * data.val_fraction)))
        val_conversations = [conversations[i] for i in sorted(order[:n_val])]
        conversations = [conversations[i] for i in sorted(order[n_val:])]
    else:
        val_conversations = []
    rows = encode_all(conversations, tokenizer, template, block, data.train)
    val = encode_all(val_conversations, tokenizer, template, block, data.test or data.train) \
        if val_conversations else None
    meta = dict(meta)
    # the model card's front matter (base_model, datasets; a license the base model's meta carries stays)
    if config.init:
        meta["base_model"] = Path(config.init.rstrip("/")).name
    meta["datasets"] = [Path(data.train).name] + ([Path(data.test).name] if data.test else [])
    task = SFTTask(rows, val, block, tokenizer.pad_id, train.seed, train.grad_accum)
    # what the model card's training section lists (the fit adds a task's training_facts)
    task.training_facts = {
        "conversations": f"{len(rows)} ({sum(e.truncated for e in rows)} cut to {block} tokens)",
        "assistant_tokens": sum(e.n_trained for e in rows),
        "chat_template": "the model's own" if meta.get("chat_template") else "built-in ChatML"}
    meta["chat_template"] = template  # the saved model renders chats the way it was trained
    return task, replace(bundle, meta=meta)
