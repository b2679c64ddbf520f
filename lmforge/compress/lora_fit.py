"""LoRA in LM.fit: adapters put on before the task prepares any data (a bad train.lora writes nothing), and
everything but the adapters (and the classification head) frozen once the task has made its head."""
from __future__ import annotations

from ..config import LABELED_OBJECTIVES
from .lora import apply_lora, lora_modules, lora_step, mark_trainable, merge_lora

HEAD_PREFIXES = ("classifier.",)  # the labeled tasks' head (models/*.py, tasks/classify.py attach_head)


def _steps_without_lora(meta: dict) -> list:
    return [s for s in meta.get("compression") or [] if not (isinstance(s, dict) and s.get("kind") == "lora")]


def prepare_lora(lm) -> None:
    """Put train.lora's adapters on lm.model (kept when it already has the same ones) and record them in
    lm.meta["compression"]; with train.lora unset, adapters a loaded model carries are merged into its weights
    first, so that it fine-tunes as a plain model."""
    spec = lm.config.train.lora
    if spec.rank is None:
        drop_lora(lm)
        return
    modules = apply_lora(lm.model, spec.rank, spec.alpha, spec.dropout, spec.targets, seed=lm.config.train.seed)
    lm.meta["compression"] = [*_steps_without_lora(lm.meta),
                              lora_step(modules, spec.rank, spec.alpha, spec.dropout, spec.targets)]


def drop_lora(lm) -> int:
    """Merge lm.model's adapters into its weights and take the LoRA step out of lm.meta; returns how many layers."""
    merged = merge_lora(lm.model)
    if merged:
        steps = _steps_without_lora(lm.meta)
        if steps:
            lm.meta["compression"] = steps
        else:
            lm.meta.pop("compression", None)
    return merged


def freeze_for_lora(lm) -> dict:
    """Leave only the adapters (and a labeled task's head) trainable; what the model card reports of it."""
    spec, objective = lm.config.train.lora, lm.config.train.objective
    trainable, total = mark_trainable(lm.model, HEAD_PREFIXES if objective in LABELED_OBJECTIVES else ())
    layers = len(lora_modules(lm.model))
    return {"lora": f"rank {spec.rank}, alpha {spec.alpha:g}, dropout {spec.dropout:g}, on {layers} layers "
                    f"({', '.join(spec.targets)})",
            "trainable_parameters": f"{trainable:,} of {total:,} ({trainable / total:.2%})"}
