"""Decoding-time linear layers on oneDNN with weights packed once per generation call.

torch's CPU float32 linear goes to MKL, which runs its AVX2 code on AMD processors: one decoding step of a
6-layer, 384-wide GPT spends 2.3 ms in its 24 matrix-vector products there, 0.9 ms in oneDNN with weights
reordered for the batch size (measured on a 2-core AMD EPYC with AVX-512). oneDNN costs ~10 us more per call, so
small products of a model that stays in the caches (a 128-wide one's) keep torch's own linear. bfloat16 weights
are packed too where oneDNN has bf16 kernels: a batch-1 step of a model that streams its weights from memory reads
them about 1.6x faster packed than through torch's bf16 linear (49152 x 576: 2.3 vs 3.6 ms).

A SwiGLU MLP whose gate and up products are both packed gets one packed weight holding both (one call of twice
the width, which streams better than two). The packed copies live only inside `packed_linears`; the results are
the same products summed in another order (rounding, ~1e-6 in float32).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ..models.layers import MLP
from ..patching import forwards_replaced

_MKLDNN = getattr(torch.ops, "mkldnn", None)
_LINEAR = getattr(_MKLDNN, "_linear_pointwise", None)
_REORDER = getattr(_MKLDNN, "_reorder_linear_weight", None)
_BF16 = getattr(_MKLDNN, "_is_mkldnn_bf16_supported", None)

# below these a product is cheaper through torch's linear than through oneDNN's per-call overhead (measured)
STREAMED_BYTES = 16 << 20  # linear weights beyond this do not stay in the caches: each step streams them from
#                            memory, which oneDNN's packed kernels read about 2x faster than MKL
MIN_STREAMED = 65_536  # weight elements worth packing in such a model
MIN_WORK = 1_000_000  # rows x weight elements: enough arithmetic for oneDNN's kernels to pay in any model


def available() -> bool:
    """Whether this torch build has oneDNN's linear kernel and weight reordering."""
    return _LINEAR is not None and _REORDER is not None and torch.backends.mkldnn.is_available()


def packable_dtypes() -> tuple[torch.dtype, ...]:
    """The weight dtypes packed here: float32, and bfloat16 where oneDNN has bf16 kernels for this processor."""
    return (torch.float32, torch.bfloat16) if _BF16 is not None and _BF16() else (torch.float32,)


def _plain_linears(model: nn.Module) -> list[nn.Linear]:
    """The CPU nn.Linear layers of packable dtypes not packed already (alone, or in a SwiGLU's fused pair)."""
    dtypes = packable_dtypes()
    fused = {id(linear) for m in model.modules() if isinstance(m, MLP) and m.swiglu and "forward" in m.__dict__
             for linear in (m.gate, m.up)}
    return [m for m in model.modules() if type(m) is nn.Linear and "forward" not in m.__dict__
            and id(m) not in fused and m.weight.device.type == "cpu" and m.weight.dtype in dtypes]


def worth_it(module: nn.Linear, rows: int, streamed: bool) -> bool:
    """Whether a CPU nn.Linear multiplying `rows` rows per call gains from a packed oneDNN weight;
    `streamed`: the model's weights are too big to stay in the caches."""
    size = module.weight.numel()
    return size * rows >= MIN_WORK or (streamed and size >= MIN_STREAMED)


def _runs_packed(x: torch.Tensor, packed: torch.Tensor) -> bool:
    return x.dtype == packed.dtype and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")


def _forward(packed: torch.Tensor, bias: torch.Tensor | None, plain):
    def forward(x: torch.Tensor) -> torch.Tensor:
        if not _runs_packed(x, packed):
            return plain(x)
        return _LINEAR(x, packed, bias, "none", [], "")
    return forward


def _swiglu_forward(mlp: MLP, packed: torch.Tensor, bias: torch.Tensor | None, plain):
    """down(silu(gate(x)) * up(x)) with gate and up as one packed product."""
    width = mlp.up.out_features

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not _runs_packed(x, packed):
            return plain(x)
        gate, up = _LINEAR(x, packed, bias, "none", [], "").split(width, dim=-1)
        return mlp.down(F.silu(gate) * up)
    return forward


def _fused_swiglu(model: nn.Module, chosen: set[int], rows: int) -> list[tuple[nn.Module, object]]:
    """Forwards for the SwiGLU MLPs whose gate and up were both chosen for packing (taken out of `chosen`)."""
    replacements = []
    for mlp in model.modules():
        if not (isinstance(mlp, MLP) and mlp.swiglu and "forward" not in mlp.__dict__
                and id(mlp.gate) in chosen and id(mlp.up) in chosen):
            continue
        gate, up = mlp.gate, mlp.up
        weight = torch.cat([gate.weight.detach(), up.weight.detach()])
        bias = None if gate.bias is None else torch.cat([gate.bias.detach(), up.bias.detach()])
        replacements.append((mlp, _swiglu_forward(mlp, _REORDER(weight, rows), bias, mlp.forward)))
        chosen -= {id(gate), id(up)}
    return replacements


@contextlib.contextmanager
def packed_linears(model: nn.Module, rows: int, enabled: bool = True):
    """While inside (and no gradients are recorded), the big float32 or bfloat16 CPU nn.Linear layers of `model`
    multiply through oneDNN with weights packed for `rows` rows per call; restored on exit. Yields how many
    products were packed (a SwiGLU's gate and up count as one). Nested, the inner one packs nothing again: a
    chat session packs once for all its replies."""
    replacements = []
    if enabled and available():
        linears = _plain_linears(model)
        weights = {id(m.weight): m.weight for m in linears}.values()
        streamed = sum(w.numel() * w.element_size() for w in weights) > STREAMED_BYTES
        chosen = {id(m) for m in linears if worth_it(m, rows, streamed)}
        with torch.no_grad():
            replacements = _fused_swiglu(model, chosen, rows)
            for module in linears:
                if id(module) in chosen:
                    packed = _REORDER(module.weight.detach(), rows)
                    replacements.append((module, _forward(packed, module.bias, module.forward)))
    with forwards_replaced(replacements) as count:
        yield count
