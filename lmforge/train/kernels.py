"""CPU float32 linear layers through oneDNN instead of torch's default BLAS (MKL).

MKL picks its AVX2 code on AMD processors: on a Zen CPU with AVX-512 its sgemm reaches about 210 GFLOP/s on
2 cores where oneDNN's reaches 440-500. `onednn_linear(model)` routes the three matrix products of every
nn.Linear (forward, input gradient, weight gradient) through oneDNN while training runs; the results are the
same products summed in another order (float32 rounding, ~1e-6 relative).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from ..patching import forwards_replaced

_OP = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)


def onednn_available() -> bool:
    """Whether this torch build has oneDNN and its linear kernel."""
    return _OP is not None and torch.backends.mkldnn.is_available()


def _mm(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    """a @ b_t.T through oneDNN (both 2-D float32; strided operands are read in place)."""
    return _OP(a, b_t, None, "none", [], "")


def matmul_nt(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    """a @ b_t.T for 2-D tensors: through oneDNN for float32 CPU ones outside autocast, else torch's own."""
    if (a.device.type == "cpu" and a.dtype == torch.float32 and b_t.dtype == torch.float32 and a.numel() and b_t.numel()
            and not torch.is_autocast_enabled("cpu") and onednn_available()):
        return _mm(a, b_t)
    return a @ b_t.t()


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _OP(x, weight, bias, "none", [], "")

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = _mm(grad, weight.t()) if ctx.needs_input_grad[0] else None
        grad_w = _mm(grad.t(), x.t()) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, through oneDNN for float32 CPU tensors outside autocast (any other case: F.linear itself)."""
    if (x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32 or x.numel() == 0
            or torch.is_autocast_enabled("cpu") or not onednn_available()):
        return F.linear(x, weight, bias)
    shape = x.shape
    out = _Linear.apply(x.reshape(-1, shape[-1]).contiguous(), weight, bias)
    return out.view(*shape[:-1], weight.size(0))


def _forward(module: nn.Linear):
    return lambda x: linear(x, module.weight, module.bias)


@contextlib.contextmanager
def onednn_linear(model: nn.Module, enabled: bool = True):
    """While inside, every plain nn.Linear of `model` computes through `linear` above; restored on exit."""
    replacements = []
    if enabled and onednn_available():
        replacements = [(module, _forward(module)) for module in model.modules()
                        if type(module) is nn.Linear and "forward" not in module.__dict__]
    with forwards_replaced(replacements) as count:
        yield count
