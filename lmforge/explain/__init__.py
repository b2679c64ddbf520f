"""Seeing inside a model: attention maps, token attributions, the logit lens, embedding neighbours and a
self-contained HTML report of a run. Names load on first use, so `lmforge --help` stays quick."""
from __future__ import annotations

import importlib

_WHERE = {"AttentionMap": "attention", "capture_attention": "attention", "explain_attention": "attention",
          "Attribution": "attribution", "attribute": "attribution", "attribute_embeddings": "attribution",
          "LogitLens": "lens", "logit_lens": "lens", "Neighbors": "neighbors", "nearest_tokens": "neighbors",
          "build_report": "report"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'lmforge.explain' has no attribute '{name}'")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
