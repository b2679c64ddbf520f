"""Quantization of a model's Linear layers (`lmforge quantize SRC DST --method dynamic-int8 | weight-int8 |
weight-int4`); weight-int4, 4-bit codes in groups, lives in compress/int4.py.

The int8 methods store each Linear's weight as int8 with one float scale per output channel (symmetric, round to
nearest, |q| <= 127), saved as plain safetensors tensors (`<name>.weight_int8`, `<name>.weight_scale`):
- dynamic-int8: activations are quantized per batch at run time and the matmul runs in int8 on torch's own
  quantized CPU kernels (fbgemm / oneDNN through torch.ops.quantized, the kernels behind torch.ao's dynamic
  quantization), weights prepacked once per process. CPU only.
- weight-int8: the int8 weight is dequantized to the activations' dtype for each matmul: the file is as small,
  the arithmetic stays floating point (no activation error), and it runs on any device. A decoding step's few bf16
  rows on a CPU run on torch's int8-weight kernel instead (`torch._weight_int8pack_mm`: no dequantized copy, the
  int8 weight read as it is).
Embeddings, norms and a head tied to the embedding stay in floating point.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .int4 import GROUP, Int4Linear, few_bf16_rows, filled

METHODS = {
    "dynamic-int8": "int8 weights and int8 activations (quantized per batch at run time); CPU only",
    "weight-int8": "int8 weights dequantized for each matmul, activations in floating point; any device",
    "weight-int4": "4-bit weights in groups of 32 inputs, activations in bfloat16 (the model is saved in bf16); "
                   "any device, fastest decoding on a CPU",
}
SCHEMES = {"dynamic-int8": "symmetric int8, one scale per output channel",
           "weight-int8": "symmetric int8, one scale per output channel",
           "weight-int4": f"4-bit codes, a scale and a minimum per {GROUP} inputs (Q4_1's)"}


# torch's CPU kernel for bf16 activations times int8 weights with per-row scales (what gpt-fast runs) reads the
# int8 weight as it is: a decoding step's few rows run 1.3-3x faster than dequantizing first (1536 x 576: 73 vs
# 213 us for 1 row, 185 vs 242 for 8), but its time grows with the rows (64 rows: 874 vs 473 us). With float32
# activations it reads at ~9 GB/s, no faster than dequantizing into a float32 product, so float32 dequantizes.
_INT8_MM = getattr(torch, "_weight_int8pack_mm", None)
INT8_MAX_ROWS = 16


def _int8_kernel(x: torch.Tensor) -> bool:
    """Whether a weight-int8 product of `x` runs on the int8 kernel: bf16 on a CPU, few rows (a decoding step),
    no gradient wanted (the kernel has no backward)."""
    return _INT8_MM is not None and x.device.type == "cpu" and few_bf16_rows(x, INT8_MAX_ROWS)


def check_method(method: str) -> None:
    """A known quantization method, or an error listing them."""
    if method not in METHODS:
        raise ValueError(f"unknown quantization method {method!r}; choose one of: "
                         + "; ".join(f"{name} ({text})" for name, text in METHODS.items()))


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight, float32 scale per output row) with weight ~= int8 * scale[:, None]."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero (pruned) row stays exactly zero
    return torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8), scale


class Int8Linear(nn.Module):
    """A Linear whose weight is int8 with per-output-channel scales; `dynamic` picks the int8 matmul kernel
    (CPU) over dequantizing the weight for a floating-point matmul."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dynamic: bool):
        super().__init__()
        self.in_features, self.out_features, self.dynamic = in_features, out_features, dynamic
        # a frozen Parameter, not a buffer: parameter counts, nonzero counts and model cards see the weights
        self.weight_int8 = nn.Parameter(torch.zeros(out_features, in_features, dtype=torch.int8), requires_grad=False)
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self._packed, self._packed_key = None, None

    @classmethod
    def from_linear(cls, linear: nn.Linear, dynamic: bool) -> "Int8Linear":
        """Quantize a trained nn.Linear."""
        weight, scale = quantize_weight(linear.weight)
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, dynamic)
        return filled(module, linear, weight_int8=weight, weight_scale=scale)

    def dequantized_weight(self, dtype=torch.float32) -> torch.Tensor:
        """The weight the int8 values stand for, as floating point."""
        return self.weight_int8.to(dtype).mul_(self.weight_scale.to(dtype)[:, None])  # one new buffer, not two

    def _apply(self, fn, recurse=True):
        result = super()._apply(fn, recurse)
        if self.dynamic and self.weight_int8.device.type != "cpu":
            raise ValueError(f"a dynamic-int8 model runs on CPU only (torch's int8 kernels are CPU kernels), not on "
                             f"{self.weight_int8.device}; load it with device='cpu', or quantize the original model "
                             "with --method weight-int8, which runs on any device")
        self._packed = None
        return result

    def __getstate__(self):  # copies (deepcopy, pickling by a caller) repack: the packed object cannot be copied
        return {**self.__dict__, "_packed": None, "_packed_key": None}

    def _packed_weight(self):
        # packed once, again only after new weights were loaded in place (load_state_dict bumps _version)
        key = (self.weight_int8.data_ptr(), self.weight_int8._version, self.weight_scale._version,
               None if self.bias is None else self.bias._version)
        if self._packed is None or key != self._packed_key:
            zero_points = torch.zeros(self.out_features, dtype=torch.long)
            with warnings.catch_warnings():  # torch 2.13 flags quantized tensors as deprecated; the kernels need one
                warnings.simplefilter("ignore", UserWarning)
                weight = torch._make_per_channel_quantized_tensor(self.weight_int8.detach(),
                                                                  self.weight_scale.detach().double(), zero_points, 0)
            bias = None if self.bias is None else self.bias.detach().float()
            self._packed, self._packed_key = torch.ops.quantized.linear_prepack(weight, bias), key
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.dynamic:
            bias = None if self.bias is None else self.bias.to(x.dtype)
            if _int8_kernel(x):
                out = _INT8_MM(x.reshape(-1, self.in_features), self.weight_int8, self.weight_scale.to(x.dtype))
                out = out.view(*x.shape[:-1], self.out_features)
                return out if bias is None else out + bias
            return F.linear(x, self.dequantized_weight(x.dtype), bias)
        if x.device.type != "cpu":
            raise ValueError(f"a dynamic-int8 model runs on CPU only, got input on {x.device}")
        # fbgemm's AVX2/AVX-512 paths add pairs of u8*s8 products in int16: 7-bit activations cannot saturate it
        # (what torch.ao's dynamic Linear does); oneDNN and qnnpack take the full 8 bits
        reduce_range = torch.backends.quantized.engine in ("fbgemm", "x86")
        out = torch.ops.quantized.linear_dynamic(x.float(), self._packed_weight(), reduce_range)
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"{'dynamic-int8' if self.dynamic else 'weight-int8'}")


def _shared_parameters(model: nn.Module) -> set[int]:
    """ids of parameters used by more than one module (a head tied to the embedding)."""
    seen: dict[int, int] = {}
    for _, parameter in model.named_parameters(remove_duplicate=False):
        seen[id(parameter)] = seen.get(id(parameter), 0) + 1
    return {key for key, count in seen.items() if count > 1}


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def quantize_model(model: nn.Module, method: str) -> tuple[nn.Module, list[str], list[str]]:
    """Replace every nn.Linear of `model` (in place) with an Int8Linear (Int4Linear for weight-int4); returns
    (model, quantized names, names left in floating point: a weight shared with another module, or for weight-int4
    a width that is not a multiple of its group)."""
    check_method(method)
    shared = _shared_parameters(model)
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and name]
    done, kept = [], []
    for name, linear in linears:
        if id(linear.weight) in shared or (method == "weight-int4" and linear.in_features % GROUP):
            kept.append(name)
            continue
        _replace(model, name, Int4Linear.from_linear(linear) if method == "weight-int4"
                 else Int8Linear.from_linear(linear, dynamic=method == "dynamic-int8"))
        done.append(name)
    if not done:
        raise ValueError("the model has no Linear layer that can be quantized (only shared or no Linear weights)")
    return model, done, kept


def restore(model: nn.Module, config, spec: dict, path: Path) -> nn.Module:
    """The compression seam: put empty Int8Linear modules where config.json's quantize step says they were."""
    where = f"'{Path(path) / 'config.json'}'"
    method, names = spec.get("method"), spec.get("modules")
    if method not in METHODS:
        raise ValueError(f"{where}: quantize step has method {method!r}; this lmforge knows {', '.join(METHODS)}")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{where}: quantize step needs 'modules', a list of module names, got {names!r}")
    group = spec.get("group_size", GROUP)
    if method == "weight-int4" and not (isinstance(group, int) and group > 0 and group % 2 == 0):
        raise ValueError(f"{where}: quantize step has group_size {group!r}; it must be an even positive integer")
    for name in names:
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            linear = None
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"{where}: quantize step names module {name!r}, which is not a Linear layer of this "
                             f"{config.arch} model")
        if method == "weight-int4" and linear.in_features % group:
            raise ValueError(f"{where}: quantize step names module {name!r}, whose {linear.in_features} inputs are "
                             f"not a multiple of group_size {group}")
        bias = linear.bias is not None
        _replace(model, name, Int4Linear(linear.in_features, linear.out_features, bias, group)
                 if method == "weight-int4" else
                 Int8Linear(linear.in_features, linear.out_features, bias, dynamic=method == "dynamic-int8"))
    return model
