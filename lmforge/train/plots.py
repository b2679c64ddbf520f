"""Training curves from metrics.jsonl: loss.png beside it after each run, and `lmforge plot` for one run or
several overlaid (loss and validation loss, learning rate, gradient norm, tokens/s)."""
from __future__ import annotations

from pathlib import Path

from ..figures import pyplot
from .metrics import read_metrics

PANELS = (("loss", "loss (lines: train, dots: validation)"), ("lr", "learning rate"),
          ("grad_norm", "gradient norm (before clipping)"), ("tokens_per_s", "tokens/s"))


def _save(figure, out_path: Path) -> None:
    temp = out_path.with_name(f".{out_path.name}.tmp.png")
    figure.savefig(temp)
    temp.replace(out_path)


def plot_metrics(metrics_path: Path, out_path: Path | None = None) -> Path | None:
    """Draw training loss (and validation loss, when evaluated) against step; returns the PNG path."""
    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r and "lr" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    if not train:
        return None
    plt = pyplot()
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
    _save(figure, out_path)
    plt.close(figure)
    return out_path


def plot_runs(runs: list[str | Path], out_path: str | Path) -> Path:
    """Four panels (loss with validation loss, lr, grad norm, tokens/s) with each run's curves overlaid."""
    series = []
    for run in runs:
        run = Path(run)
        metrics = run / "metrics.jsonl" if run.is_dir() else run
        if not metrics.is_file():
            raise FileNotFoundError(f"'{run}' has no metrics.jsonl (give run directories, e.g. runs/gpt-tiny)")
        records = [r for r in read_metrics(metrics) if "step" in r]
        if not any("loss" in r for r in records):
            raise ValueError(f"'{metrics}' holds no training records yet")
        name = run.name if run.is_dir() else run.parent.name
        series.append((name, records))
    plt = pyplot()
    figure, axes = plt.subplots(2, 2, figsize=(11, 7), dpi=110)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (name, records) in enumerate(series):
        color = colors[index % len(colors)]
        for axis, (key, title) in zip(axes.flat, PANELS):
            points = [(r["step"], r[key]) for r in records if key in r and "lr" in r]
            if points:
                axis.plot(*zip(*points), color=color, linewidth=1, label=name)
            if key == "loss":
                val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
                if val:
                    axis.plot(*zip(*val), "o--", color=color, markersize=3, linewidth=1, label=f"{name} (val)")
            axis.set_title(title, fontsize=10)
    for axis, (key, _) in zip(axes.flat, PANELS):
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        if key == "grad_norm":
            axis.set_yscale("log")
        if axis.lines:
            axis.legend(fontsize=8)
    figure.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _save(figure, out_path)
    plt.close(figure)
    return out_path
