"""LoRA in a fit (app/fitting.py): adapters put on before the task prepares any data (a bad train.lora writes
nothing), and everything but the adapters (and the classification head) frozen once the task has made its head."""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ..config import LABELED_OBJECTIVES
from . import find_step
from .lora import apply_lora, lora_modules, lora_step, mark_trainable, merge_lora

if TYPE_CHECKING:
    from torch import nn

    from ..bundle import Bundle
    from ..config import TrainConfig

HEAD_PREFIXES = ("classifier.",)  # the labeled tasks' head (models/*.py, tasks/classify.py attach_head)


def _steps_without_lora(meta: dict) -> list:
    return [s for s in meta.get("compression") or [] if not (isinstance(s, dict) and s.get("kind") == "lora")]


def prepare_lora(bundle: Bundle, train: TrainConfig) -> Bundle:
    """Put train.lora's adapters on the bundle's model (in place; kept when it already has the same ones) and
    record them in meta["compression"]; with train.lora unset, adapters a loaded model carries are merged into its
    weights first, so that it fine-tunes as a plain model. Returns the Bundle with the new meta."""
    refuse_quantized(bundle.meta)
    spec = train.lora
    if spec.rank is None:
        return drop_lora(bundle)
    modules = apply_lora(bundle.model, spec.rank, spec.alpha, spec.dropout, spec.targets, seed=train.seed)
    steps = [*_steps_without_lora(bundle.meta), lora_step(modules, spec.rank, spec.alpha, spec.dropout, spec.targets)]
    return replace(bundle, meta={**bundle.meta, "compression": steps})


def refuse_quantized(meta: dict) -> None:
    """A quantized model cannot be trained, with adapters or without: say so before anything is prepared."""
    step = find_step(meta, "quantize")
    if step is not None:
        raise ValueError(f"this model is quantized ({step.get('method')}): its Linear weights are frozen integer "
                         "codes, which training cannot update (and LoRA adapters here sit on floating-point layers "
                         "only). Fine-tune the floating-point original (a GGUF file loads as floating point: "
                         "model.init=FILE.gguf), then quantize the result")


def drop_lora(bundle: Bundle) -> Bundle:
    """Merge the model's adapters into its weights (in place); returns the Bundle whose meta has no LoRA step."""
    if not merge_lora(bundle.model):
        return bundle
    meta, steps = dict(bundle.meta), _steps_without_lora(bundle.meta)
    if steps:
        meta["compression"] = steps
    else:
        meta.pop("compression", None)
    return replace(bundle, meta=meta)


def freeze_for_lora(model: nn.Module, train: TrainConfig) -> dict:
    """Leave only the adapters (and a labeled task's head) trainable; what the model card reports of it."""
    spec = train.lora
    trainable, total = mark_trainable(model, HEAD_PREFIXES if train.objective in LABELED_OBJECTIVES else ())
    layers = len(lora_modules(model))
    return {"lora": f"rank {spec.rank}, alpha {spec.alpha:g}, dropout {spec.dropout:g}, on {layers} layers "
                    f"({', '.join(spec.targets)})",
            "trainable_parameters": f"{trainable:,} of {total:,} ({trainable / total:.2%})"}
