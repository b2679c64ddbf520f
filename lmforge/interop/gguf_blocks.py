"""A GGUF file's 4-bit weights as they are stored: Q4_0, Q4_1 and Q4_K blocks read as groups of 32 weights with a
4-bit code each and a float scale and minimum per group (weight = code * scale + min), the form of lmforge's
weight-int4 layers (compress/int4.py). Read this way a 4-bit file keeps its own weights exactly; dequantizing to
floats and quantizing again would move half of a Q4_0 file's weights to another grid."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .families import CONCAT, COPY, GGUF_FAMILIES, ROPE_CONCAT
from .gguf_file import read_gguf
from .gguf_load import rope_order

GROUP = 32
Groups = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # codes (rows, cols) uint8, scale and min (rows, cols/32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """ggml's layout of 32 codes in 16 bytes (the first 16 in the low nibbles, the next 16 in the high ones) ->
    (..., 32) codes in order."""
    return np.concatenate([qs & 15, qs >> 4], axis=-1)


def _q4_0(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = raw[:, :2].copy().view(np.float16).astype(np.float32)[:, 0]
    return _nibbles(raw[:, 2:18]), d, -8 * d  # weight = d * (code - 8)


def _q4_1(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = raw[:, :2].copy().view(np.float16).astype(np.float32)[:, 0]
    m = raw[:, 2:4].copy().view(np.float16).astype(np.float32)[:, 0]
    return _nibbles(raw[:, 4:20]), d, m  # weight = d * code + m


def _q4_k(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A super-block of 256: float16 d and dmin, eight 6-bit scales and mins packed in 12 bytes, 128 bytes of
    codes (each 64 weights: 32 in the low nibbles, 32 in the high); weight = d * sc * code - dmin * m."""
    d = raw[:, 0:2].copy().view(np.float16).astype(np.float32)
    dmin = raw[:, 2:4].copy().view(np.float16).astype(np.float32)
    s = raw[:, 4:16].astype(np.uint16)
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 15) | ((s[:, 0:4] >> 6) << 4)], axis=1)
    m = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    qs = raw[:, 16:144].reshape(-1, 4, 32)
    codes = np.stack([qs & 15, qs >> 4], axis=2).reshape(-1, 8, 32)  # sub-blocks 2c and 2c+1 of each 64
    return codes.reshape(-1, 32), (d * sc).reshape(-1), (-dmin * m).reshape(-1)


READERS = {"Q4_0": (18, _q4_0), "Q4_1": (20, _q4_1), "Q4_K": (144, _q4_k)}  # type -> (block bytes, reader)
FOUR_BIT_TYPES = tuple(READERS)


def four_bit_groups(tensor) -> Groups | None:
    """(codes, scale, min) of one GGUF tensor stored in a 4-bit block type, rows as lmforge holds them; None for
    any other type."""
    kind = tensor.tensor_type.name
    if kind not in READERS:
        return None
    size, read = READERS[kind]
    rows, cols = (int(n) for n in reversed(tensor.shape.tolist()))
    raw = np.asarray(tensor.data, dtype=np.uint8).reshape(-1, size)
    codes, scale, low = read(raw)
    return (torch.from_numpy(np.ascontiguousarray(codes.reshape(rows, cols).astype(np.uint8))),
            torch.from_numpy(np.ascontiguousarray(scale.reshape(rows, cols // GROUP).astype(np.float32))),
            torch.from_numpy(np.ascontiguousarray(low.reshape(rows, cols // GROUP).astype(np.float32))))


def gguf_four_bit_weights(path: str | Path, cfg) -> dict[str, list[tuple[int, Groups]]]:
    """The 4-bit weights of a GGUF file by lmforge parameter name (e.g. 'h.0.attn.qkv.weight'): for each, the
    (first row, groups) of every part stored in 4 bits, rows as on import (llama.cpp's rotary order undone; q, k
    and v one after another). A part in another type (a Q4_K_M file's Q6_K values) is left out."""
    meta, tensors = read_gguf(Path(path))
    family = GGUF_FAMILIES[meta.get("general.architecture")]
    found = {}
    for pair in family.gguf_pairs(cfg):
        if pair.kind not in (COPY, CONCAT, ROPE_CONCAT) or not all(n in tensors for n in pair.theirs):
            continue
        start, parts = 0, []
        for i, name in enumerate(pair.theirs):
            groups = four_bit_groups(tensors[name])
            rows = int(tensors[name].shape[-1])
            if groups is not None and pair.kind == ROPE_CONCAT and i < 2:  # q and k back to rotate-half order
                groups = tuple(rope_order(t, (cfg.n_head, cfg.n_kv_head)[i], False) for t in groups)
            if groups is not None:
                parts.append((start, groups))
            start += rows
        if parts:
            found[pair.ours] = parts
    return found
