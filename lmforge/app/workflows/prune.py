"""Prune and fine-tune: a model pruned (compress/prune.py), its units ranked on data, fine-tuned and measured
before and after.

    lm, report = prune(LM.from_pretrained("runs/x/final"), "magnitude", sparsity=0.5, data="text.txt",
                       finetune_steps=300)
    lm.save("pruned")
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from ...compress import sparse
from ...compress.prune import check_request, remove_units, sparse_model
from ...config import LABELED_OBJECTIVES, build_config
from ...tasks import make_task
from ...tasks.classify import head_kind


def _task(lm, data, work: Path):
    """The model's own objective (next token, masked LM, its classifier's labels) on `data`."""

    raw = lm.config.model_dump()
    objective = head_kind(lm.meta) if lm.config.model.labels else None
    raw["train"]["objective"] = objective
    if objective in LABELED_OBJECTIVES:
        raw["data"]["train"] = str(data)
    else:
        raw["data"]["paths"] = [str(data)]
    config = build_config(raw, "prune --data")
    task, probed = make_task(lm.bundle, config.train, config.data, work)
    lm.meta = probed.meta  # as before the split: the scored data's card (and a labeled head's columns) recorded
    return task, objective


def _evaluate(task, model, batch_size: int) -> dict:
    if not task.can_evaluate:
        return {}
    return task.evaluate(model, 20, batch_size, next(model.parameters()).device)


def prune(lm, method: str = "magnitude", *, sparsity: float | None = None, amount=None, data=None,
          finetune_steps: int = 0, importance: str | None = None, batch_size: int = 16, lr: float = 3e-4,
          score_batches: int = 8, progress: bool = True, log=print):
    """Prune `lm` in place (its model, config and meta) and return (lm, report). `data` feeds the gradient
    importance, the fine-tune and the before/after validation metrics."""
    check_request(lm.bundle, method, sparsity, amount, data, finetune_steps, importance)
    if importance is None and method != "magnitude":
        importance = "gradient" if data is not None else "weight"
    report: dict = {"method": method}
    with tempfile.TemporaryDirectory(prefix="lmforge-prune-") as scratch:
        task, objective = _task(lm, data, Path(scratch)) if data is not None else (None, None)
        if task is not None:
            report["dense"] = _evaluate(task, lm.model, batch_size)
        parameters = sum(p.numel() for p in lm.model.parameters())
        if method == "magnitude":
            counts = sparse.magnitude_prune(lm.model, sparsity)
            sparse_model(lm.model)
            spec = {"kind": "prune", "method": "magnitude", "scope": "global, the blocks' Linear weights",
                    "sparsity": sparsity, "zeros": counts["zeros"], "weights": counts["weights"]}
            log(f"pruned {counts['zeros']:,} of {counts['weights']:,} block weights "
                f"({counts['sparsity']:.1%}) by global magnitude")
        else:
            spec, pruned = remove_units(lm.bundle, method, amount, importance, task, batch_size, score_batches, log)
            lm.adopt(pruned)
        spec["parameters_before"], spec["parameters_after"] = parameters, sum(p.numel() for p in lm.model.parameters())
        if task is not None:
            report["pruned"] = _evaluate(task, lm.model, batch_size)
        if finetune_steps:
            masks = sparse.zero_masks(lm.model) if method == "magnitude" else None
            lm.fit(data, objective=objective, max_steps=finetune_steps, batch_size=batch_size, lr=lr,
                   min_lr=lr / 10, warmup_steps=min(100, finetune_steps // 10), eval_every=0, save_every=0,
                   progress=progress)
            if masks is not None:
                sparse.apply_zeros(lm.model, masks)  # a guard: the gradient masks already kept them at zero
            report["finetuned"] = _evaluate(task, lm.model, batch_size)
            spec["finetune_steps"], spec["finetune_lr"] = finetune_steps, lr
    spec["metrics"] = {stage: values for stage, values in report.items() if isinstance(values, dict)}
    lm.meta["compression"] = [*(lm.meta.get("compression") or []), spec]
    report["spec"] = spec
    lm.model.eval()
    return lm, report
