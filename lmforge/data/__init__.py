"""Data: corpus readers, token files and LM windows, MLM masking, labeled sets, and the data passes (scrub, dedup,
contamination, augment; see their modules).

The names below load on first use, so importing one light module of this package (the corpus readers, a pass's
settings for a command's --help) does not pull in numpy and torch with the token files.
"""
from __future__ import annotations

import importlib

_HOMES = {"DataError": "corpus", "builtin_corpus": "corpus", "iter_documents": "corpus", "iter_texts": "corpus",
          "read_text": "corpus", "resolve_paths": "corpus", "TokenWindows": "tokens", "build_token_file": "tokens",
          "open_tokens": "tokens"}
__all__ = list(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
