"""Temporary forwards: speed and memory switches (oneDNN linears, packed weights, checkpointed blocks) swap a
module's forward for the length of a call and leave the model exactly as it was afterwards."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

from torch import nn


@contextlib.contextmanager
def forwards_replaced(replacements: Iterable[tuple[nn.Module, Callable]]):
    """While inside, each module of the (module, forward) pairs runs `forward`; all are restored on exit, after
    an error too. Yields how many were replaced."""
    patched = []
    try:
        for module, forward in replacements:
            module.forward = forward
            patched.append(module)
        yield len(patched)
    finally:
        for module in patched:
            del module.forward
