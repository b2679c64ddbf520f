"""Training curves from metrics.jsonl, drawn to a PNG beside it."""
from __future__ import annotations

from pathlib import Path

from .metrics import read_metrics


def plot_metrics(metrics_path: Path, out_path: Path | None = None) -> Path | None:
    """Draw training loss (and validation loss, when evaluated) against step; returns the PNG path."""
    if not metrics_path.is_file():
        return None
    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r and "lr" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_path = out_path or metrics_path.with_name("loss.png")
    figure, axis = plt.subplots(figsize=(7, 4), dpi=110)
    axis.plot(*zip(*train), label="train loss", linewidth=1)
    if val:
        axis.plot(*zip(*val), "o-", label="validation loss", linewidth=1.5, markersize=3)
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    temp = out_path.with_name(f".{out_path.name}.tmp.png")
    figure.savefig(temp)
    plt.close(figure)
    temp.replace(out_path)
    return out_path
