"""Multi-label classification: any number of tags per text ('a;b' or a JSON list per row), one sigmoid per
tag, binary cross-entropy; a tag is given when its probability reaches the threshold (0.5 in training)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .classify import LabeledTask, labeled_bundle, read_labeled_data, split_validation

if TYPE_CHECKING:
    from ..bundle import Bundle
    from ..config import DataConfig, TrainConfig


class MultiLabelTask(LabeledTask):
    """A head with one output per tag on [CLS] (BERT) or the last real token (GPT)."""

    monitor = ("val_micro_f1", "max")

    def __init__(self, train, val, labels: list[str], seed: int, grad_accum: int = 1, class_weights: bool = False,
                 label_smoothing: float = 0.0, threshold: float = 0.5):
        super().__init__(train, val, labels, seed, grad_accum)
        self.label_smoothing, self.threshold = label_smoothing, threshold
        self.pos_weight = None
        if class_weights:
            # each tag's positives weigh (negatives / positives), so a rare tag is not learnt as "never"
            positives = train.targets.sum(0).astype(np.float64)
            weight = np.where(positives > 0, (len(train) - positives) / np.maximum(positives, 1), 1.0)
            self.pos_weight = torch.tensor(weight, dtype=torch.float32)

    def loss(self, model, batch: dict):
        """Binary cross-entropy per tag (targets smoothed toward 1/2 when asked), and the batch's subset accuracy."""
        logits = self.outputs(model, batch)
        target = batch["labels"].float()
        if self.label_smoothing:
            target = target * (1 - self.label_smoothing) + self.label_smoothing / 2
        weight = self.pos_weight.to(logits.device) if self.pos_weight is not None else None
        loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight)
        exact = ((logits >= 0) == (batch["labels"] > 0.5)).all(-1).float().mean()
        return loss, {"subset_accuracy": exact.detach()}

    @torch.no_grad()
    def predict_val(self, model, batch_size: int, device) -> tuple[float, np.ndarray]:
        """(mean binary cross-entropy, tag probabilities (N, n_tags)) over the whole validation set."""
        model.eval()
        total, probs = 0.0, []
        for batch in self.val_batches(batch_size, device):
            logits = self.outputs(model, batch)
            total += F.binary_cross_entropy_with_logits(logits, batch["labels"].float(), reduction="sum").item()
            probs.append(torch.sigmoid(logits).double().cpu().numpy())
        return total / (len(self.val) * len(self.labels)), np.concatenate(probs)

    def evaluate(self, model, steps: int, batch_size: int, device) -> dict[str, float]:
        """val_loss, val_micro_f1, val_macro_f1 and val_subset_accuracy over the whole validation set."""
        from ..infer.multilabel import multilabel_report

        loss, probs = self.predict_val(model, batch_size, device)
        report = multilabel_report(self.val.targets, probs >= self.threshold, self.labels, self.threshold)
        return {"val_loss": loss, **{f"val_{key}": report[key] for key in ("micro_f1", "macro_f1", "subset_accuracy")}}

    def finish(self, model, run_path: Path) -> dict | None:
        """At the end of a run: the validation report as eval.json and each tag's F1 as label_f1.png."""
        from ..files import atomic_write_text
        from ..infer.multilabel import multilabel_report, save_f1_bars_png

        if not self.can_evaluate:
            return None
        _, probs = self.predict_val(model, 64, next(model.parameters()).device)
        report = multilabel_report(self.val.targets, probs >= self.threshold, self.labels, self.threshold)
        atomic_write_text(Path(run_path) / "eval.json", json.dumps(report, indent=1))
        save_f1_bars_png(report, Path(run_path) / "label_f1.png",
                         f"validation: micro-F1 {report['micro_f1']:.3f}, macro-F1 {report['macro_f1']:.3f}, "
                         f"subset accuracy {report['subset_accuracy']:.3f}")
        return report


def make_multilabel_task(bundle: Bundle, train: TrainConfig, data: DataConfig) -> tuple[MultiLabelTask, Bundle]:
    """Read tag lists from data.label_field (a row may have none); the task, and the Bundle whose model has one
    output per tag."""
    from ..data.labeled import EncodedSet
    from ..data.targets import multi_hot, read_tag_lists, tag_names

    read, rows, card = read_labeled_data(data, "multilabel", allow_empty_label=True)
    names = tag_names(read_tag_lists(rows, data.label_field), data.train, data.label_field)
    rows, val = split_validation(data, train.seed, read, rows)
    bundle = labeled_bundle(bundle, data, names, train.seed, "multilabel", card, threshold=0.5)
    names, block = bundle.config.labels, bundle.config.block_size

    def encode(part):
        targets = multi_hot(read_tag_lists(part, data.label_field), names, part.path)
        return EncodedSet(part, bundle.tokenizer, None, block, targets=targets)

    task = MultiLabelTask(encode(rows), encode(val) if val is not None else None, names, train.seed,
                          train.grad_accum, train.class_weights, train.label_smoothing)
    return task, bundle
