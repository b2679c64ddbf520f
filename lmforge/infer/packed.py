"""Decoding-time linear layers on oneDNN with weights packed once per generation call.

torch's CPU float32 linear goes to MKL, which runs its AVX2 code on AMD processors: one decoding step of a
6-layer, 384-wide GPT spends 2.3 ms in its 24 matrix-vector products there, 0.9 ms in oneDNN with weights
reordered for the batch size (measured on a 2-core AMD EPYC with AVX-512). oneDNN costs ~14 us more per call, so
small products (a 128-wide model's) stay on torch's own linear. The packed copies live only inside
`packed_linears`; the results are the same products summed in another order (float32 rounding, ~1e-6).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

_MKLDNN = getattr(torch.ops, "mkldnn", None)
_LINEAR = getattr(_MKLDNN, "_linear_pointwise", None)
_REORDER = getattr(_MKLDNN, "_reorder_linear_weight", None)

# below these a product is cheaper through torch's linear than through oneDNN's per-call overhead (measured)
MIN_WEIGHT = 400_000  # weight elements: a weight this big is streamed from memory, where oneDNN reads 2x faster
MIN_WORK = 1_000_000  # rows x weight elements: enough arithmetic for oneDNN's kernels to pay


def available() -> bool:
    """Whether this torch build has oneDNN's linear kernel and weight reordering."""
    return _LINEAR is not None and _REORDER is not None and torch.backends.mkldnn.is_available()


def worth_it(module: nn.Module, rows: int) -> bool:
    """Whether a plain float32 CPU nn.Linear multiplying `rows` rows per step gains from a packed oneDNN weight."""
    if type(module) is not nn.Linear or "forward" in module.__dict__:
        return False
    weight = module.weight
    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        return False
    return weight.numel() >= MIN_WEIGHT or weight.numel() * rows >= MIN_WORK


def _forward(packed: torch.Tensor, bias: torch.Tensor | None, plain):
    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or torch.is_grad_enabled() or torch.is_autocast_enabled("cpu"):
            return plain(x)
        return _LINEAR(x, packed, bias, "none", [], "")
    return forward


@contextlib.contextmanager
def packed_linears(model: nn.Module, rows: int, enabled: bool = True):
    """While inside (and no gradients are recorded), the big float32 CPU nn.Linear layers of `model` multiply
    through oneDNN with weights packed for `rows` rows per call; restored on exit. Yields how many were packed."""
    patched = []
    if enabled and available():
        with torch.no_grad():
            for module in model.modules():
                if worth_it(module, rows):
                    packed = _REORDER(module.weight.detach(), rows)
                    module.forward = _forward(packed, module.bias, module.forward)
                    patched.append(module)
    try:
        yield len(patched)
    finally:
        for module in patched:
            del module.forward
