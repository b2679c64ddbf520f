"""The attention product softmax(q k^T / sqrt(d)) v, choosing the faster kernel for the shape.

On CPU in bfloat16, torch's flash-attention kernel for scaled_dot_product_attention is slow at training shapes:
at 8 x 6 heads x 256 positions x 64 dims its forward and backward take 17 ms, a third of a bf16 training step.
Written out as two batched matrix products and a float32 softmax the same product takes 10 ms (at 128
positions, not causal: 2.8 vs 10.5 ms), as long as the (B, heads, T, T) scores fit comfortably in memory.
float32, longer sequences and GPUs keep SDPA (in float32 the flash kernel is as fast or faster).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# scores held per call by the written-out path (elements); above it SDPA's flash kernel saves the memory
EXPLICIT_MAX_SCORES = 1 << 23


def use_explicit(q: torch.Tensor, k: torch.Tensor, dropout_p: float) -> bool:
    """Whether `attend` writes the product out: CPU, bfloat16/float16, several queries, no attention dropout,
    scores that fit (in float32 the flash kernel is as fast)."""
    return (q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16) and q.size(-2) > 1
            and dropout_p == 0.0
            and q.shape[:-2].numel() * q.size(-2) * k.size(-2) <= EXPLICIT_MAX_SCORES)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
           is_causal: bool = False, dropout_p: float = 0.0) -> torch.Tensor:
    """F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal, dropout_p); `mask` is boolean (True =
    may attend) or additive (added to the scores, as the static decoder's)."""
    if not use_explicit(q, k, dropout_p):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p)
    scores = torch.matmul(q * (1.0 / math.sqrt(q.size(-1))), k.transpose(-2, -1))
    if is_causal:  # SDPA's is_causal: query i sees keys 0..i (square scores)
        scores = scores.masked_fill(
            torch.ones(q.size(-2), k.size(-2), dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
    return torch.matmul(weights, v)
