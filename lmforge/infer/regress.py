"""Regression heads: scores for texts (the head predicts standardized targets; the saved scaling maps them
back), metrics (mse, mae, Pearson, Spearman) and a predicted-against-true scatter plot."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.labeled import EncodedSet, LabeledSet
from ..data.targets import parse_scores
from .classify import head_outputs
from ..figures import pyplot, save_png


def predict_scores(model, encoded: EncodedSet, mean: float, std: float, batch_size: int = 32) -> np.ndarray:
    """Predicted scores (N,) in the data's own units: the head's output * std + mean."""
    return head_outputs(model, encoded, batch_size)[:, 0] * std + mean


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, ties sharing their average rank (what Spearman's coefficient needs)."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(len(values), dtype=np.float64)
    _, group, counts = np.unique(values, return_inverse=True, return_counts=True)
    return (np.bincount(group, weights=ranks) / counts)[group]


def pearson(a, b) -> float:
    """Pearson's correlation; 0.0 when either side is constant (the coefficient is undefined there)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or a.min() == a.max() or b.min() == b.max():
        return 0.0
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def spearman(a, b) -> float:
    """Spearman's rank correlation: Pearson's on the ranks (average ranks for ties)."""
    return pearson(_ranks(np.asarray(a, dtype=np.float64)), _ranks(np.asarray(b, dtype=np.float64)))


def regression_report(true, predicted) -> dict:
    """mse, mae, rmse, r2, pearson, spearman and the number of examples."""
    true, predicted = np.asarray(true, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    error = predicted - true
    mse = float((error ** 2).mean())
    variance = float(true.var())
    return {"mse": mse, "mae": float(np.abs(error).mean()), "rmse": float(np.sqrt(mse)),
            "r2": 1.0 - mse / variance if variance > 0 else 0.0,
            "pearson": pearson(true, predicted), "spearman": spearman(true, predicted), "examples": int(len(true))}


def save_scatter_png(true, predicted, path: str | Path, title: str = "predicted against true") -> Path:
    """Predicted against true score, with the y = x line a perfect model would sit on."""
    plt = pyplot()
    true, predicted = np.asarray(true), np.asarray(predicted)
    figure, axes = plt.subplots(figsize=(5.5, 5))
    # discrete targets (ratings) pile up on a few x values: jitter them a little so density shows
    distinct = np.unique(true)
    jitter = 0.0
    if len(distinct) <= 20 and len(distinct) > 1:
        jitter = 0.15 * float(np.diff(distinct).min())
    x = true + np.random.default_rng(0).uniform(-jitter, jitter, size=len(true)) if jitter else true
    axes.scatter(x, predicted, s=8, alpha=0.35, edgecolors="none")
    low, high = float(min(true.min(), predicted.min())), float(max(true.max(), predicted.max()))
    axes.plot([low, high], [low, high], color="black", linewidth=1, label="y = x")
    axes.set_xlabel("true score" + (" (jittered)" if jitter else ""))
    axes.set_ylabel("predicted score")
    axes.set_title(title)
    axes.legend(loc="upper left")
    axes.grid(alpha=0.3)
    return save_png(figure, path)


def score_texts(model, tokenizer, name: str, mean: float, std: float, texts: list[str],
                pairs: list[str] | None = None, batch_size: int = 32) -> list[tuple[float, dict[str, float]]]:
    """(score, {name: score}) for each text (and pair), in the training data's units."""
    data = LabeledSet("input", list(texts), ["0"] * len(texts), list(pairs) if pairs is not None else None)
    encoded = EncodedSet(data, tokenizer, None, model.config.block_size)
    return [(float(v), {name: float(v)}) for v in predict_scores(model, encoded, mean, std, batch_size)]


def evaluate_regressor(model, tokenizer, mean: float, std: float, data: LabeledSet, field: str = "label",
                       batch_size: int = 32) -> dict:
    """regression_report of the model's scores on a labeled set whose label column holds numbers."""
    true = parse_scores(data, field)
    encoded = EncodedSet(data, tokenizer, None, model.config.block_size)
    return regression_report(true, predict_scores(model, encoded, mean, std, batch_size))
