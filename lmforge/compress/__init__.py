"""Compression: LoRA adapters, pruning, int8 quantization, distillation, and what they cost and buy.

The seam with model directories: a compressed model's config.json carries a "compression" list, one entry per
step applied, in order (e.g. [{"kind": "prune", ...}, {"kind": "quantize", "method": "dynamic-int8"}]). Loading
builds the plain model from the "model" section, then `restore` replays each entry's change of structure (LoRA
wrappers, int8 Linear modules, smaller matrices), so the weights file loads into it strictly. Each kind lives
in its own module, which provides `restore(model, config, spec, path) -> nn.Module`.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from torch import nn

KINDS = {"lora": "lora", "prune": "prune", "quantize": "quantize"}  # kind -> module of this package


def restore(model: nn.Module, config, meta: dict, path: Path) -> nn.Module:
    """Replay the structural changes listed in config.json's "compression" on a freshly built `model`."""
    steps = meta.get("compression") or []
    if not isinstance(steps, list):
        raise ValueError(f"'{Path(path) / 'config.json'}': 'compression' must be a list of steps, got {steps!r}")
    for spec in steps:
        kind = spec.get("kind") if isinstance(spec, dict) else None
        if kind not in KINDS:
            raise ValueError(f"'{Path(path) / 'config.json'}' lists a compression step {spec!r} this lmforge cannot "
                             f"load; known kinds: {', '.join(KINDS)}")
        module = importlib.import_module(f".{KINDS[kind]}", __name__)
        model = module.restore(model, config, spec, Path(path))
    return model


def card_lines(steps: list) -> list[str]:
    """The model card's "Compression" section: one line per step of config.json's "compression" list."""
    lines = ["## Compression", ""]
    for spec in steps:
        if not isinstance(spec, dict):
            continue
        details = ", ".join(f"{key}: {value}" for key, value in spec.items()
                            if key != "kind" and not isinstance(value, (list, dict)))
        lines.append(f"- {spec.get('kind')}" + (f" ({details})" if details else ""))
    return [*lines, ""]
