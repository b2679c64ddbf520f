"""4-bit weights in groups (`lmforge quantize SRC DST --method weight-int4`): what a chat model decodes fastest on.

Each Linear's weight is cut into groups of `group` (32) consecutive inputs of one output row; a group stores 4-bit
codes 0..15 and its own float scale and minimum, weight = code * scale + min (round to nearest between the group's
least and greatest value: llama.cpp's Q4_1, so a Q4_1 GGUF file's blocks come back exactly). Saved as plain
safetensors tensors: `<name>.weight_int4` (uint8, two codes a byte, the even column in the low nibble),
`<name>.weight_scale` and `<name>.weight_min` (out_features x in_features/group, float32 whatever the model's
dtype).

A decoding step's few bfloat16 rows on a CPU run on torch's int4 kernel (`_weight_int4pack_mm_for_cpu`, which
reads the packed codes as they are: the bytes a step streams from memory are a quarter of bf16's), and on an NVIDIA
GPU on torch's tinygemm kernel (`_weight_int4pack_mm`, sm80 and newer; its packing is checked once per layer
against the dequantized product, and a GPU or torch build that refuses it or reads the layout differently falls
back with a warning); anything else (float32, many rows, gradients) multiplies with the dequantized weight.
"""
from __future__ import annotations

import warnings
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import first_line

GROUP = 32
# torch's CPU kernel: bf16 activations times packed int4 codes with a bf16 (scale, zero) per group and output,
# where weight = (code - 8) * scale + zero. Its time grows with the rows (960 x 576: 20 us at 1 row, 140 at 16,
# 530 at 64, where a bf16 product of the dequantized weight takes about as long), so prompts dequantize.
_PACK = getattr(torch.ops.aten, "_convert_weight_to_int4pack_for_cpu", None)
_INT4_MM = getattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu", None)
INT4_MAX_ROWS = 32
KERNEL_ROWS_MULTIPLE = 16  # the kernel packs output rows in blocks of 16
# torch's CUDA kernel (tinygemm): the same (code - 8) * scale + zero, bf16 activations, groups of 32 to 256,
# outputs a multiple of 8; it takes its codes as bytes holding the even column in the high nibble
_CUDA_PACK = getattr(torch.ops.aten, "_convert_weight_to_int4pack", None)
_CUDA_MM = getattr(torch.ops.aten, "_weight_int4pack_mm", None)
CUDA_GROUPS = (32, 64, 128, 256)
CUDA_CHECK_TOLERANCE = 0.03  # largest |kernel - dequantized product| over the largest |product| (bf16: ~0.005)
SLOW_DECODING = ("weight-int4 layers multiply float32 inputs by dequantizing every weight for every product, "
                 "which is slow for decoding (about 10 tokens/s for SmolLM2 on 2 cores); run the model in bfloat16 "
                 "(the directory's own dtype: drop --dtype float32), where a decoding step uses the int4 kernel")
_warned: set[str] = set()


def quantize_groups(weight: torch.Tensor, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes two to a byte (N, K/2) uint8, scale (N, K/group), min (N, K/group)), float32 scales, with
    weight ~= code * scale + min within half a step; an all-zero (pruned) group stays exactly zero."""
    rows, width = weight.shape
    if width % group:
        raise ValueError(f"a weight with {width} inputs cannot be cut into groups of {group}")
    w = weight.detach().float().reshape(rows, width // group, group)
    low, high = w.amin(-1), w.amax(-1)
    scale = (high - low) / 15
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round((w - low[..., None]) / scale[..., None]).clamp_(0, 15).to(torch.uint8)
    return pack_codes(codes.view(rows, width)), scale, low


def pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """(N, K) codes 0..15 -> (N, K/2) bytes, the even column in the low nibble."""
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def unpack_codes(packed: torch.Tensor) -> torch.Tensor:
    """The (N, K) codes 0..15 of (N, K/2) bytes."""
    return torch.stack((packed & 15, packed >> 4), dim=-1).view(packed.size(0), -1)


def filled(module: nn.Module, linear: nn.Linear, **tensors: torch.Tensor) -> nn.Module:
    """`module`, a fresh quantized layer, with its quantized `tensors` (by attribute name) and `linear`'s bias."""
    with torch.no_grad():
        for name, value in tensors.items():
            getattr(module, name).copy_(value)
        if linear.bias is not None:
            module.bias.copy_(linear.bias.detach().float())
    return module


def few_bf16_rows(x: torch.Tensor, most: int) -> bool:
    """Whether `x` is a decoding step's input for torch's weight-only kernels (int4 here, int8 in quantize.py):
    bf16, at most `most` rows, no gradient wanted (the kernels have no backward). Cheap, as it runs for every
    product: the layer's device and shape decide the rest."""
    return (x.dtype == torch.bfloat16 and x.numel() <= most * x.size(-1)
            and not (x.requires_grad and torch.is_grad_enabled()))


def _kernel_rows(x: torch.Tensor) -> bool:
    """Whether a product of `x` may run on an int4 kernel."""
    return few_bf16_rows(x, INT4_MAX_ROWS)


def _cuda_kernel(layer: Int4Linear, codes: torch.Tensor, scales_zeros: torch.Tensor):
    """(product, tinygemm's packing of `codes`, scales and zeros), checked once against the dequantized weight's
    product (a layout read differently would give wrong numbers, not an error); None, with a warning, when the
    kernel refuses (a GPU older than sm80, a torch build without it) or differs."""
    tiles = next(t for t in (8, 4, 2) if layer.in_features % (16 * t) == 0)
    reason = None
    try:
        packed = _CUDA_PACK(((codes[:, 0::2] << 4) | codes[:, 1::2]).contiguous(), tiles)
        probe = torch.randn(4, layer.in_features, device=codes.device,
                            generator=torch.Generator(codes.device).manual_seed(0)).to(torch.bfloat16)
        got = _CUDA_MM(probe, packed, layer.group, scales_zeros).float()
        want = F.linear(probe, layer.dequantized_weight(torch.bfloat16)).float()
        error = ((got - want).abs().max() / want.abs().max().clamp(min=1e-6)).item()
        if error > CUDA_CHECK_TOLERANCE:
            reason = f"gave products {error:.0%} away from the dequantized weight's"
    except RuntimeError as failure:
        reason = f"is not available here ({first_line(failure, 160)})"
    if reason is None:
        return _CUDA_MM, packed, scales_zeros
    _warn_once(f"weight-int4 on {codes.device}: torch's int4 kernel {reason}; these layers multiply with the "
               "dequantized weight instead (the same results, slower decoding)")
    return None


def _warn_if_slow(x: torch.Tensor) -> None:
    """Once per process: a float32 decoding step on a CPU, which dequantizes every weight for a few rows."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and x.numel() <= x.size(-1) * 8 \
            and not torch.is_grad_enabled():
        _warn_once(SLOW_DECODING)


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=4)


class Int4Linear(nn.Module):
    """A Linear whose weight is 4-bit codes in groups of `group` inputs, each group with a scale and a minimum."""

    values_per_element: ClassVar[dict[str, int]] = {"weight_int4": 2}  # parameter counts see the weights, not the bytes

    def __init__(self, in_features: int, out_features: int, bias: bool, group: int = GROUP):
        super().__init__()
        if in_features % group or group % 2:
            raise ValueError(f"{in_features} inputs cannot be cut into groups of {group}")
        self.in_features, self.out_features, self.group = in_features, out_features, group
        # a frozen Parameter, not a buffer, as int8 weights are: model cards and file sizes see the weights
        self.weight_int4 = nn.Parameter(torch.zeros(out_features, in_features // 2, dtype=torch.uint8),
                                        requires_grad=False)
        self.register_buffer("weight_scale", torch.ones(out_features, in_features // group))
        self.register_buffer("weight_min", torch.zeros(out_features, in_features // group))
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self._kernel, self._kernel_key = None, None

    @classmethod
    def from_linear(cls, linear: nn.Linear, group: int = GROUP) -> Int4Linear:
        """Quantize a trained nn.Linear (its inputs must be a multiple of `group`)."""
        codes, scale, low = quantize_groups(linear.weight, group)
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, group)
        return filled(module, linear, weight_int4=codes, weight_scale=scale, weight_min=low)

    @torch.no_grad()
    def set_groups(self, codes: torch.Tensor, scale: torch.Tensor, low: torch.Tensor, first_row: int = 0) -> None:
        """Take these (rows, K) codes and (rows, K/group) scales and minimums as the weight's rows from `first_row`
        on (e.g. a GGUF file's own blocks)."""
        rows = codes.size(0)
        if first_row < 0 or first_row + rows > self.out_features or codes.size(1) != self.in_features \
                or scale.shape != low.shape or scale.shape != (rows, self.in_features // self.group):
            raise ValueError(f"4-bit groups of shapes {tuple(codes.shape)}, {tuple(scale.shape)}, {tuple(low.shape)} "
                             f"from row {first_row} do not fit a {self.out_features} x {self.in_features} layer in "
                             f"groups of {self.group}")
        self.weight_int4[first_row:first_row + rows] = pack_codes(codes.to(torch.uint8))
        self.weight_scale[first_row:first_row + rows] = scale
        self.weight_min[first_row:first_row + rows] = low
        self._kernel, self._kernel_key = None, None

    def dequantized_weight(self, dtype=torch.float32) -> torch.Tensor:
        """The weight the codes stand for (computed in float32, then rounded to `dtype` once)."""
        # in place on one fresh buffer: a product's worth of new large buffers costs more than the arithmetic
        # (3072 x 576: 7.5 -> 0.56 ms; the same values)
        weight = unpack_codes(self.weight_int4).view(self.out_features, -1, self.group).float()
        weight.mul_(self.weight_scale.float()[..., None]).add_(self.weight_min.float()[..., None])
        return weight.view(self.out_features, self.in_features).to(dtype)

    def _apply(self, fn, recurse=True):
        # scales and minimums keep float32 when the model changes dtype (`.to(torch.bfloat16)`): a Q4_1 file's
        # float16 scales stay exact, and the kernel rounds its own bf16 copy
        kept = {name: getattr(self, name) for name in ("weight_scale", "weight_min")}
        result = super()._apply(fn, recurse)
        for name, before in kept.items():
            after = getattr(self, name)
            if after.dtype != before.dtype and after.is_floating_point():
                setattr(self, name, before.to(after.device))
        self._kernel, self._kernel_key = None, None
        return result

    def __getstate__(self):  # a copy packs again
        return {**self.__dict__, "_kernel": None, "_kernel_key": None}

    def _kernel_for(self, x: torch.Tensor):
        """(product, packed codes, scales and zeros) when a product of `x` runs on an int4 kernel, else None.
        Packed once per device: new weights (load_state_dict, set_groups, a move) drop the packing. On a GPU never
        packed while a CUDA graph is being recorded (the warm-up steps before it pack)."""
        if not _kernel_rows(x):
            return None
        where = x.get_device()  # -1 on a CPU: cheaper than comparing devices, and this runs for every product
        if where != self._kernel_key:
            if x.is_cuda and torch.cuda.is_current_stream_capturing():
                return None
            self._kernel, self._kernel_key = self._pack(x.device), where
        return self._kernel

    def _pack(self, device: torch.device):
        """The int4 kernel for this layer on `device`, or None where none applies (widths, devices, builds)."""
        if device.type == "cpu":
            usable = _INT4_MM is not None and self.out_features % KERNEL_ROWS_MULTIPLE == 0
        else:
            usable = device.type == "cuda" and _CUDA_MM is not None and self.group in CUDA_GROUPS \
                and self.out_features % 8 == 0
        if not usable:
            return None
        codes = unpack_codes(self.weight_int4.detach())
        scale, low = self.weight_scale.detach().float(), self.weight_min.detach().float()
        scales_zeros = torch.stack((scale, low + 8 * scale), dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
        if device.type == "cpu":
            return _INT4_MM, _PACK(codes.to(torch.int32), 1), scales_zeros
        return _cuda_kernel(self, codes, scales_zeros)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._kernel, self._kernel_key = None, None  # new weights: pack again

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        kernel = self._kernel_for(x)
        if kernel is not None:
            product, packed, scales_zeros = kernel
            out = product(x.reshape(-1, self.in_features).contiguous(), packed, self.group, scales_zeros)
            out = out.view(*x.shape[:-1], self.out_features)
            return out if bias is None else out + bias
        _warn_if_slow(x)
        return F.linear(x, self.dequantized_weight(x.dtype), bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"weight-int4, group={self.group}")
