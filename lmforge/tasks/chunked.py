"""Cross-entropy of a language-model head computed a block of rows at a time, never holding the full logits.

The plain loss, `F.cross_entropy(lm_head(h).float(), targets)`, keeps the (tokens x vocab) logits, their float32
copy and the float32 log-softmax for backward: at GPT-2's 16 x 1024 tokens and 50,304 words that is 1.6 GB in
bfloat16 plus 2 x 3.3 GB in float32, and makes about ten passes over them. Here each block of rows makes its
logits, its loss and, when gradients are wanted, the gradients of the hidden states and of the head weight at
once; backward only scales them. The same products as the plain loss (forward, input and weight gradient), so
the same FLOPs; what is saved is memory and most of the passes over the float32 copies.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..train.kernels import matmul_nt  # oneDNN for float32 CPU products (2x MKL on AMD)

# logits held per block (elements): 2**27 float32 is 512 MiB, about 2,600 rows of a 50k vocabulary
BLOCK_ELEMENTS = 1 << 27
IGNORE_INDEX = -100


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(hidden.device.type):
        return torch.get_autocast_dtype(hidden.device.type)
    return torch.promote_types(hidden.dtype, weight.dtype)


def _block_rows(vocab: int, block_elements: int) -> int:
    return max(1, block_elements // max(vocab, 1))


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, smoothing: float, block_elements: int):
        dtype = _compute_dtype(hidden, weight)
        with torch.autocast(hidden.device.type, enabled=False):
            total, grad_hidden, grad_weight = _blocks(hidden.to(dtype), weight.to(dtype), targets, smoothing,
                                                      block_elements, want_grads=True)
        ctx.save_for_backward(grad_hidden.to(hidden.dtype), grad_weight.to(weight.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_output.to(grad_hidden.dtype), grad_weight * grad_output.to(grad_weight.dtype), \
            None, None, None


def _blocks(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, smoothing: float,
            block_elements: int, want_grads: bool):
    """The mean loss over the rows whose target is not IGNORE_INDEX; with want_grads its gradients too.

    d loss / d logits = softmax - (1 - s) one-hot - s / V (s: label smoothing), over the counted rows. Only the
    softmax is made at block size (in the products' dtype, as the plain loss's gradient reaches them); the
    one-hot and uniform parts touch one weight row per target and are applied exactly, in float32, to the small
    hidden-state and weight gradients. Three passes over the block besides its products."""
    rows, vocab = hidden.size(0), weight.size(0)
    wide = torch.promote_types(hidden.dtype, torch.float32)
    valid = targets != IGNORE_INDEX
    count = valid.sum().clamp(min=1).to(wide)
    scale = valid.to(wide) / count  # each counted row's share of the mean
    total = torch.zeros((), dtype=wide, device=hidden.device)
    grad_hidden = torch.empty(hidden.shape, dtype=wide, device=hidden.device) if want_grads else None
    grad_weight = torch.zeros(weight.shape, dtype=wide, device=weight.device) if want_grads else None
    # the softmax part of the weight gradient, summed unscaled over blocks (one fused add a block) and divided once
    summed = torch.zeros(weight.shape, dtype=wide, device=weight.device) if want_grads else None
    uniform = weight.to(wide).sum(0) * (smoothing / vocab) if want_grads and smoothing else None
    step = _block_rows(vocab, block_elements)
    for start in range(0, rows, step):
        h, t, share = hidden[start:start + step], targets[start:start + step].clamp(min=0), scale[start:start + step]
        log_probs = torch.log_softmax(matmul_nt(h, weight), dim=-1, dtype=wide)
        loss = -log_probs.gather(1, t[:, None]).squeeze(1)
        if smoothing:
            loss = (1 - smoothing) * loss - smoothing * log_probs.mean(-1)
        total += (loss * share).sum()
        if not want_grads:
            continue
        probs = torch.exp(log_probs, out=torch.empty(log_probs.shape, dtype=hidden.dtype, device=hidden.device))
        del log_probs
        kept = h * (share > 0)[:, None].to(h.dtype)  # ignored rows out (exact; no host read to skip it)
        summed += matmul_nt(probs.t(), kept.t())
        rows_grad = matmul_nt(probs, weight.t()).to(wide)
        rows_grad -= (1 - smoothing) * weight.index_select(0, t).to(wide)
        if uniform is not None:
            rows_grad -= uniform
        grad_hidden[start:start + step] = rows_grad * share[:, None]
        h_share = h.to(wide) * share[:, None]
        grad_weight.index_add_(0, t, h_share, alpha=-(1 - smoothing))
        if smoothing:
            grad_weight -= (smoothing / vocab) * h_share.sum(0)
    if want_grads:
        grad_weight += summed.div_(count)
    return total, grad_hidden, grad_weight


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                          label_smoothing: float = 0.0, block_elements: int = BLOCK_ELEMENTS) -> torch.Tensor:
    """F.cross_entropy(hidden @ weight.T, targets, label_smoothing=..., ignore_index=-100) for hidden (N, C),
    weight (V, C), targets (N,), a block of rows at a time; under autocast the products run in its dtype."""
    if not torch.is_grad_enabled() or not (hidden.requires_grad or weight.requires_grad):
        dtype = _compute_dtype(hidden, weight)
        with torch.autocast(hidden.device.type, enabled=False):
            return _blocks(hidden.to(dtype), weight.to(dtype), targets, label_smoothing, block_elements, False)[0]
    return _ChunkedCrossEntropy.apply(hidden, weight, targets, float(label_smoothing), int(block_elements))


def float32_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """F.cross_entropy(logits.float(), targets, ...) without the float32 copy of the logits as a tensor of its own:
    the log-softmax reads them in their dtype and writes float32 (one kernel on a GPU; its backward writes the
    gradient back in their dtype), about half the passes over (tokens x vocab) of the copy-first way."""
    if label_smoothing or logits.dtype == torch.float64:
        return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), targets,
                               label_smoothing=label_smoothing, ignore_index=IGNORE_INDEX)
    return F.nll_loss(torch.log_softmax(logits, dim=-1, dtype=torch.float32), targets, ignore_index=IGNORE_INDEX)


def plain_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """The same loss the plain way (full logits, a float32 copy): the reference the chunked one is tested against."""
    logits = F.linear(hidden, weight)
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), targets,
                           label_smoothing=label_smoothing, ignore_index=IGNORE_INDEX)
