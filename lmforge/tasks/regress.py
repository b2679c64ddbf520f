"""Regression: one number per text (a rating, a similarity score), learnt as MSE or Huber loss on the
target standardized with the training set's mean and std; the scaling is saved with the model."""
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


class RegressionTask(LabeledTask):
    """A single-output head on [CLS] (BERT) or the last real token (GPT); metrics are in the data's own units."""

    monitor = ("val_mse", "min")

    def __init__(self, train, val, name: str, mean: float, std: float, val_scores: np.ndarray | None, seed: int,
                 grad_accum: int = 1, loss_kind: str = "mse"):
        super().__init__(train, val, [name], seed, grad_accum)
        self.mean, self.std, self.val_scores, self.loss_kind = mean, std, val_scores, loss_kind

    def objective(self, predicted, target, reduction: str = "mean"):
        """The loss on standardized targets: squared error, or Huber (quadratic within 1 std, linear beyond)."""
        if self.loss_kind == "huber":
            return F.huber_loss(predicted, target, reduction=reduction, delta=1.0)
        return F.mse_loss(predicted, target, reduction=reduction)

    def loss(self, model, batch: dict):
        """The objective on the batch, and its mean absolute error in the data's units."""
        predicted = self.outputs(model, batch)[:, 0]
        target = batch["labels"].float()
        return self.objective(predicted, target), {"mae": (predicted - target).abs().mean().detach() * self.std}

    @torch.no_grad()
    def predict_val(self, model, batch_size: int, device) -> tuple[float, np.ndarray]:
        """(mean objective, predicted scores in the data's units) over the whole validation set."""
        model.eval()
        total, predicted = 0.0, []
        for batch in self.val_batches(batch_size, device):
            out = self.outputs(model, batch)[:, 0]
            total += self.objective(out, batch["labels"].float(), reduction="sum").item()
            predicted.append(out.double().cpu().numpy())
        return total / len(self.val), np.concatenate(predicted) * self.std + self.mean

    def evaluate(self, model, steps: int, batch_size: int, device) -> dict[str, float]:
        """val_loss (the objective, standardized units), val_mse, val_mae, val_pearson, val_spearman (data units)."""
        from ..infer.regress import regression_report

        loss, predicted = self.predict_val(model, batch_size, device)
        report = regression_report(self.val_scores, predicted)
        return {"val_loss": loss, **{f"val_{key}": report[key] for key in ("mse", "mae", "pearson", "spearman")}}

    def finish(self, model, run_path: Path) -> dict | None:
        """At the end of a run: the validation report as eval.json, predicted against true as scatter.png."""
        from ..files import atomic_write_text
        from ..infer.regress import regression_report, save_scatter_png

        if not self.can_evaluate:
            return None
        device = next(model.parameters()).device
        _, predicted = self.predict_val(model, 64, device)
        report = regression_report(self.val_scores, predicted)
        # what predicting the training mean for every row would score: the bar a useful model must clear
        report["mean_baseline_mse"] = float(((self.val_scores - self.mean) ** 2).mean())
        atomic_write_text(Path(run_path) / "eval.json", json.dumps(report, indent=1))
        save_scatter_png(self.val_scores, predicted, Path(run_path) / "scatter.png",
                         f"validation: MSE {report['mse']:.3f} "
                         f"(predicting the mean: {report['mean_baseline_mse']:.3f})\n"
                         f"Pearson {report['pearson']:.3f}, Spearman {report['spearman']:.3f}")
        return report


def make_regression_task(bundle: Bundle, train: TrainConfig, data: DataConfig) -> tuple[RegressionTask, Bundle]:
    """Read numeric targets from data.label_field and standardize them by the training split; the task, and the
    Bundle whose model has a one-output head named after the column."""
    from ..data.labeled import EncodedSet
    from ..data.targets import parse_scores, standardize

    read, rows, card = read_labeled_data(data, "regress")
    parse_scores(rows, data.label_field)  # every row checked where its row number is still the file's
    rows, val = split_validation(data, train.seed, read, rows)
    scores = parse_scores(rows, data.label_field)
    mean, std = standardize(scores, data.train, data.label_field)
    val_scores = parse_scores(val, data.label_field) if val is not None else None
    bundle = labeled_bundle(bundle, data, [data.label_field], train.seed, "regress", card, target_mean=mean,
                            target_std=std)
    block = bundle.config.block_size

    def encode(part, values):
        return EncodedSet(part, bundle.tokenizer, None, block, targets=((values - mean) / std).astype(np.float32))

    task = RegressionTask(encode(rows, scores), encode(val, val_scores) if val is not None else None,
                          data.label_field, mean, std, val_scores, train.seed, train.grad_accum, train.regression_loss)
    return task, bundle
