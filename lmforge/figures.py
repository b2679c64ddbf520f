"""The little matplotlib plumbing the report plots share: a headless backend and an atomic PNG write."""
from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_png(figure, path: str | Path) -> Path:
    """Write `figure` to `path` through a temporary name, so a crash never leaves half a PNG; closes it."""
    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    figure.tight_layout()
    figure.savefig(temp, dpi=100, format="png")
    plt.close(figure)
    temp.replace(path)
    return path
