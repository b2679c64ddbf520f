"""Classification metrics (accuracy, macro-F1, per-class precision/recall/F1, confusion matrix) and a PNG plot."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..figures import pyplot


def confusion_matrix(true: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts (n_classes, n_classes): rows are the true class, columns the predicted one."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(true, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return matrix


def classification_report(true, predicted, labels: list[str]) -> dict:
    """accuracy, macro_f1, per_class {label: precision, recall, f1, support}, confusion (rows = true), labels."""
    matrix = confusion_matrix(true, predicted, len(labels))
    hits = np.diag(matrix).astype(float)
    support = matrix.sum(1)
    predicted_count = matrix.sum(0)
    # a class never predicted (or never present) has precision (recall) 0, as scikit-learn's zero_division=0
    precision = np.divide(hits, predicted_count, out=np.zeros_like(hits), where=predicted_count > 0)
    recall = np.divide(hits, support, out=np.zeros_like(hits), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(hits), where=denom > 0)
    present = support > 0
    total = int(matrix.sum())
    return {
        "accuracy": float(hits.sum() / total) if total else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                             "support": int(support[i])} for i, name in enumerate(labels)},
        "confusion": matrix.tolist(),
        "labels": list(labels),
        "examples": total,
    }


def save_confusion_png(confusion, labels: list[str], path: str | Path, title: str = "Confusion matrix") -> Path:
    """Draw the confusion matrix (counts, rows = true label) as a PNG with matplotlib's Agg backend."""
    plt = pyplot()

    matrix = np.asarray(confusion)
    size = max(3.0, 0.6 * len(labels) + 2)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted label")
    axes.set_ylabel("true label")
    axes.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    if len(labels) <= 30:  # numbers become unreadable beyond that
        for i in range(matrix.shape[0]):
            for j in range(matrix.shape[1]):
                axes.text(j, i, str(matrix[i, j]), ha="center", va="center",
                          color="white" if matrix[i, j] > threshold else "black", fontsize=8)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    figure.savefig(temp, dpi=100, format="png")
    plt.close(figure)
    temp.replace(path)  # never a half-written PNG under the final name
    return path
