"""Knowledge distillation: a task around the student's own objective (clm, mlm or classify).

loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * the objective's own loss,
over the positions the objective scores: every next-token position (clm), the masked positions only (mlm),
one row per text (classify). The T^2 keeps the soft term's gradients on the scale of the hard term's as T
changes (Hinton et al., 2015). The teacher is frozen: eval mode, no gradients, never seen by the optimizer.
Teacher and student share one tokenizer, so their logits index the same tokens.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..config import ConfigError
from ..models.contract import is_decoder, is_encoder

if TYPE_CHECKING:
    from ..bundle import Bundle
    from ..config import TrainConfig

OBJECTIVES = ("clm", "mlm", "classify")


def soft_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), averaged over rows; the last dim holds the classes."""
    width = student.size(-1)
    log_student = F.log_softmax(student.float().reshape(-1, width) / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher.float().reshape(-1, width) / temperature, dim=-1)
    kl = F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean")
    return temperature * temperature * kl


class _Recorder:
    """Stands in for a model while the objective computes its loss, keeping the logits it scores: forward's (clm),
    mlm_logits' (mlm: only the masked positions reach it) or classify's (one row per text). So the soft term
    covers exactly the positions the hard term does, padding and unmasked tokens excluded."""

    def __init__(self, model):
        self._model, self.logits = model, []

    def _keep(self, output: torch.Tensor) -> torch.Tensor:
        self.logits.append(output)
        return output

    def __call__(self, *args, **kwargs):
        return self._keep(self._model(*args, **kwargs))

    def mlm_logits(self, hidden):
        return self._keep(self._model.mlm_logits(hidden))

    def classify(self, *args, **kwargs):
        return self._keep(self._model.classify(*args, **kwargs))

    def __getattr__(self, name):  # hidden_states, config, ...: the model's own
        return getattr(self._model, name)

    def scored(self) -> torch.Tensor:
        if len(self.logits) != 1:
            raise RuntimeError(f"distillation expected one scoring call of the model per batch, saw {len(self.logits)}")
        return self.logits[0]


class DistillationTask:
    """The student's own task, with its loss mixed with the KL to a frozen teacher's softened outputs.

    Batches, evaluation (the plain objective's val_loss / accuracy, comparable with a run without a teacher),
    monitor and the optional hooks are the base task's; only loss changes."""

    def __init__(self, base, teacher: torch.nn.Module, temperature: float, alpha: float, width: int,
                 columns: list[int] | None = None, facts: dict | None = None):
        if temperature <= 0:
            raise ConfigError(f"train.distill_temperature must be > 0, got {temperature}")
        if not 0 <= alpha <= 1:
            raise ConfigError(f"train.distill_alpha must be within [0, 1], got {alpha}")
        self.base, self.teacher, self.temperature, self.alpha = base, teacher, temperature, alpha
        self.width = width  # logits beyond the shared vocabulary (a padded embedding table) are left out
        self.columns = None if columns is None else torch.tensor(columns)  # teacher label order -> student's
        self.training_facts = facts or {}  # recorded in the student's model card
        self.monitor = getattr(base, "monitor", ("val_loss", "min"))
        self.can_evaluate = base.can_evaluate
        teacher.eval().requires_grad_(False)

    @property
    def grad_accum(self):  # the labeled tasks number their rows by it; the trainer sets it when the task has it
        return self.base.grad_accum

    @grad_accum.setter
    def grad_accum(self, value: int) -> None:
        self.base.grad_accum = value

    def __getattr__(self, name):  # parameter_groups, finish: the base task's when it has them
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def train_batch(self, step: int, micro: int, batch_size: int) -> dict:
        """The base task's batch for (step, micro): the same data a run without a teacher sees."""
        return self.base.train_batch(step, micro, batch_size)

    def count_tokens(self, batch: dict) -> int:
        return self.base.count_tokens(batch)

    def loss(self, model, batch: dict):
        """alpha * soft + (1 - alpha) * hard, with both parts reported (hard_loss, soft_loss)."""
        student = _Recorder(model)
        hard, metrics = self.base.loss(student, batch)
        device = next(v for v in batch.values() if torch.is_tensor(v)).device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        teacher = _Recorder(self.teacher)
        with torch.no_grad():
            self.base.loss(teacher, batch)  # same batch, same masks, same scored positions
        target = teacher.scored()
        if self.columns is not None:
            target = target[..., self.columns.to(device)]
        soft = soft_loss(student.scored()[..., :self.width], target[..., :self.width], self.temperature)
        total = self.alpha * soft + (1 - self.alpha) * hard
        return total, {**metrics, "hard_loss": hard.detach(), "soft_loss": soft.detach()}

    def evaluate(self, model, steps: int, batch_size: int, device) -> dict[str, float]:
        """The base task's evaluation of the student alone (no teacher in val_loss)."""
        return self.base.evaluate(model, steps, batch_size, device)


def check_same_tokenizer(teacher, student, path: Path) -> None:
    """Teacher and student must map the same tokens to the same ids, or their logits cannot be compared."""
    theirs, ours = teacher.backend.get_vocab(), student.backend.get_vocab()
    if theirs == ours:
        return
    only_teacher = sorted(set(theirs) - set(ours))[:5]
    only_student = sorted(set(ours) - set(theirs))[:5]
    moved = sorted(t for t in set(theirs) & set(ours) if theirs[t] != ours[t])[:5]
    detail = "; ".join(part for part in (
        f"only the teacher has {only_teacher}" if only_teacher else "",
        f"only the student has {only_student}" if only_student else "",
        f"different ids for {moved}" if moved else "") if part)
    raise ConfigError(f"the student's tokenizer ({student.kind}, {len(ours)} tokens) differs from the tokenizer of "
                      f"train.distill_teacher '{path}' ({teacher.kind}, {len(theirs)} tokens): {detail}. Distillation "
                      "compares logits token by token, so the student must use the teacher's tokenizer: leave "
                      "tokenizer.path and tokenizer.add_tokens unset (a new student then takes the teacher's), or "
                      "start model.init from a model trained with the teacher's tokenizer")


def _check_family(teacher, arch: str, objective: str, student, path: Path) -> None:
    causal = is_decoder(teacher)
    if objective == "clm" and not causal:
        raise ConfigError(f"train.distill_teacher '{path}' is a '{arch}' encoder; objective 'clm' needs a decoder "
                          "teacher (gpt, llama, lstm, gru, rnn) whose next-token predictions the student learns")
    if objective == "mlm" and not is_encoder(teacher):
        raise ConfigError(f"train.distill_teacher '{path}' is a '{arch}' decoder; objective 'mlm' needs an encoder "
                          "teacher (arch 'bert') with a masked-LM head")
    if objective == "classify" and causal != is_decoder(student):
        raise ConfigError(f"train.distill_teacher '{path}' is a '{arch}' model of the other family than the "
                          "student; a classifier distills from a classifier of its own family (decoder or encoder), "
                          "which reads the same encoded texts")


def check_objective(objective: str) -> None:
    """Distillation covers the objectives in OBJECTIVES; say so before a teacher is loaded for another."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"train.distill_teacher is set, but distillation covers objectives {', '.join(OBJECTIVES)}; "
                          f"this run's train.objective is '{objective}'")


def missing_teacher(path: Path) -> FileNotFoundError:
    """The error for a train.distill_teacher path that does not exist."""
    return FileNotFoundError(f"train.distill_teacher '{path}' does not exist; give the teacher's model directory "
                             "(a run's final/ or checkpoints/step-N/)")


def check_teacher(student: Bundle, objective: str, teacher: Bundle, path: Path) -> None:
    """The teacher Bundle of train.distill_teacher must suit the `student` for `objective`: family, tokenizer,
    labels."""
    check_objective(objective)
    _check_family(teacher.model, teacher.config.arch, objective, student.model, path)
    check_same_tokenizer(teacher.tokenizer, student.tokenizer, path)
    if objective == "classify":
        kind = (teacher.meta.get("classification") or {}).get("kind", "classify")
        if not teacher.config.labels or kind != "classify":
            raise ConfigError(f"train.distill_teacher '{path}' has no single-label classification head "
                              f"({'head: ' + kind if teacher.config.labels else 'a language model'}); objective "
                              "'classify' distills from a classifier trained on the same labels")


def label_columns(teacher_labels: list[str], student_labels: list[str], path: Path) -> list[int]:
    """For each student label, the teacher's output column of the same name."""
    if set(teacher_labels) != set(student_labels):
        raise ConfigError(f"train.distill_teacher '{path}' predicts labels {teacher_labels}, the student's data has "
                          f"{student_labels}; a classifier distills from a teacher trained on the same labels")
    return [teacher_labels.index(label) for label in student_labels]


def make_distillation_task(student: Bundle, train: TrainConfig, make_base, teacher: Bundle
                           ) -> tuple[DistillationTask, Bundle]:
    """The distillation task for the `student` with the frozen `teacher` Bundle it is handed, and the Bundle it
    trains: the teacher is checked before make_base() (which returns the objective's (task, Bundle)) prepares any
    data, so a bad teacher writes nothing."""
    from ..models import count_parameters

    path = Path(train.distill_teacher)
    check_teacher(student, train.objective, teacher, path)
    base, student = make_base()
    columns = None
    if train.objective == "classify":
        columns = label_columns(list(teacher.config.labels), list(student.config.labels), path)
    width = len(student.config.labels) if train.objective == "classify" else student.tokenizer.vocab_size
    facts = {"distill_teacher": str(path), "distill_teacher_parameters": count_parameters(teacher.model),
             "distill_temperature": train.distill_temperature, "distill_alpha": train.distill_alpha}
    task = DistillationTask(base, teacher.model, train.distill_temperature, train.distill_alpha, width, columns, facts)
    return task, student
