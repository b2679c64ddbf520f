"""Multi-label heads: one sigmoid per tag, every tag over a threshold; micro/macro F1, subset accuracy and
per-tag bars."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..data.labeled import EncodedSet, LabeledSet
from ..data.targets import multi_hot, read_tag_lists
from .classify import head_outputs
from ..figures import pyplot, save_png

DEFAULT_THRESHOLD = 0.5


def check_threshold(threshold: float) -> float:
    """The threshold as a float in [0, 1], or a ValueError saying what is accepted."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"threshold must be a probability between 0 and 1 (a tag is given when its probability is "
                         f"at least the threshold); got {threshold!r}")
    return value


def predict_tag_probabilities(model, encoded: EncodedSet, batch_size: int = 32) -> np.ndarray:
    """Sigmoid probability of every tag (N, n_tags), in input order."""
    logits = head_outputs(model, encoded, batch_size)
    return 1.0 / (1.0 + np.exp(-logits))


def _f1(hits, predicted, actual):
    precision = np.divide(hits, predicted, out=np.zeros_like(hits, dtype=float), where=predicted > 0)
    recall = np.divide(hits, actual, out=np.zeros_like(hits, dtype=float), where=actual > 0)
    denom = precision + recall
    return precision, recall, np.divide(2 * precision * recall, denom, out=np.zeros_like(precision), where=denom > 0)


def multilabel_report(true, predicted, labels: list[str], threshold: float = DEFAULT_THRESHOLD) -> dict:
    """micro_f1, macro_f1 (over tags present in `true`), subset_accuracy (every tag right), hamming_loss and
    per_label {precision, recall, f1, support}; `true` and `predicted` are (N, n_tags) 0/1 arrays."""
    true, predicted = np.asarray(true) > 0.5, np.asarray(predicted) > 0.5
    hits = (true & predicted).sum(0).astype(float)
    precision, recall, f1 = _f1(hits, predicted.sum(0).astype(float), true.sum(0).astype(float))
    _, _, micro = _f1(np.array([hits.sum()]), np.array([float(predicted.sum())]), np.array([float(true.sum())]))
    support = true.sum(0)
    present = support > 0
    return {
        "micro_f1": float(micro[0]),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "subset_accuracy": float((true == predicted).all(1).mean()) if len(true) else 0.0,
        "hamming_loss": float((true != predicted).mean()) if true.size else 0.0,
        "per_label": {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                             "support": int(support[i])} for i, name in enumerate(labels)},
        "labels": list(labels), "threshold": float(threshold), "examples": int(len(true)),
    }


def save_f1_bars_png(report: dict, path: str | Path, title: str = "F1 per tag") -> Path:
    """Horizontal bars of each tag's F1 (its support in the label), micro-F1 as a dashed line."""
    plt = pyplot()
    names = report["labels"]
    f1 = [report["per_label"][name]["f1"] for name in names]
    support = [report["per_label"][name]["support"] for name in names]
    figure, axes = plt.subplots(figsize=(6.5, max(2.5, 0.32 * len(names) + 1.2)))
    rows = np.arange(len(names))
    axes.barh(rows, f1, color="#4c72b0")
    axes.set_yticks(rows, [f"{name} ({count})" for name, count in zip(names, support)])
    axes.invert_yaxis()
    axes.axvline(report["micro_f1"], color="black", linestyle="--", linewidth=1,
                 label=f"micro-F1 {report['micro_f1']:.3f}")
    axes.set_xlim(0, 1)
    axes.set_xlabel(f"F1 at threshold {report['threshold']:g} (tag, support)")
    axes.set_title(title)
    axes.legend(loc="lower right")
    axes.grid(axis="x", alpha=0.3)
    return save_png(figure, path)


def tag_texts(model, tokenizer, labels: list[str], texts: list[str], pairs: list[str] | None = None,
              threshold: float = DEFAULT_THRESHOLD, batch_size: int = 32) -> list[tuple[list[str], dict[str, float]]]:
    """([tags with probability >= threshold], {tag: probability}) for each text (and pair)."""
    threshold = check_threshold(threshold)
    data = LabeledSet("input", list(texts), [""] * len(texts), list(pairs) if pairs is not None else None)
    probs = predict_tag_probabilities(model, EncodedSet(data, tokenizer, None, model.config.block_size), batch_size)
    return [([name for name, p in zip(labels, row) if p >= threshold], {name: float(p) for name, p in zip(labels, row)})
            for row in probs]


def evaluate_multilabel(model, tokenizer, labels: list[str], data: LabeledSet, field: str = "label",
                        threshold: float = DEFAULT_THRESHOLD, batch_size: int = 32) -> dict:
    """multilabel_report of the model on a labeled set whose label column holds tag lists."""
    threshold = check_threshold(threshold)
    true = multi_hot(read_tag_lists(data, field), labels, data.path)
    probs = predict_tag_probabilities(model, EncodedSet(data, tokenizer, None, model.config.block_size), batch_size)
    return multilabel_report(true, probs >= threshold, labels, threshold)
