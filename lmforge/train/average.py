"""train.ema: an exponential moving average of the weights (Polyak averaging), which is what gets evaluated, kept as
the best and written as final, while the optimizer goes on stepping the raw weights."""
from __future__ import annotations

import contextlib

import torch
from torch import nn

PREFIX = "ema."  # its tensors in a checkpoint's optimizer.safetensors, beside the optimizer's and RNG states


class WeightAverage:
    """shadow <- decay * shadow + (1 - decay) * weights after every optimizer step, over the trainable parameters
    and the floating-point buffers (batch norm's running statistics). The decay starts low and rises to `decay`,
    (1 + n) / (10 + n) after n steps, so the first steps' random weights are soon forgotten."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        tensors = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        tensors += [(name, b) for name, b in model.named_buffers() if b.is_floating_point()]
        self.names = [name for name, _ in tensors]
        self.live = [t for _, t in tensors]
        self.shadow = [t.detach().clone() for t in self.live]

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold the weights after optimizer step `step` (0-based) into the average."""
        decay = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, [t.detach() for t in self.live], 1.0 - decay)

    @contextlib.contextmanager
    @torch.no_grad()
    def applied(self):
        """The model holds the averaged weights inside the block and its own ones again after it."""
        saved = [t.detach().clone() for t in self.live]
        self.keep()
        try:
            yield
        finally:
            torch._foreach_copy_(self.live, saved)

    @torch.no_grad()
    def keep(self) -> None:
        """Leave the averaged weights in the model for good (the end of a run)."""
        torch._foreach_copy_(self.live, self.shadow)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {PREFIX + name: t.detach().contiguous().cpu() for name, t in zip(self.names, self.shadow)}

    @torch.no_grad()
    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """The average saved in a checkpoint; a checkpoint of a run without train.ema is refused by name."""
        missing = [name for name in self.names if PREFIX + name not in tensors]
        if missing:
            raise ValueError(f"the checkpoint holds no weight average for {missing[0]} (it was written with "
                             "train.ema=0): resume it with train.ema=0, or start the run afresh")
        for name, t in zip(self.names, self.shadow):
            t.copy_(tensors[PREFIX + name])
