"""Pictures of explanations (matplotlib, Agg): attention heatmaps, logit-lens grids, attribution bars and
training curves, with a CJK-capable font found through matplotlib's font manager for Chinese tokens."""
from __future__ import annotations

import functools
import io
import re
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..figures import pyplot

# families that cover Chinese (and Japanese/Korean) glyphs, most complete first
CJK_FAMILIES = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans CJK TC", "Noto Sans CJK KR", "Source Han Sans SC",
                "WenQuanYi Micro Hei", "WenQuanYi Zen Hei", "Droid Sans Fallback", "AR PL UMing CN", "AR PL UKai CN")
# their file names, for a font installed after matplotlib built its font cache
CJK_FILES = ("notosanscjk", "notoserifcjk", "sourcehansans", "wqy-microhei", "wqy-zenhei", "droidsansfallback",
             "uming", "ukai")
CJK_INSTALL = "apt-get install fonts-noto-cjk (or fonts-wqy-microhei)"
_CJK = re.compile("[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef\U00020000-\U0002fa1f]")


def has_cjk(texts) -> bool:
    """Whether any of `texts` holds a Chinese, Japanese or Korean character."""
    return any(_CJK.search(text) for text in texts)


@functools.cache
def cjk_font() -> str | None:
    """The family name of an installed CJK-capable font, or None when there is none."""
    from matplotlib import font_manager

    known = {font.name for font in font_manager.fontManager.ttflist}
    for family in CJK_FAMILIES:
        if family in known:
            return family
    for path in font_manager.findSystemFonts():
        if any(part in Path(path).name.lower() for part in CJK_FILES):
            try:
                font_manager.fontManager.addfont(path)
                return font_manager.FontProperties(fname=path).get_name()
            except (OSError, RuntimeError, ValueError):
                continue
    return None


@functools.cache
def _warn_no_cjk_font() -> None:
    warnings.warn(f"no CJK-capable font found: Chinese/Japanese/Korean tokens are labelled by code point "
                  f"(U+732B for 猫); install one with `{CJK_INSTALL}`", stacklevel=4)


def plot_labels(labels: list[str]) -> list[str]:
    """Labels ready to draw: unchanged when a CJK font covers them, else CJK characters as code points (U+732B)."""
    if not has_cjk(labels) or cjk_font():
        return list(labels)
    _warn_no_cjk_font()
    return [_CJK.sub(lambda m: f"U+{ord(m.group()):04X}", label) for label in labels]


@contextmanager
def _figure_style(texts=()):
    import matplotlib

    pyplot()  # the headless backend, before any figure
    font = cjk_font() if has_cjk(texts) else None
    style = {"font.family": ["DejaVu Sans", font]} if font else {}
    with matplotlib.rc_context(style), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from")  # already told once, above
        yield


def save_figure(figure, path: str | Path | None, dpi: int = 100) -> Path | bytes:
    """Write the figure as PNG atomically to `path`, or return the PNG bytes when path is None."""
    plt = pyplot()

    try:
        if path is None:
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=dpi)
            return buffer.getvalue()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.tmp")
        figure.savefig(temp, format="png", dpi=dpi)
        temp.replace(path)
        return path
    finally:
        plt.close(figure)


def _heatmap(axis, matrix, labels, show_x: bool, show_y: bool, fontsize: float):
    image = axis.imshow(matrix, cmap="viridis", vmin=0.0, vmax=max(float(matrix.max()), 1e-6))
    n = len(labels)
    axis.set_xticks(range(n), labels if show_x else [], rotation=90, fontsize=fontsize)
    axis.set_yticks(range(n), labels if show_y else [], fontsize=fontsize)
    axis.tick_params(length=0)
    return image


def attention_figure(attention, path: str | Path | None, layer: int | None = None, head: int | None = None):
    """Heatmaps of an AttentionMap: one map, a row of heads or layers, or the layers x heads grid."""
    plt = pyplot()

    labels = plot_labels(attention.tokens)
    weights = attention.weights
    n_layer, n_head, n = weights.shape[0], weights.shape[1], len(labels)
    if layer is not None and head is not None:
        panels, rows, cols = [(layer, head)], 1, 1
    elif layer is not None:
        panels, rows, cols = [(layer, h) for h in range(n_head)], 1, n_head
    elif head is not None:
        panels, rows, cols = [(l, head) for l in range(n_layer)], 1, n_layer
    else:
        panels, rows, cols = [(l, h) for l in range(n_layer) for h in range(n_head)], n_layer, n_head
    # cells big enough to read the labels of short texts, the whole figure bounded for long ones
    cell = min(max(2.2, 0.22 * n), 9.0 if len(panels) == 1 else max(2.0, 30.0 / max(rows, cols)))
    fontsize = max(4.0, min(9.0, 0.6 * cell * 72 / max(n, 1)))  # 60% of a row's height, in points
    with _figure_style(labels):
        figure, axes = plt.subplots(rows, cols, figsize=(cell * cols + 1.5, cell * rows + 1.0), squeeze=False)
        for index, (l, h) in enumerate(panels):
            axis = axes[index // cols][index % cols]
            image = _heatmap(axis, weights[l, h], labels, index // cols == rows - 1 and n <= 80,
                             index % cols == 0 and n <= 80, fontsize)
            axis.set_title(f"layer {l}, head {h}", fontsize=9)
        figure.colorbar(image, ax=axes, fraction=0.02, pad=0.02, label="attention weight")
        figure.suptitle("attention (rows: query token, columns: attended token)", fontsize=10)
        return save_figure(figure, path)


def lens_figure(lens, path: str | Path | None):
    """The logit-lens grid: depth rows, position columns, each cell the top token, coloured by its probability."""
    plt = pyplot()

    inputs = plot_labels(lens.tokens)
    cells = [plot_labels([tokens[0] for tokens in depth]) for depth in lens.top_tokens]
    probs = lens.top_probs[..., 0]
    n_depth, n = probs.shape
    with _figure_style(inputs + [t for row in cells for t in row]):
        figure, axis = plt.subplots(figsize=(min(2.0 + 0.85 * n, 40.0), 1.5 + 0.45 * n_depth))
        image = axis.imshow(probs, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
        for d in range(n_depth):
            for t in range(n):
                axis.text(t, d, cells[d][t][:8], ha="center", va="center", fontsize=7,
                          color="white" if probs[d, t] > 0.6 else "black")
        axis.set_xticks(range(n), inputs, rotation=60, ha="right", fontsize=8)
        axis.set_yticks(range(n_depth), lens.depths, fontsize=8)
        axis.set_xlabel("input token (each cell: the predicted next token)")
        figure.colorbar(image, ax=axis, fraction=0.03, pad=0.02, label="probability of the top token")
        axis.set_title("logit lens: top next-token prediction read at each depth", fontsize=10)
        figure.tight_layout()
        return save_figure(figure, path)


def attribution_figure(attribution, path: str | Path | None):
    """Horizontal bars, one per token: green pushes towards the target, red away from it."""
    plt = pyplot()

    labels = plot_labels(attribution.tokens)
    scores = np.asarray(attribution.scores, dtype=float)
    with _figure_style(labels):
        figure, axis = plt.subplots(figsize=(7, 1.2 + 0.28 * len(labels)))
        colours = ["#2e7d32" if s >= 0 else "#c62828" for s in scores]
        axis.barh(range(len(labels)), scores, color=colours)
        axis.set_yticks(range(len(labels)), labels, fontsize=8)
        axis.invert_yaxis()
        axis.axvline(0, color="black", linewidth=0.6)
        axis.set_xlabel(f"attribution to log p({attribution.target!r})")
        axis.set_title(f"{attribution.method.replace('_', ' ')}: target {attribution.target!r}", fontsize=10)
        figure.tight_layout()
        return save_figure(figure, path)


def curves_figure(records: list[dict], path: str | Path | None):
    """Training and validation loss against step; a second panel for validation accuracy-like metrics."""
    plt = pyplot()

    train = [(r["step"], r["loss"]) for r in records if "loss" in r and "lr" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    scores = sorted({k for r in records for k in r if k.startswith("val_") and k not in ("val_loss", "val_perplexity")})
    if not train and not val:
        return None
    with _figure_style():
        figure, axes = plt.subplots(1, 2 if scores else 1, figsize=(11 if scores else 7, 4), squeeze=False)
        axis = axes[0][0]
        if train:
            axis.plot(*zip(*train), label="train loss", linewidth=1)
        if val:
            axis.plot(*zip(*val), "o-", label="validation loss", linewidth=1.5, markersize=3)
        axis.set(xlabel="step", ylabel="loss", title="loss")
        axis.grid(alpha=0.3)
        axis.legend()
        if scores:
            axis = axes[0][1]
            for key in scores:
                points = [(r["step"], r[key]) for r in records if key in r]
                axis.plot(*zip(*points), "o-", label=key, linewidth=1.5, markersize=3)
            axis.set(xlabel="step", title="validation")
            axis.grid(alpha=0.3)
            axis.legend()
        figure.tight_layout()
        return save_figure(figure, path, dpi=90)
