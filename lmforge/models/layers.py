"""Building blocks shared by every Transformer in lmforge: attention (with KV cache), MLPs, norms, RoPE."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .attend import attend

if TYPE_CHECKING:  # annotations only: config.py reads the family registry in models/
    from ..config import ModelConfig


class KVCache:
    """Keys and values of past positions for one layer, preallocated to `max_len`.

    With `static` set to (column (1,) or (B,) long, mask (B, 1, 1, max_len) additive) a one-token step writes at the
    device-side column (one for all rows, or one per row) and attends over all `max_len` columns under the mask:
    fixed shapes, no host value read, so the step can be captured once as a CUDA graph (infer/static.py,
    infer/slots.py). Otherwise the filled prefix grows by `length`."""

    def __init__(self, batch: int, n_kv_head: int, max_len: int, head_dim: int, dtype, device):
        self.k = torch.zeros(batch, n_kv_head, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.length = 0
        self.static: tuple[torch.Tensor, torch.Tensor] | None = None

    def widen(self, size: int, keep: int) -> None:
        """Room for at least `size` positions: new, wider buffers holding the first `keep` columns (the rest zero)."""
        if size <= self.k.size(2):
            return
        for name in ("k", "v"):
            old = getattr(self, name)
            new = old.new_zeros(*old.shape[:2], size, old.size(3))
            new[:, :, :keep] = old[:, :, :keep]
            setattr(self, name, new)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.static is not None and k.size(2) == 1:
            column = self.static[0]
            if column.numel() == 1:  # every row's new token at the same column
                self.k.index_copy_(2, column, k)
                self.v.index_copy_(2, column, v)
            else:  # a column per row (the server's slots, infer/slots.py)
                index = column.view(-1, 1, 1, 1).expand(k.size(0), k.size(1), 1, k.size(3))
                self.k.scatter_(2, index, k)
                self.v.scatter_(2, index, v)
            return self.k, self.v
        end = self.length + k.size(2)
        if end > self.k.size(2):
            raise ValueError(f"KV cache full: {end} positions > capacity {self.k.size(2)}")
        # narrow + copy_: fewer tensor ops per decoding step than slice assignment
        self.k.narrow(2, self.length, k.size(2)).copy_(k)
        self.v.narrow(2, self.length, v.size(2)).copy_(v)
        self.length = end
        return self.k.narrow(2, 0, end), self.v.narrow(2, 0, end)


def make_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=torch.float32, device="cpu") -> list[KVCache]:
    """One empty KVCache per layer of a model built from `cfg`."""
    return [KVCache(batch, cfg.kv_heads_at(i), max_len, cfg.head_dim, dtype, device) for i in range(cfg.n_layer)]


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (rotate-half convention), cos/sin tables for `max_len` positions."""

    def __init__(self, head_dim: int, max_len: int, theta: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # positions: (T,) or (B, T) -> tables broadcastable to (B, heads, T, head_dim)
        cos, sin = self.cos[positions], self.sin[positions]
        if positions.dim() == 2:
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return cos, sin


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.size(-1) // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


def document_mask(segments: torch.Tensor) -> torch.Tensor:
    """The (B, 1, T, T) causal mask of packed rows: a position sees earlier positions of its own document only
    (`segments` (B, T) numbers each row's documents)."""
    T = segments.size(-1)
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    return (causal & (segments[:, :, None] == segments[:, None, :]))[:, None]


def attention_mask(q_len: int, k_len: int, causal: bool, pad_mask: torch.Tensor | None, device) -> torch.Tensor | None:
    """Boolean mask (True = may attend) of shape (B|1, 1, q_len, k_len), or None when SDPA needs none.

    Queries are the last `q_len` of `k_len` positions. A query always sees itself, so rows of padding
    never become all-masked (which would give NaN).
    """
    if pad_mask is None and (not causal or q_len == 1 or q_len == k_len):
        return None  # no mask, or SDPA's own is_causal
    if q_len == 1 and pad_mask.size(-1) == k_len:  # one decoding step: the padding, and the query sees itself
        allowed = pad_mask[:, None, None, :].bool().clone()
        allowed[..., -1] = True
        return allowed
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    k_pos = torch.arange(k_len, device=device)[None, :]
    allowed = (k_pos <= q_pos) if causal else torch.ones(q_len, k_len, dtype=torch.bool, device=device)
    allowed = allowed[None, None]
    if pad_mask is not None:
        allowed = allowed & pad_mask[:, None, None, :].bool()
        allowed = allowed | (k_pos == q_pos)[None, None]
    return allowed


class Attention(nn.Module):
    """Multi-head (or grouped-query) attention on F.scaled_dot_product_attention; block `layer`'s head count."""

    def __init__(self, cfg: ModelConfig, layer: int = 0):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.heads_at(layer), cfg.kv_heads_at(layer), cfg.head_dim
        self.qkv = nn.Linear(cfg.n_embd, (self.n_head + 2 * self.n_kv_head) * cfg.head_dim, bias=cfg.qkv_bias)
        self.proj = nn.Linear(self.n_head * cfg.head_dim, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout

    def _split_heads(self, qkv: torch.Tensor, B: int, T: int, rope=None):
        """q, k, v as (B, heads, T, head_dim), q and k rotated when `rope` is given.

        On a GPU the last dimension is split first: in backward the three gradients then join along it in one
        cat (2 ms of a 44 ms GPT-2 step less on an H200 than splitting after the transpose, which adds a strided
        cat and a copy). On a CPU splitting after the transpose trains ~4% faster (6 x 384, fp32 and bf16), and
        q and k, adjacent there, are rotated in one pass (a decoding step's rotation 25-35 -> 18 us a layer)."""
        sizes = (self.n_head, self.n_kv_head, self.n_kv_head)
        if qkv.device.type == "cpu":
            heads = qkv.view(B, T, sum(sizes), self.head_dim).transpose(1, 2)
            if rope is None:
                return heads.split(list(sizes), dim=1)
            rotated = apply_rotary(heads[:, :self.n_head + self.n_kv_head], *rope)
            return (*rotated.split(sizes[:2], dim=1), heads[:, self.n_head + self.n_kv_head:])
        parts = qkv.split([heads * self.head_dim for heads in sizes], dim=-1)
        q, k, v = (part.view(B, T, heads, self.head_dim).transpose(1, 2) for part, heads in zip(parts, sizes))
        return (q, k, v) if rope is None else (apply_rotary(q, *rope), apply_rotary(k, *rope), v)

    def forward(self, x, *, causal: bool, pad_mask=None, cache: KVCache | None = None, rope=None,
                return_weights: bool = False, mask=None):
        """`mask`: a ready (B, 1, T, T) boolean mask (True = may attend), e.g. packed documents' block-diagonal one;
        it replaces the one `causal` and `pad_mask` would make."""
        B, T, _ = x.shape
        q, k, v = self._split_heads(self.qkv(x), B, T, rope)
        if cache is not None:
            k, v = cache.append(k, v)
        k_len = k.size(2)
        if mask is None and cache is not None and cache.static is not None and T == 1:  # fixed-shape step: the cache's own mask
            mask = cache.static[1]
        elif mask is None:
            mask = attention_mask(T, k_len, causal, pad_mask, x.device)
        if self.n_kv_head != self.n_head:
            repeat = self.n_head // self.n_kv_head
            if T == 1 and not return_weights:  # a decoding step: each group's queries attend as one row block
                return self.proj(self._grouped_step(q, k, v, mask, B, repeat))
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        if return_weights:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            if mask is None and causal and T > 1:
                mask = torch.ones(T, k_len, dtype=torch.bool, device=x.device).tril(k_len - T)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = scores.softmax(-1)
            y = weights @ v
        else:
            weights = None
            y = attend(
                q, k, v, mask=mask, is_causal=causal and mask is None and 1 < T == k_len,
                dropout_p=self.dropout if self.training else 0.0)
        y = self.proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))
        return (y, weights) if return_weights else y

    def _grouped_step(self, q, k, v, mask, B: int, repeat: int) -> torch.Tensor:
        """Grouped-query attention of one query per row without copying keys and values per head: the `repeat`
        query heads that share a key head are that head's `repeat` query rows (one mask row serves them all,
        as there is no causal order among them). The same products as repeat_interleave; (B, 1, n_embd).
        SDPA even in bf16 on a CPU: for a few query rows its flash kernel beats `attend`'s written-out products."""
        y = F.scaled_dot_product_attention(q.reshape(B, self.n_kv_head, repeat, self.head_dim), k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return y.reshape(B, 1, self.n_head * self.head_dim)


class MLP(nn.Module):
    """Feed-forward block: GELU (GPT-2 / BERT) or SwiGLU (Llama)."""

    def __init__(self, cfg: ModelConfig, exact_gelu: bool = False, layer: int = 0):
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        width = cfg.intermediate_at(layer)
        if self.swiglu:
            self.gate = nn.Linear(cfg.n_embd, width, bias=cfg.bias)
        self.up = nn.Linear(cfg.n_embd, width, bias=cfg.bias)
        self.down = nn.Linear(width, cfg.n_embd, bias=cfg.bias)
        self.approximate = "none" if exact_gelu else "tanh"

    def forward(self, x):
        if self.swiglu:
            return self.down(F.silu(self.gate(x)) * self.up(x))
        return self.down(F.gelu(self.up(x), approximate=self.approximate))


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)


def init_weights(model: nn.Module, n_layer: int, std: float = 0.02) -> None:
    """GPT-2 style init: N(0, 0.02) everywhere, output projections scaled by 1/sqrt(2 * n_layer)."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            scale = 1 / math.sqrt(2 * n_layer) if name.endswith(("attn.proj", "mlp.down")) else 1.0
            nn.init.normal_(module.weight, mean=0.0, std=std * scale)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            if module.weight is not None:
                nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
