"""Text classification for both families, its head and its layer-wise learning rates."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ..models.contract import has_classifier, transformer_blocks

if TYPE_CHECKING:
    from ..bundle import Bundle
    from ..config import DataConfig, TrainConfig


class LabeledTask:
    """What the tasks on labeled rows share (classification, regression, multi-label): both families (BERT pools
    [CLS], GPT reads the last real token), batches drawn from a per-epoch shuffle fixed by (seed, epoch), so step s
    always gives the same rows, and layer-wise learning rates for fine-tuning."""

    bucket_by_length = False  # train.bucket_by_length: batches of texts of similar length
    soft_targets = None  # distillation: a teacher's logits for every training row (N, n_labels), batched beside them
    token_dropout = 0.0  # train.token_dropout: share of training tokens replaced by [UNK] (drop_tokens)

    def __init__(self, train, val, labels: list[str], seed: int, grad_accum: int = 1):
        self.train, self.val, self.labels, self.seed, self.grad_accum = train, val, labels, seed, grad_accum
        self.can_evaluate = val is not None and len(val) > 0
        self._orders: dict[tuple[int, int], np.ndarray] = {}

    def _order(self, epoch: int, batch_size: int) -> np.ndarray:
        key = (epoch, batch_size)
        if key not in self._orders:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.train))
            if self.bucket_by_length:
                order = bucketed(order, self.train.lengths, batch_size, rng)
            self._orders = {key: order}
        return self._orders[key]

    def train_batch(self, step: int, micro: int, batch_size: int) -> dict:
        """Rows first..first+batch_size of the endless stream of per-epoch shuffles (deterministic)."""
        first = (step * self.grad_accum + micro) * batch_size
        n = len(self.train)
        rows = [int(self._order(p // n, batch_size)[p % n]) for p in range(first, first + batch_size)]
        batch = self.train.batch(rows)
        if self.soft_targets is not None:
            batch["teacher_logits"] = self.soft_targets[rows]
        if self.token_dropout:
            batch["ids"] = self._dropped(batch["ids"], batch["pad_mask"], step, micro)
        return batch

    def drop_tokens(self, share: float, tokenizer) -> None:
        """Word dropout (Iyyer et al., 2015): each training batch has `share` of its tokens, chosen by (seed, step),
        replaced by the tokenizer's unknown token, so [UNK] is trained for the words a new text brings and no
        single word is leaned on. [CLS], [SEP] and padding are kept; validation and prediction see every token."""
        unk = tokenizer.unk_id
        if unk is None:
            raise ValueError(f"train.token_dropout replaces tokens by the unknown token, and this '{tokenizer.kind}' "
                             "tokenizer has none (byte-level BPE can spell every text): use tokenizer.kind "
                             "'wordpiece' or 'word', or leave train.token_dropout 0")
        self.token_dropout, self._unk = share, unk
        self._kept = torch.tensor(sorted(tokenizer.special_ids - {unk}), dtype=torch.long)

    def _dropped(self, ids: torch.Tensor, pad_mask: torch.Tensor, step: int, micro: int) -> torch.Tensor:
        """`ids` with token_dropout of the real, non-special tokens set to [UNK], drawn from (seed, step, micro)."""
        rng = np.random.default_rng([self.seed, step, micro, 17])
        chosen = torch.from_numpy(rng.random(ids.shape) < self.token_dropout) & pad_mask & ~torch.isin(ids, self._kept)
        return ids.masked_fill(chosen, self._unk)

    @staticmethod
    def count_tokens(batch: dict) -> int:
        return int(batch["pad_mask"].sum())

    @staticmethod
    def outputs(model, batch: dict):
        """The head's outputs (B, n_labels) in float32."""
        return model.classify(batch["ids"], pad_mask=batch["pad_mask"], token_type_ids=batch["token_type_ids"]).float()

    def val_batches(self, batch_size: int, device):
        """The whole validation set in order, batch by batch, on `device`."""
        for first in range(0, len(self.val), batch_size):
            batch = self.val.batch(range(first, min(first + batch_size, len(self.val))))
            yield {k: v.to(device) for k, v in batch.items()}

    def parameter_groups(self, model, cfg):
        """(params, lr_scale): the head at head_lr/lr; layer i of n at layer_lr_decay**(n - i), embeddings lowest."""
        return layerwise_groups(model, cfg)


BUCKET_BATCHES = 50  # a shuffled epoch is sorted by length within windows of this many batches


def bucketed(order: np.ndarray, lengths: np.ndarray, batch_size: int, rng) -> np.ndarray:
    """`order` rearranged so that each run of batch_size rows holds texts of similar length: sorted by length
    within windows of BUCKET_BATCHES batches, then the batches shuffled. Every row still comes once an epoch."""
    window = batch_size * BUCKET_BATCHES
    for start in range(0, len(order), window):
        part = order[start:start + window]
        order[start:start + window] = part[np.argsort(lengths[part], kind="stable")]
    n_full = len(order) // batch_size
    batches = order[:n_full * batch_size].reshape(n_full, batch_size)[rng.permutation(n_full)]
    return np.concatenate([batches.reshape(-1), order[n_full * batch_size:]])


class ClassificationTask(LabeledTask):
    """Single-label text classification: cross-entropy over the classes (weighted, label-smoothed when asked)."""

    monitor = ("val_accuracy", "max")

    def __init__(self, train, val, labels: list[str], seed: int, grad_accum: int = 1,
                 class_weights: bool = False, label_smoothing: float = 0.0):
        super().__init__(train, val, labels, seed, grad_accum)
        self.label_smoothing = label_smoothing
        self.weights = None
        if class_weights:
            # inverse class frequency, scaled so a balanced set gets weight 1 everywhere
            counts = np.bincount(train.targets, minlength=len(labels)).astype(np.float64)
            weights = np.where(counts > 0, counts.sum() / (len(labels) * np.maximum(counts, 1)), 0.0)
            self.weights = torch.tensor(weights, dtype=torch.float32)

    def loss(self, model, batch: dict):
        """Cross-entropy of the class logits (weighted by class, label-smoothed when asked) and the batch accuracy."""
        logits = self.outputs(model, batch)
        weight = self.weights.to(logits.device) if self.weights is not None else None
        loss = F.cross_entropy(logits, batch["labels"], weight=weight, label_smoothing=self.label_smoothing)
        return loss, {"accuracy": (logits.argmax(-1) == batch["labels"]).float().mean()}

    @torch.no_grad()
    def evaluate(self, model, steps: int, batch_size: int, device) -> dict[str, float]:
        """Loss, accuracy and macro-F1 over the whole validation set (`steps` is not needed)."""
        from ..infer.metrics import classification_report

        model.eval()
        total, predicted = 0.0, []
        for batch in self.val_batches(batch_size, device):
            logits = self.outputs(model, batch)
            total += F.cross_entropy(logits, batch["labels"], reduction="sum").item()
            predicted.append(logits.argmax(-1).cpu().numpy())
        report = classification_report(self.val.targets, np.concatenate(predicted), self.labels)
        return {"val_loss": total / len(self.val), "val_accuracy": report["accuracy"], "val_macro_f1": report["macro_f1"]}

    def finish(self, model, run_path: Path) -> dict | None:
        """At the end of a run: the validation report as eval.json and the confusion matrix as confusion.png."""
        import json

        from ..files import atomic_write_text
        from ..infer.classify import predict_probabilities
        from ..infer.metrics import classification_report, save_confusion_png

        if not self.can_evaluate:
            return None
        predicted = predict_probabilities(model, self.val).argmax(-1)
        report = classification_report(self.val.targets, predicted, self.labels)
        atomic_write_text(Path(run_path) / "eval.json", json.dumps(report, indent=1))
        save_confusion_png(report["confusion"], self.labels, Path(run_path) / "confusion.png",
                           f"validation: accuracy {report['accuracy']:.3f}, macro-F1 {report['macro_f1']:.3f}")
        return report


HEAD_PREFIXES = ("classifier.", "pooler.")
EMBEDDING_PREFIXES = ("wte.", "wpe.", "wtt.", "ln_emb.")


def layerwise_groups(model, cfg) -> list[tuple[list, float]]:
    """Parameter groups for fine-tuning: head at head_lr / lr, block i at decay**(n_layer - i),
    embeddings at decay**(n_layer + 1); everything else (final norm, MLM head) at the full rate."""
    n_layer = len(transformer_blocks(model) or ())  # the baselines get no layer-wise decay
    head_scale = (cfg.head_lr / cfg.lr) if cfg.head_lr else 1.0
    groups: dict[float, list] = {}
    for name, param in model.named_parameters():
        if name.startswith(HEAD_PREFIXES):
            scale = head_scale
        elif name.startswith("h."):
            scale = cfg.layer_lr_decay ** (n_layer - int(name.split(".")[1]))
        elif name.startswith(EMBEDDING_PREFIXES):
            scale = cfg.layer_lr_decay ** (n_layer + 1)
        else:
            scale = 1.0
        groups.setdefault(scale, []).append(param)
    return [(params, scale) for scale, params in groups.items()]


def read_labeled_data(data: DataConfig, objective: str, allow_empty_label: bool = False):
    """(read, train, card): a reader for data.train's format and columns, data.train itself (not yet split), and
    the data card of its contamination check (a model's meta['data'])."""
    from ..data.labeled import read_labeled

    if not data.train:
        raise ValueError(f"objective '{objective}' needs labeled data: set data.train (a .csv, .tsv or .jsonl file), "
                         f"or call fit('train.csv', objective='{objective}')")

    def read(path):
        return read_labeled(path, data.text_field, data.label_field, data.text_pair_field, data.encoding_errors,
                            allow_empty_label=allow_empty_label)

    if data.scrub or data.dedup:
        raise ValueError("data.scrub and data.dedup prepare data.paths (pretraining text); scrub or deduplicate a "
                         "labeled file first: lmforge data scrub train.csv clean/ (then data.train='clean/train.csv')")
    train = read(data.train)
    from ..data.prepare import check_labeled_contamination
    card = check_labeled_contamination(data, data.train, [data.test] if data.test else [])  # for the model card
    return read, train, card


def split_validation(data: DataConfig, seed: int, read, train):
    """(train, val): data.test read as validation when set, else a fixed data.val_fraction of train (chosen by
    `seed`, train.seed), else None."""
    if data.test:
        return train, read(data.test)
    if data.val_fraction > 0 and len(train) >= 2:
        # a fixed shuffle (seed only) decides which rows validate, so resume and reruns agree
        order = np.random.default_rng([seed, 7]).permutation(len(train))
        n_val = max(1, int(round(len(train) * data.val_fraction)))
        return train.subset(np.sort(order[n_val:])), train.subset(order[:n_val])
    return train, None


def head_info(data: DataConfig, kind: str, **extra) -> dict:
    """What a saved model needs to read its head back: its kind, the data's columns, and `extra` (scaling...)."""
    return {"kind": kind, "text_field": data.text_field, "label_field": data.label_field,
            "text_pair_field": data.text_pair_field, **extra}


def labeled_bundle(bundle: Bundle, data: DataConfig, labels: list[str], seed: int, kind: str, card: dict,
                   **extra) -> Bundle:
    """The Bundle a labeled task trains: `bundle` with a head for `labels` (attach_head), and meta recording the
    head (head_info with `extra`) and the data card."""
    bundle = attach_head(bundle, labels, seed, kind)
    meta = {**bundle.meta, "data": card, "classification": head_info(data, kind, **extra)}
    return replace(bundle, meta=meta)


def make_classification_task(bundle: Bundle, train: TrainConfig, data: DataConfig, before_encoding=None
                             ) -> tuple[ClassificationTask, Bundle]:
    """Read data.train (and data.test, else a val_fraction split); the task, and the Bundle whose model has a head
    for the data's labels. `before_encoding(rows)` is handed the training rows while they are still text
    (distillation's teacher scores them there)."""
    from ..data.labeled import EncodedSet, label_names

    read, rows, card = read_labeled_data(data, "classify")
    labels = label_names(rows)
    rows, val = split_validation(data, train.seed, read, rows)
    if before_encoding is not None:
        before_encoding(rows)
    bundle = labeled_bundle(bundle, data, labels, train.seed, "classify", card)
    labels, block, tokenizer = bundle.config.labels, bundle.config.block_size, bundle.tokenizer
    task = ClassificationTask(EncodedSet(rows, tokenizer, labels, block),
                              EncodedSet(val, tokenizer, labels, block) if val is not None else None,
                              labels, train.seed, train.grad_accum, train.class_weights, train.label_smoothing)
    return task, bundle


def head_kind(meta: dict) -> str:
    """'classify', 'regress' or 'multilabel': what a model's head predicts, read from its `meta` (models saved
    before kinds: classify)."""
    return (meta.get("classification") or {}).get("kind", "classify")


def attach_head(bundle: Bundle, labels: list[str], seed: int, kind: str = "classify") -> Bundle:
    """Keep the model's head when it has these labels, this kind and model.classifier_bias; else give it a fresh
    nn.Linear over `labels` (one output each; one for a regression), drawn from `seed` alone (not from the global
    random state, which whatever ran before may have moved). The model changes in place; returns the Bundle with
    its config's labels."""
    model, config = bundle.model, bundle.config
    current, bias = config.labels, config.classifier_bias
    if (current and set(current) == set(labels) and has_classifier(model) and head_kind(bundle.meta) == kind
            and (model.classifier.bias is not None) == bias):
        return bundle
    width = getattr(model, "feature_size", config.n_embd)  # what the model's classifier reads
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = torch.nn.Linear(width, len(labels), bias=bias)
        torch.nn.init.normal_(head.weight, std=0.02)
        if bias:
            torch.nn.init.zeros_(head.bias)
    device = next(model.parameters()).device
    model.classifier = head.to(device)
    model.config = config.model_copy(update={"labels": list(labels)})
    return replace(bundle, config=model.config)
