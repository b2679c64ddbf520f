"""The NaN/Inf guard without a host sync per step, and batches prefetched into pinned memory.

Reading a step's loss and gradient norm back to decide whether to skip it stalls a GPU each step: the host waits
for the backward pass to finish before it may queue the next step. `DeferredGuard` decides on the device instead:
the fused AdamW kernel is handed the verdict as its `found_inf` flag (the hook torch's GradScaler uses) and leaves
weights, moments and step count untouched for a bad step; the window sums add the step only when it was good.
The verdicts are read back in one transfer at the next log, evaluation or checkpoint step, where the warning,
the `skipped_step` record and the abort after train.max_bad_steps in a row happen as with the per-step check.
The tradeoff: an abort comes up to train.log_every steps later (those steps' bad updates are still skipped).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Verdict:
    step: int  # 1-based, as logged
    ok: bool
    loss_ok: bool
    tokens: int


@dataclass
class DeferredGuard:
    """Skips bad steps on the device; `resolve()` returns the verdicts of the steps since the last call."""

    pending: list = field(default_factory=list)

    def step(self, optimizer: torch.optim.Optimizer, step_loss: torch.Tensor, grad_norm: torch.Tensor,
             step: int, tokens: int) -> torch.Tensor:
        """Run the (fused) optimizer step unless the loss or gradient norm is NaN/Inf; returns the device flag."""
        loss_ok = torch.isfinite(step_loss)
        ok = loss_ok & torch.isfinite(grad_norm.to(step_loss.device))
        optimizer.found_inf = (~ok).float()
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
        self.pending.append((step, ok, loss_ok, tokens))
        return ok

    def resolve(self) -> list[Verdict]:
        """The verdicts since the last call (one device-to-host transfer)."""
        if not self.pending:
            return []
        flags = torch.stack([torch.stack([ok, loss_ok]) for _, ok, loss_ok, _ in self.pending]).tolist()
        verdicts = [Verdict(step, ok, loss_ok, tokens)
                    for (step, _, _, tokens), (ok, loss_ok) in zip(self.pending, flags)]
        self.pending = []
        return verdicts


def deferred_guard_usable(cfg, device: torch.device, optimizer: torch.optim.Optimizer, scaler) -> bool:
    """train.nan_check=log (or auto on CUDA) with one process, a fused optimizer and no float16 scaler."""
    fused = all(group.get("fused") for group in optimizer.param_groups)
    mode = cfg.nan_check if cfg.nan_check != "auto" else ("log" if device.type == "cuda" else "step")
    return mode == "log" and cfg.parallel == "none" and fused and scaler is None


class Prefetcher:
    """The task's micro-batches in training order, each made and (on a GPU) pinned and copied without blocking
    one micro-step ahead, so the copy overlaps the running step. Batches stay a pure function of (step, micro).
    Each comes with its token count, taken from the batch while it is still on the host: counting a GPU tensor
    (a classifier's padding, a chat set's reply tokens) would make the host wait for the device every step."""

    def __init__(self, task, cfg, world: int, rank: int, device: torch.device):
        self.task, self.cfg, self.world, self.rank, self.device = task, cfg, world, rank, device
        self.pin = device.type == "cuda"
        self.next_key, self.ready = None, None

    def _load(self, step: int, k: int) -> tuple[dict, int]:
        micro = k * self.world + self.rank  # rank r takes micro-steps r, r+N, ...: N ranks x A = one process x N*A
        batch = self.task.train_batch(step, micro, self.cfg.batch_size)
        tokens = self.task.count_tokens(batch)
        return {name: (self._copy(v) if torch.is_tensor(v) else v) for name, v in batch.items()}, tokens

    def _copy(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.pin and tensor.device.type == "cpu":
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True)

    def get(self, step: int, k: int) -> tuple[dict, int]:
        """Micro-batch k of `step` on the device and its token count; the next one in order starts loading."""
        batch = self.ready if self.next_key == (step, k) else self._load(step, k)
        following = (step, k + 1) if k + 1 < self.cfg.grad_accum else (step + 1, 0)
        if self.pin and following[0] < self.cfg.max_steps:
            self.next_key, self.ready = following, self._load(*following)
        else:
            self.next_key, self.ready = None, None
        return batch
