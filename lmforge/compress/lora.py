"""LoRA: a trainable low-rank update B @ A beside each chosen nn.Linear's frozen weight (Hu et al., 2021).

A LoRA model directory is self-contained: model.safetensors holds the (frozen) base weights under their usual
names plus each adapter's `lora_a` / `lora_b`, and config.json's "compression" list carries one step
{"kind": "lora", "rank", "alpha", "dropout", "targets", "modules"}, which `restore` replays on load.
`merge_lora` folds the adapters into plain weights, so the result is an ordinary model of the same shape.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..models.contract import transformer_blocks
from . import find_step as compression_step

# target names a user writes -> layer names inside each Transformer block (models/layers.py's Attention and MLP)
TARGET_GROUPS = {"qkv": ("attn.qkv",), "proj": ("attn.proj",), "mlp": ("mlp.up", "mlp.down", "mlp.gate")}
ADAPTER_NAMES = ("lora_a", "lora_b")


class LoRALinear(nn.Linear):
    """An nn.Linear whose weight and bias stay frozen, plus a trainable update (alpha / rank) * B @ A.

    B starts at zero, so a fresh adapter changes nothing. It keeps the base's parameter names (weight, bias),
    so a LoRA state dict is the plain one plus lora_a (rank x in) and lora_b (out x rank) per layer."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                 generator: torch.Generator | None = None):
        nn.Module.__init__(self)  # not nn.Linear.__init__: the base's tensors are reused, not reallocated
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.rank, self.alpha, self.scaling = rank, float(alpha), float(alpha) / rank
        kind = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_a = nn.Parameter(torch.empty(rank, self.in_features, **kind))
        self.lora_b = nn.Parameter(torch.zeros(self.out_features, rank, **kind))
        # A as nn.Linear initializes its weight (uniform within 1/sqrt(in)); drawn from `generator` so that the
        # same seed gives the same adapters whatever ran before
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5), generator=generator)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.merged = False

    def delta(self) -> torch.Tensor:
        """The update the adapters add to the weight: (alpha / rank) * B @ A."""
        return (self.lora_b @ self.lora_a) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if self.merged:
            return out
        return out + F.linear(F.linear(self.dropout(x), self.lora_a), self.lora_b) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the weight in place (faster inference); `unmerge` takes it out again."""
        if not self.merged:
            self.weight.add_(self.delta().to(self.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo `merge`: the weight is the frozen base again and the adapters apply on the side."""
        if self.merged:
            self.weight.sub_(self.delta().to(self.weight.dtype))
            self.merged = False

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.merged:  # a saved LoRA layer always holds the base weight: loading adds the adapters back
            destination[prefix + "weight"] = (self.weight - self.delta().to(self.weight.dtype)).detach()

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self.merged = False

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha:g}"


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """The model's LoRA layers by name."""
    return {name: module for name, module in model.named_modules() if isinstance(module, LoRALinear)}


def _block_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Linear layers inside the Transformer blocks (model.h), by full name."""
    return {name: module for name, module in model.named_modules()
            if name.startswith("h.") and isinstance(module, nn.Linear)}


def _layer_name(full: str) -> str:
    return full.split(".", 2)[2]  # 'h.3.attn.qkv' -> 'attn.qkv'


def check_lora_model(model: nn.Module) -> None:
    """LoRA needs Transformer blocks (gpt, llama, bert); the baselines (RNNs, TextCNN) have none to adapt."""
    if transformer_blocks(model) is None or not _block_linears(model):
        arch = model.config.arch
        raise ValueError(f"train.lora applies to the Transformer archs (gpt, llama, bert); this model is '{arch}', "
                         "which has no attention or MLP layers to adapt: unset train.lora.rank to train it fully")


def resolve_targets(model: nn.Module, targets: list[str]) -> list[str]:
    """The full names of the block linears `targets` select; a target that selects nothing is an error."""
    check_lora_model(model)
    linears = _block_linears(model)
    layer_names = sorted({_layer_name(name) for name in linears})
    if isinstance(targets, str) or not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"train.lora.targets must be a non-empty list of names, got {targets!r}; "
                         f"e.g. [\"qkv\", \"proj\", \"mlp\"]")
    chosen: set[str] = set()
    for target in targets:
        wanted = TARGET_GROUPS.get(target, (target,))
        found = {name for name in linears
                 if _layer_name(name) in wanted or _layer_name(name).split(".")[-1] == target}
        if not found:
            arch = getattr(getattr(model, "config", None), "arch", type(model).__name__)
            raise ValueError(f"train.lora.targets: {target!r} matches no linear layer of this {arch} model; use "
                             f"{', '.join(TARGET_GROUPS)} or one of its layer names: {', '.join(layer_names)}")
        chosen |= found
    return [name for name in linears if name in chosen]  # in model order


def apply_lora(model: nn.Module, rank: int, alpha: float = 16.0, dropout: float = 0.0,
               targets: list[str] = ("qkv", "proj", "mlp"), seed: int = 0,
               modules: list[str] | None = None) -> list[str]:
    """Wrap the chosen linears of `model` in LoRALinear (in place); returns their names.

    `modules` (exact names, as a saved model lists them) takes precedence over `targets`. A model that already
    has adapters keeps them when they match (rank, alpha, the same layers), else it is an error."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"train.lora.rank must be a whole number >= 1 (e.g. 8), got {rank!r}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"train.lora.alpha must be a number > 0 (e.g. 16), got {alpha!r}")
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
        raise ValueError(f"train.lora.dropout must be in [0, 1), got {dropout!r}")
    check_lora_model(model)
    existing = lora_modules(model)
    names = list(modules) if modules is not None else resolve_targets(model, targets)
    if existing:
        same = sorted(existing) == sorted(names) and all(m.rank == rank and m.alpha == float(alpha)
                                                         for m in existing.values())
        if not same:
            first = next(iter(existing.values()))
            raise ValueError(f"this model already has LoRA adapters (rank {first.rank}, alpha {first.alpha:g}, on "
                             f"{len(existing)} layers) that differ from train.lora (rank {rank}, alpha {alpha:g}, "
                             f"{len(names)} layers): use the same train.lora, or merge them first "
                             "(lmforge lora merge SRC DST) and fine-tune the merged model")
        for module in existing.values():
            module.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        return names
    linears = dict(model.named_modules())
    bad = [name for name in names if not isinstance(linears.get(name), nn.Linear)]
    if bad:
        raise ValueError(f"LoRA layers {bad[:3]} are not linear layers of this model")
    generator = torch.Generator().manual_seed(seed)
    for name in names:
        parent_name, _, leaf = name.rpartition(".")
        setattr(linears[parent_name], leaf, LoRALinear(linears[name], rank, alpha, dropout, generator))
    return names


def mark_trainable(model: nn.Module, also: tuple[str, ...] = ()) -> tuple[int, int]:
    """Freeze every parameter but the adapters (and those whose names start with `also`, e.g. a new head);
    returns (trainable, total) parameter counts."""
    unique = {}
    for name, param in model.named_parameters():
        param.requires_grad_(name.rsplit(".", 1)[-1] in ADAPTER_NAMES or name.startswith(also))
        unique[id(param)] = param
    trainable = sum(p.numel() for p in unique.values() if p.requires_grad)
    return trainable, sum(p.numel() for p in unique.values())


@torch.no_grad()
def merge_lora(model: nn.Module) -> int:
    """Replace every LoRALinear by a plain nn.Linear holding weight + (alpha / rank) * B @ A, and make every
    parameter trainable again (a plain model fine-tunes whole); returns how many layers were merged."""
    found = lora_modules(model)
    named = dict(model.named_modules())
    for name, module in found.items():
        plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                          device=module.weight.device, dtype=module.weight.dtype)
        merged = module.weight if module.merged else module.weight + module.delta().to(module.weight.dtype)
        plain.weight.copy_(merged)
        if module.bias is not None:
            plain.bias.copy_(module.bias)
        parent_name, _, leaf = name.rpartition(".")
        setattr(named[parent_name] if parent_name else model, leaf, plain)
    for param in model.parameters():
        param.requires_grad_(True)
    return len(found)


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with every LoRA layer's update folded into its weight and no adapter tensors:
    what a plain model of the same shape would hold (for exports that know no LoRA)."""
    state = model.state_dict()
    for name, module in lora_modules(model).items():
        # state_dict() gives the base weight even for a merged layer (see LoRALinear._save_to_state_dict)
        state[f"{name}.weight"] = state[f"{name}.weight"] + module.delta().to(module.weight.dtype)
        for adapter in ADAPTER_NAMES:
            state.pop(f"{name}.{adapter}")
    return state


def lora_step(modules: list[str], rank: int, alpha: float, dropout: float, targets: list[str]) -> dict:
    """The "compression" entry that describes these adapters in config.json."""
    return {"kind": "lora", "rank": rank, "alpha": float(alpha), "dropout": float(dropout), "targets": list(targets),
            "modules": list(modules)}


def find_step(meta: dict) -> dict | None:
    """The LoRA step of a config.json's "compression" list, or None."""
    return compression_step(meta, "lora")


def restore(model: nn.Module, config, spec: dict, path) -> nn.Module:
    """compress.restore's hook: put the LoRA layers a saved model lists back, so its weights load strictly."""
    try:
        rank, alpha = spec["rank"], spec.get("alpha", 16.0)
        modules = spec.get("modules")
        if modules is not None and (not isinstance(modules, list) or not all(isinstance(m, str) for m in modules)):
            raise ValueError(f"'modules' must be a list of layer names, got {modules!r}")
        apply_lora(model, rank, alpha, spec.get("dropout", 0.0), spec.get("targets", list(TARGET_GROUPS)),
                   modules=modules)
    except (KeyError, ValueError, TypeError) as error:
        detail = f"no {error}" if isinstance(error, KeyError) else str(error)
        raise ValueError(f"'{path / 'config.json'}': its LoRA step {spec!r} cannot be applied ({detail})") from None
    return model
