"""Knowledge distillation: a task around the student's own objective (clm, mlm or classify).

loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * the objective's own loss,
over the positions the objective scores: every next-token position (clm), the masked positions only (mlm),
one row per text (classify). The T^2 keeps the soft term's gradients on the scale of the hard term's as T
changes (Hinton et al., 2015). The teacher is frozen: eval mode, no gradients, never seen by the optimizer.
For clm and mlm teacher and student share one tokenizer, so their logits index the same tokens, and the teacher
runs beside the student on every batch. A classifier's targets are one row of logits per text: the teacher
scores every training text once, before the first step, with its own tokenizer (TeacherScores), so any
classifier with the same labels teaches any student (a BERT teacher, a word-level TextCNN student) and a step
costs what an undistilled one does.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ConfigError
from ..devices import check_device, check_dtype
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

    def __init__(self, base, teacher: torch.nn.Module | None, temperature: float, alpha: float, width: int,
                 facts: dict | None = None):
        if temperature <= 0:
            raise ConfigError(f"train.distill_temperature must be > 0, got {temperature}")
        if not 0 <= alpha <= 1:
            raise ConfigError(f"train.distill_alpha must be within [0, 1], got {alpha}")
        self.base, self.teacher, self.temperature, self.alpha = base, teacher, temperature, alpha
        self.width = width  # logits beyond the shared vocabulary (a padded embedding table) are left out
        self.training_facts = facts or {}  # recorded in the student's model card
        self.monitor = getattr(base, "monitor", ("val_loss", "min"))
        self.can_evaluate = base.can_evaluate
        if teacher is not None:  # None: the base task's batches carry the teacher's logits (teacher_logits)
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
        target = batch["teacher_logits"] if self.teacher is None else self._teacher_logits(batch)
        soft = soft_loss(student.scored()[..., :self.width], target[..., :self.width], self.temperature)
        total = self.alpha * soft + (1 - self.alpha) * hard
        return total, {**metrics, "hard_loss": hard.detach(), "soft_loss": soft.detach()}

    def _teacher_logits(self, batch: dict) -> torch.Tensor:
        """The teacher's logits on the positions the base task scores in `batch` (the teacher runs here)."""
        device = next(v for v in batch.values() if torch.is_tensor(v)).device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        teacher = _Recorder(self.teacher)
        with torch.no_grad():
            self.base.loss(teacher, batch)  # same batch, same masks, same scored positions
        return teacher.scored()

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


def _check_family(teacher, arch: str, objective: str, path: Path) -> None:
    causal = is_decoder(teacher)
    if objective == "clm" and not causal:
        raise ConfigError(f"train.distill_teacher '{path}' is a '{arch}' encoder; objective 'clm' needs a decoder "
                          "teacher (gpt, llama, lstm, gru, rnn) whose next-token predictions the student learns")
    if objective == "mlm" and not is_encoder(teacher):
        raise ConfigError(f"train.distill_teacher '{path}' is a '{arch}' decoder; objective 'mlm' needs an encoder "
                          "teacher (arch 'bert') with a masked-LM head")


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
    if objective != "classify":  # a classifier teacher scores the texts with its own tokenizer (TeacherScores)
        _check_family(teacher.model, teacher.config.arch, objective, path)
        check_same_tokenizer(teacher.tokenizer, student.tokenizer, path)
    else:
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


class TeacherScores:
    """A classifier teacher's logits for every training text, in the teacher's label order: computed once, when the
    classification task hands over its training rows (before it encodes them for the student), with the teacher's
    own tokenizer and block size, on train.device, under train.dtype's autocast. Kept in `cache` (a folder) under
    a name made from their content, so a resumed run, or with train.distill_cache another student, reads them."""

    BATCH = 64

    def __init__(self, teacher: Bundle, train: TrainConfig, path: Path, progress: bool = False,
                 cache: Path | None = None):
        self.teacher, self.train, self.path, self.progress, self.cache = teacher, train, path, progress, cache
        self.device = scoring_device(train)
        self.logits: np.ndarray | None = None

    def __call__(self, rows) -> None:
        from ..data.labeled import label_names
        from ..progress import Progress

        label_columns(list(self.teacher.config.labels), label_names(rows), self.path)  # before the long pass
        bar = Progress(enabled=self.progress, label="teacher")
        saved = self.cache / f"teacher-scores-{self.fingerprint(rows)}.safetensors" if self.cache else None
        if saved is not None and saved.is_file():
            from safetensors.numpy import load_file
            self.logits = load_file(saved)["logits"]
            bar.done(f"read its scores of {len(rows):,} training texts from {saved}")
            return
        self.logits = self._score(rows, bar)
        bar.done(f"scored {len(rows):,} training texts")
        if saved is not None:
            from safetensors.numpy import save

            from ..files import atomic_file
            with atomic_file(saved) as temp:  # written into the temp file: it keeps the umask's permissions
                temp.write_bytes(save({"logits": self.logits}))

    def _score(self, rows, bar) -> np.ndarray:
        from ..data.labeled import EncodedSet
        from ..infer.classify import head_outputs

        model, device, dtype = self.teacher.model, self.device, check_dtype(self.train.dtype, "train.dtype")
        encoded = EncodedSet(rows, self.teacher.tokenizer, None, self.teacher.config.block_size)
        autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
        model.to(device)
        with autocast:
            logits = head_outputs(model, encoded, self.BATCH,
                                  lambda done: bar.show(f"scored {done:,} of {len(encoded):,} training texts"))
        model.to("cpu")
        return logits

    def fingerprint(self, rows) -> str:
        """A hash of all the scores depend on: the teacher's tensors, tokenizer, block size and labels, the texts
        (and pairs), and where and in what dtype it runs."""
        import hashlib

        digest = hashlib.sha256()
        teacher = self.teacher
        for name, tensor in sorted(teacher.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        facts = [teacher.tokenizer.fingerprint(), teacher.config.block_size, list(teacher.config.labels),
                 self.train.dtype, self.device.type]
        digest.update(repr(facts).encode())
        for text, pair in zip(rows.texts, rows.pairs or [None] * len(rows)):
            digest.update(f"{len(text)}:{text}{pair is not None}:{pair or ''}".encode())
        return digest.hexdigest()[:24]

    def targets(self, labels: list[str]) -> torch.Tensor:
        """(N, len(labels)) float32 logits with the columns in the student's label order."""
        columns = label_columns(list(self.teacher.config.labels), labels, self.path)
        return torch.from_numpy(np.ascontiguousarray(self.logits[:, columns], dtype=np.float32))


def scoring_device(train: TrainConfig) -> torch.device:
    """Where the teacher scores: train.device, and under torchrun a GPU run's own local GPU."""
    device = check_device(train.device, "train.device")
    if device.type == "cuda" and device.index is None and train.parallel != "none":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def make_distillation_task(student: Bundle, train: TrainConfig, make_base, teacher: Bundle, progress: bool = False,
                           work_dir: Path | None = None) -> tuple[DistillationTask, Bundle]:
    """The distillation task for the `student` with the frozen `teacher` Bundle it is handed, and the Bundle it
    trains: the teacher is checked before make_base(score) (which returns the objective's (task, Bundle)) prepares
    any data, so a bad teacher writes nothing. A classifier's teacher scores the training texts there, once."""
    from ..models import count_parameters

    path = Path(train.distill_teacher)
    check_teacher(student, train.objective, teacher, path)
    facts = {"distill_teacher": str(path), "distill_teacher_parameters": count_parameters(teacher.model),
             "distill_temperature": train.distill_temperature, "distill_alpha": train.distill_alpha}
    if train.objective == "classify":
        cache = Path(train.distill_cache) if train.distill_cache else Path(work_dir) / "data" if work_dir else None
        scores = TeacherScores(teacher, train, path, progress, cache)
        base, student = make_base(scores)
        base.soft_targets = scores.targets(list(student.config.labels))
        facts["distill_tokenizer"] = train.distill_tokenizer
        task = DistillationTask(base, None, train.distill_temperature, train.distill_alpha,
                                len(student.config.labels), facts)
        return task, student
    base, student = make_base()
    task = DistillationTask(base, teacher.model, train.distill_temperature, train.distill_alpha,
                            student.tokenizer.vocab_size, facts)
    return task, student
