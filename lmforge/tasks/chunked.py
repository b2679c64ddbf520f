"""Cross-entropy of a language-model head computed a block of rows at a time, never holding the full logits.

The plain loss, `F.cross_entropy(lm_head(h).float(), targets)`, keeps the (tokens x vocab) logits, their float32
copy and the float32 log-softmax for backward: at GPT-2's 16 x 1024 tokens and 50,304 words that is 1.6 GB in
bfloat16 plus 2 x 3.3 GB in float32. Here each block of rows makes its logits, its loss and, when gradients are
wanted, the gradients of the hidden states and of the head weight at once (d loss / d logits = softmax - target);
backward only scales them. The same products as the plain loss (forward, input and weight gradient), so the same
FLOPs; what is saved is memory and the passes over the float32 copies.
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
    """The mean loss over the rows whose target is not IGNORE_INDEX; with want_grads its gradients too."""
    rows, vocab = hidden.size(0), weight.size(0)
    valid = targets != IGNORE_INDEX
    count = valid.sum().clamp(min=1).to(torch.float32)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if want_grads else None
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_grads else None
    step = _block_rows(vocab, block_elements)
    for start in range(0, rows, step):
        h, t, keep = hidden[start:start + step], targets[start:start + step], valid[start:start + step]
        logits = matmul_nt(h, weight).float()
        log_z = torch.logsumexp(logits, dim=-1)
        safe = t.clamp(min=0)
        target_logit = logits.gather(1, safe[:, None]).squeeze(1)
        loss = log_z - target_logit  # -log p(target)
        if smoothing:
            loss = (1 - smoothing) * loss + smoothing * (log_z - logits.mean(-1))
        total += torch.where(keep, loss, 0.0).sum()
        if not want_grads:
            continue
        # d loss / d logits = softmax - ((1 - s) one-hot + s / V), per valid row, over the valid count
        grad = logits.sub_(log_z[:, None]).exp_()
        if smoothing:
            grad.sub_(smoothing / vocab)
        grad.scatter_add_(1, safe[:, None], torch.full((h.size(0), 1), -(1 - smoothing), device=grad.device))
        grad.mul_((keep.float() / count)[:, None])
        grad = grad.to(hidden.dtype)
        grad_hidden[start:start + step] = matmul_nt(grad, weight.t())
        grad_weight += matmul_nt(grad.t(), h.t()).float()
    return total / count, grad_hidden, grad_weight


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                          label_smoothing: float = 0.0, block_elements: int = BLOCK_ELEMENTS) -> torch.Tensor:
    """F.cross_entropy(hidden @ weight.T, targets, label_smoothing=..., ignore_index=-100) for hidden (N, C),
    weight (V, C), targets (N,), a block of rows at a time; under autocast the products run in its dtype."""
    if not torch.is_grad_enabled() or not (hidden.requires_grad or weight.requires_grad):
        dtype = _compute_dtype(hidden, weight)
        with torch.autocast(hidden.device.type, enabled=False):
            return _blocks(hidden.to(dtype), weight.to(dtype), targets, label_smoothing, block_elements, False)[0]
    return _ChunkedCrossEntropy.apply(hidden, weight, targets, float(label_smoothing), int(block_elements))


def plain_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """The same loss the plain way (full logits, a float32 copy): the reference the chunked one is tested against."""
    return F.cross_entropy(F.linear(hidden, weight).float(), targets, label_smoothing=label_smoothing,
                           ignore_index=IGNORE_INDEX)
