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

from pathlib import Path

from ..data.prepare import prepare_corpus
from ..data.tokens import TokenWindows, build_token_file, open_tokens
from ..models.contract import is_decoder, is_encoder
from .classify import (EMBEDDING_PREFIXES, HEAD_PREFIXES, ClassificationTask, attach_head, layerwise_groups,
                       make_classification_task)
from .lm import EVAL_SEED, CausalLMTask, MaskedLMTask
from .multilabel import MultiLabelTask, make_multilabel_task
from .regress import RegressionTask, make_regression_task
from .sft import SFTTask, make_sft_task

__all__ = ["EMBEDDING_PREFIXES", "EVAL_SEED", "HEAD_PREFIXES", "CausalLMTask", "ClassificationTask", "MaskedLMTask",
           "MultiLabelTask", "RegressionTask", "SFTTask", "attach_head", "layerwise_groups", "make_classification_task",
           "make_multilabel_task", "make_regression_task", "make_sft_task", "make_task"]


def make_task(lm, work_dir: Path, progress: bool = False, teacher=None):
    """The task for lm.config.train.objective, with its data prepared under `work_dir`; with train.distill_teacher
    set, that task inside a DistillationTask (distill.py) around the `teacher` Bundle the caller loaded."""
    if lm.config.train.distill_teacher:
        from .distill import make_distillation_task
        if teacher is None:
            raise ValueError("train.distill_teacher is set: hand make_task the teacher's Bundle (load_model_dir)")
        return make_distillation_task(lm, lambda: _objective_task(lm, work_dir, progress), teacher)
    return _objective_task(lm, work_dir, progress)


def _objective_task(lm, work_dir: Path, progress: bool = False):
    config = lm.config
    objective = config.train.objective
    if objective == "clm":
        if not is_decoder(lm.model):
            raise ValueError(f"objective 'clm' needs a decoder; this model is '{config.model.arch}'")
        paths = prepare_corpus(lm, config.data.paths, work_dir, progress)  # data.scrub / dedup / contamination
        bin_path = build_token_file(paths, lm.tokenizer, Path(work_dir) / "data",
                                    config.data.text_field, config.data.encoding_errors, progress=progress)
        windows = TokenWindows(open_tokens(bin_path), config.model.block_size, config.data.val_fraction)
        return CausalLMTask(windows, config.train.seed, config.train.label_smoothing)
    if objective == "mlm":
        if not is_encoder(lm.model):
            raise ValueError(f"objective 'mlm' needs an encoder (arch 'bert'); this model is '{config.model.arch}'")
        paths = prepare_corpus(lm, config.data.paths, work_dir, progress)
        bin_path = build_token_file(paths, lm.tokenizer, Path(work_dir) / "data",
                                    config.data.text_field, config.data.encoding_errors, progress=progress)
        return MaskedLMTask(open_tokens(bin_path), lm.tokenizer, config.model.block_size, config.data.val_fraction,
                            config.train.seed, config.train.mask_prob, config.train.whole_word_mask,
                            config.train.label_smoothing)
    if objective == "sft":
        return make_sft_task(lm)
    makers = {"classify": make_classification_task, "regress": make_regression_task, "multilabel": make_multilabel_task}
    if objective not in makers:
        raise ValueError(f"unknown train.objective '{objective}'")
    task = makers[objective](lm)
    task.bucket_by_length = config.train.bucket_by_length
    return task
