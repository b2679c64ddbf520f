"""The Python face of lmforge: `LM` (defined in lmforge/app/facade.py), importable from here as it always was."""
from __future__ import annotations

from .app.facade import LM

__all__ = ["LM"]
