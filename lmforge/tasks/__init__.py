"""Objectives as small objects: batch in, loss and metrics out. The trainer knows none of them.

Every task has: train_batch(step, micro, batch_size) -> dict of tensors (the same step always gives the
same batch, so a resumed run sees the data an uninterrupted one would), loss(model, batch) ->
(loss, metrics), evaluate(model, steps, batch_size, device) -> dict, count_tokens(batch), can_evaluate,
and monitor = (metric name, "min" | "max") for early stopping.

lm.py holds the language-model objectives; classify.py text classification and what the labeled tasks share;
regress.py and multilabel.py a number or a set of tags per text; sft.py instruction tuning on conversations;
distill.py wraps one with a teacher. make_task
picks one.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..data.prepare import prepare_corpus
from ..data.tokens import TokenWindows, build_token_file, open_tokens
from ..models.contract import is_decoder, is_encoder
from .classify import (EMBEDDING_PREFIXES, HEAD_PREFIXES, ClassificationTask, attach_head, layerwise_groups,
                       make_classification_task)
from .lm import EVAL_SEED, CausalLMTask, MaskedLMTask
from .multilabel import MultiLabelTask, make_multilabel_task
from .regress import RegressionTask, make_regression_task
from .sft import SFTTask, make_sft_task

if TYPE_CHECKING:
    from ..bundle import Bundle
    from ..config import DataConfig, TrainConfig

__all__ = ["EMBEDDING_PREFIXES", "EVAL_SEED", "HEAD_PREFIXES", "CausalLMTask", "ClassificationTask", "MaskedLMTask",
           "MultiLabelTask", "RegressionTask", "SFTTask", "attach_head", "layerwise_groups", "make_classification_task",
           "make_multilabel_task", "make_regression_task", "make_sft_task", "make_task"]


def make_task(bundle: Bundle, train: TrainConfig, data: DataConfig, work_dir: Path, progress: bool = False,
              teacher: Bundle | None = None) -> tuple[object, Bundle]:
    """The task for train.objective with its data prepared under `work_dir`, and the Bundle it trains (`bundle`
    with what the task adds: a labeled task's head and labels, the data card and other meta). With
    train.distill_teacher set, that task inside a DistillationTask (distill.py) around the `teacher` Bundle the
    caller loaded."""
    if train.distill_teacher:
        from .distill import make_distillation_task
        if teacher is None:
            raise ValueError("train.distill_teacher is set: hand make_task the teacher's Bundle (load_model_dir)")
        return make_distillation_task(
            bundle, train, lambda score=None: _objective_task(bundle, train, data, work_dir, progress, score),
            teacher, progress, work_dir)
    return _objective_task(bundle, train, data, work_dir, progress)


def _objective_task(bundle: Bundle, train: TrainConfig, data: DataConfig, work_dir: Path, progress: bool = False,
                    score=None):
    """make_task for the objective itself (no teacher): its task and the Bundle it trains. `score(rows)`, for
    classify only, sees the training rows before they are encoded (a teacher scoring them)."""
    objective, config = train.objective, bundle.config
    if objective in ("clm", "mlm"):
        needs, kind = (is_decoder, "a decoder") if objective == "clm" else (is_encoder, "an encoder (arch 'bert')")
        if not needs(bundle.model):
            raise ValueError(f"objective '{objective}' needs {kind}; this model is '{config.arch}'")
        paths, card = prepare_corpus(data, work_dir, progress)  # data.scrub / dedup / contamination
        bin_path = build_token_file(paths, bundle.tokenizer, Path(work_dir) / "data", data.text_field,
                                    data.encoding_errors, progress=progress)
        bundle = replace(bundle, meta={**bundle.meta, "data": card})
        if objective == "clm":
            windows = TokenWindows(open_tokens(bin_path), config.block_size, data.val_fraction)
            return CausalLMTask(windows, train.seed, train.label_smoothing), bundle
        return MaskedLMTask(open_tokens(bin_path), bundle.tokenizer, config.block_size, data.val_fraction,
                            train.seed, train.mask_prob, train.whole_word_mask, train.label_smoothing), bundle
    if objective == "sft":
        return make_sft_task(bundle, train, data)
    makers = {"classify": make_classification_task, "regress": make_regression_task, "multilabel": make_multilabel_task}
    if objective not in makers:
        raise ValueError(f"unknown train.objective '{objective}'")
    task, bundle = makers[objective](bundle, train, data, **({"before_encoding": score} if score else {}))
    task.bucket_by_length = train.bucket_by_length
    if train.token_dropout:
        task.drop_tokens(train.token_dropout, bundle.tokenizer)
    return task, bundle
