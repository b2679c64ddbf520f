"""Decoding-time linear layers on oneDNN with weights packed once per generation call.

torch's CPU float32 linear goes to MKL, which runs its AVX2 code on AMD processors: one decoding step of a
6-layer, 384-wide GPT spends 2.3 ms in its 24 matrix-vector products there, 0.9 ms in oneDNN with weights
reordered for the batch size (measured on a 2-core AMD EPYC with AVX-512). oneDNN costs ~10 us more per call, so
small products of a model that stays in the caches (a 128-wide one's) keep torch's own linear. The packed copies live only inside
`packed_linears`; the results are the same products summed in another order (float32 rounding, ~1e-6).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..patching import forwards_replaced

_MKLDNN = getattr(torch.ops, "mkldnn", None)
_LINEAR = getattr(_MKLDNN, "_linear_pointwise", None)
_REORDER = getattr(_MKLDNN, "_reorder_linear_weight", None)

# below these a product is cheaper through torch's linear than through oneDNN's per-call overhead (measured)
STREAMED_BYTES = 16 << 20  # linear weights beyond this do not stay in the caches: each step streams them from
#                            memory, which oneDNN's packed kernels read about 2x faster than MKL
MIN_STREAMED = 65_536  # weight elements worth packing in such a model
MIN_WORK = 1_000_000  # rows x weight elements: enough arithmetic for oneDNN's kernels to pay in any model


def available() -> bool:
    """Whether this torch build has oneDNN's linear kernel and weight reordering."""
    return _LINEAR is not None and _REORDER is not None and torch.backends.mkldnn.is_available()


def _plain_linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if type(m) is nn.Linear and "forward" not in m.__dict__
            and m.weight.device.type == "cpu" and m.weight.dtype == torch.float32]


def worth_it(module: nn.Linear, rows: int, streamed: bool) -> bool:
    """Whether a float32 CPU nn.Linear multiplying `rows` rows per call gains from a packed oneDNN weight;
    `streamed`: the model's weights are too big to stay in the caches."""
    size = module.weight.numel()
    return size * rows >= MIN_WORK or (streamed and size >= MIN_STREAMED)


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
    replacements = []
    if enabled and available():
        linears = _plain_linears(model)
        streamed = sum(m.weight.numel() * 4 for m in {id(m.weight): m for m in linears}.values()) > STREAMED_BYTES
        with torch.no_grad():
            for module in linears:
                if worth_it(module, rows, streamed):
                    packed = _REORDER(module.weight.detach(), rows)
                    replacements.append((module, _forward(packed, module.bias, module.forward)))
    with forwards_replaced(replacements) as count:
        yield count
