"""Distillation: the soft loss, where gradients go, a distilled run that learns and resumes exactly, bad input."""
import csv
import json
import random
import re
from dataclasses import replace

import pytest
import torch
from conftest import small_corpus

from lmforge import LM
from lmforge.app.training import train_from_config
from lmforge.cli import main
from lmforge.config import build_config
from lmforge.data.labeled import encode_example, read_labeled
from lmforge.modeldir import load_model_dir
from lmforge.tasks import make_task
from lmforge.tasks.classify import split_validation
from lmforge.tasks.distill import DistillationTask, soft_loss

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32)
FAST = dict(batch_size=8, lr=3e-3, min_lr=3e-4, warmup_steps=10, eval_every=0, log_every=1)


def _reviews(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    good, bad = ["great", "lovely", "superb", "fine"], ["dull", "awful", "boring", "weak"]
    filler = ["the", "film", "was", "a", "plot", "and", "acting"]
    rows = []
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        words = rng.sample(filler, 4) + [rng.choice(good if label == "pos" else bad)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Model directories of a briefly trained GPT, BERT (masked LM) and BERT classifier, with their data."""
    root = tmp_path_factory.mktemp("teachers")
    corpus = root / "corpus.txt"
    corpus.write_text(small_corpus(), encoding="utf-8")
    gpt = LM.new("gpt", corpus=corpus, **TINY)
    gpt.fit(corpus, run_dir=root / "gpt", max_steps=60, progress=False, **FAST)
    bert = LM.new("bert", tokenizer="wordpiece", vocab_size=120, corpus=corpus, **TINY)
    bert.fit(corpus, run_dir=root / "bert", max_steps=10, progress=False, **FAST)
    labeled = root / "train.csv"
    with open(labeled, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(_reviews(120, 0))
    classifier = LM.from_pretrained(root / "bert" / "final")
    classifier.fit(labeled, objective="classify", run_dir=root / "classifier", max_steps=100, progress=False, **FAST)
    return {"corpus": corpus, "labeled": labeled, "gpt": root / "gpt" / "final", "bert": root / "bert" / "final",
            "classifier": root / "classifier" / "final"}


def _distill_task(student: LM, teacher, data, objective: str, work, temperature=2.0, alpha=0.5, teacher_bundle=None):
    raw = student.config.model_dump()
    raw["train"].update(objective=objective, distill_teacher=str(teacher), distill_temperature=temperature,
                        distill_alpha=alpha)
    raw["data"]["train" if objective == "classify" else "paths"] = str(data) if objective == "classify" else [str(data)]
    student.config = build_config(raw)
    task, trained = make_task(student.bundle, student.config.train, student.config.data, work,
                             teacher=teacher_bundle or load_model_dir(teacher))  # a task is handed its teacher
    student.adopt(trained)
    return task


CASES = [("clm", "gpt", "corpus"), ("mlm", "bert", "corpus"), ("classify", "classifier", "labeled")]


@pytest.mark.parametrize("objective,teacher,data", CASES)
@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_the_soft_loss_is_zero_when_the_student_is_the_teacher(teachers, tmp_path, objective, teacher, data,
                                                               temperature):
    student = LM.from_pretrained(teachers[teacher])  # the teacher's own weights
    task = _distill_task(student, teachers[teacher], teachers[data], objective, tmp_path, temperature, alpha=1.0)
    assert isinstance(task, DistillationTask)
    student.model.train()
    loss, metrics = task.loss(student.model, task.train_batch(0, 0, 8))
    assert abs(loss.item()) < 1e-6 and abs(metrics["soft_loss"].item()) < 1e-6
    assert metrics["hard_loss"].item() > 0.01  # the hard-label loss is there, weighted by 1 - alpha = 0


def test_soft_loss_matches_the_kl_written_out():
    torch.manual_seed(0)
    student, teacher, T = torch.randn(5, 7, 11), torch.randn(5, 7, 11), 3.0
    p = torch.softmax(teacher / T, -1)
    expected = T * T * (p * (p.log() - torch.log_softmax(student / T, -1))).sum(-1).mean()
    torch.testing.assert_close(soft_loss(student, teacher, T), expected, atol=1e-5, rtol=1e-5)


def test_masked_lm_distills_over_the_masked_positions_only(teachers, tmp_path):
    student = LM.new("bert", tokenizer_path=str(teachers["bert"] / "tokenizer.json"), n_layer=1, n_head=2,
                     n_embd=16, block_size=32)
    task = _distill_task(student, teachers["bert"], teachers["corpus"], "mlm", tmp_path, temperature=2.0)
    batch = task.train_batch(3, 0, 8)
    _, metrics = task.loss(student.model, batch)
    chosen = batch["labels"] != -100
    assert 0 < chosen.sum() < chosen.numel()
    with torch.no_grad():
        ours = student.model.mlm_logits(student.model.hidden_states(batch["ids"])[chosen])
        theirs = task.teacher.mlm_logits(task.teacher.hidden_states(batch["ids"])[chosen])
    torch.testing.assert_close(metrics["soft_loss"], soft_loss(ours, theirs, 2.0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("objective,teacher,data", CASES)
def test_gradients_reach_the_student_only(teachers, tmp_path, objective, teacher, data):
    student = LM.from_pretrained(teachers[teacher])
    with torch.no_grad():  # a different student, so the soft term has a gradient
        for p in student.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    task = _distill_task(student, teachers[teacher], teachers[data], objective, tmp_path, alpha=1.0)
    student.model.train()
    loss, _ = task.loss(student.model, task.train_batch(0, 0, 8))
    loss.backward()
    if task.teacher is None:  # a classifier's teacher scored the texts before training: its logits are data
        assert objective == "classify" and not task.base.soft_targets.requires_grad
    else:
        assert not task.teacher.training
        assert all(p.grad is None and not p.requires_grad for p in task.teacher.parameters())
    grads = [p.grad for p in student.model.parameters() if p.requires_grad]
    assert sum(g is not None and g.abs().sum().item() > 0 for g in grads) > len(grads) // 2


def test_a_distilled_run_learns_resumes_exactly_and_records_its_teacher(teachers, tmp_path):
    class Stop(Exception):
        pass

    def student():
        return LM.new("gpt", tokenizer_path=str(teachers["gpt"] / "tokenizer.json"), n_layer=1, n_head=2,
                      n_embd=16, block_size=32)

    options = dict(max_steps=80, save_every=20, progress=False, distill_teacher=str(teachers["gpt"]),
                   distill_temperature=2.0, distill_alpha=0.7, **FAST)
    whole, records = student(), []
    whole.fit(teachers["corpus"], run_dir=tmp_path / "whole", hooks=[lambda s, r: records.append(r)], **options)
    hard = [r["hard_loss"] for r in records]
    soft = [r["soft_loss"] for r in records]
    assert sum(hard[-5:]) / 5 < 0.7 * sum(hard[:5]) / 5 and sum(soft[-5:]) / 5 < 0.7 * sum(soft[:5]) / 5

    def kill_at_50(step, record):
        if step == 50:
            raise Stop

    with pytest.raises(Stop):
        student().fit(teachers["corpus"], run_dir=tmp_path / "broken", hooks=[kill_at_50], **options)
    resumed, again = student(), []
    resumed.fit(teachers["corpus"], run_dir=tmp_path / "broken", resume=True, hooks=[lambda s, r: again.append(r)],
                **options)
    assert [r["loss"] for r in again] == [r["loss"] for r in records][40:]
    for name, value in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, atol=0, rtol=0)
    meta = json.loads((tmp_path / "whole" / "final" / "config.json").read_text())
    assert meta["training"]["distill_teacher"] == str(teachers["gpt"])
    assert (meta["training"]["distill_temperature"], meta["training"]["distill_alpha"]) == (2.0, 0.7)
    card = (tmp_path / "whole" / "final" / "README.md").read_text()
    assert f"distill_teacher: {teachers['gpt']}" in card and "distill_alpha: 0.7" in card


def test_the_distill_command_trains_a_student_from_a_recipe(teachers, tmp_path, capsys):
    recipe = tmp_path / "small.toml"
    recipe.write_text('[model]\narch = "gpt"\nn_layer = 1\nn_head = 2\nn_embd = 16\nblock_size = 32\n'
                      "[train]\nmax_steps = 10\nbatch_size = 8\neval_every = 10\neval_steps = 2\n")
    run = tmp_path / "run"
    assert main(["distill", "--teacher", str(teachers["gpt"]), "--student", str(recipe), "--data",
                 str(teachers["corpus"]), "--temperature", "3", "--alpha", "0.9", f"run.dir={run}", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "T=3, alpha=0.9" in out and "val_loss" in out
    student = LM.from_pretrained(run / "final")
    assert student.meta["training"]["distill_temperature"] == 3.0
    teacher = LM.from_pretrained(teachers["gpt"])
    assert student.tokenizer.backend.get_vocab() == teacher.tokenizer.backend.get_vocab()


def _other_tokenizer(tmp_path):
    corpus = tmp_path / "other.txt"
    corpus.write_text("0123456789 xyz\n" * 50, encoding="utf-8")
    LM.new("gpt", corpus=corpus, **TINY).tokenizer.save(tmp_path / "other-tokenizer.json")
    return tmp_path / "other-tokenizer.json"


@pytest.mark.parametrize("case", ["missing teacher", "missing teacher (train)", "tokenizer mismatch",
                                  "encoder teacher for clm", "decoder teacher for mlm", "language model for classify",
                                  "temperature 0", "temperature -1 (train)", "alpha 1.5", "alpha -0.1 (train)",
                                  "own tokenizer for clm"])
def test_bad_input_is_a_clear_error_that_writes_nothing(teachers, tmp_path, capsys, case):
    recipe = tmp_path / "student.toml"
    recipe.write_text('[model]\narch = "gpt"\nn_layer = 1\nn_head = 2\nn_embd = 16\nblock_size = 32\n'
                      "[train]\nmax_steps = 5\nbatch_size = 4\n")
    bert_recipe = tmp_path / "bert.toml"
    bert_recipe.write_text('[model]\narch = "bert"\nn_layer = 1\nn_head = 2\nn_embd = 16\nblock_size = 32\n'
                           "[train]\nmax_steps = 5\nbatch_size = 4\n")
    run = tmp_path / "run"
    corpus = str(teachers["corpus"])
    distill = ["distill", "--student", str(recipe), "--data", corpus, f"run.dir={run}", "--quiet"]
    argv, expected = {
        "missing teacher": (distill + ["--teacher", str(tmp_path / "nope")], r"--teacher '.*nope' does not exist"),
        "missing teacher (train)": (["train", str(recipe), f"data.paths=[{json.dumps(corpus)}]", f"run.dir={run}",
                                     f"train.distill_teacher={json.dumps(str(tmp_path / 'nope'))}"],
                                    r"train.distill_teacher '.*nope' does not exist"),
        "tokenizer mismatch": (distill + ["--teacher", str(teachers["gpt"]),
                                          f"tokenizer.path={json.dumps(str(_other_tokenizer(tmp_path)))}"],
                               r"tokenizer \(char, \d+ tokens\) differs from the tokenizer of train.distill_teacher"),
        "encoder teacher for clm": (distill + ["--teacher", str(teachers["bert"])],
                                    r"'bert' encoder; objective 'clm' needs a decoder teacher"),
        "decoder teacher for mlm": (["distill", "--student", str(bert_recipe), "--data", corpus, f"run.dir={run}",
                                     "--teacher", str(teachers["gpt"])],
                                    r"'gpt' decoder; objective 'mlm' needs an encoder teacher"),
        "language model for classify": (["distill", "--student", str(bert_recipe), "--data", str(teachers["labeled"]),
                                         "train.objective=\"classify\"", f"run.dir={run}",
                                         "--teacher", str(teachers["bert"])],
                                        r"no single-label classification head \(a language model\)"),
        "temperature 0": (distill + ["--teacher", str(teachers["gpt"]), "--temperature", "0"],
                          r"train.distill_temperature: Input should be greater than 0"),
        "temperature -1 (train)": (["train", str(recipe), f"run.dir={run}", "train.distill_temperature=-1"],
                                   r"train.distill_temperature: Input should be greater than 0"),
        "alpha 1.5": (distill + ["--teacher", str(teachers["gpt"]), "--alpha", "1.5"],
                      r"train.distill_alpha: Input should be less than or equal to 1"),
        "alpha -0.1 (train)": (["train", str(recipe), f"run.dir={run}", "train.distill_alpha=-0.1"],
                               r"train.distill_alpha: Input should be greater than or equal to 0"),
        "own tokenizer for clm": (distill + ["--teacher", str(teachers["gpt"]), 'train.distill_tokenizer="own"'],
                                  r"train.distill_tokenizer='own' is for objective 'classify'"),
    }[case]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and re.search(expected, err), err
    assert not run.exists()


def test_classifier_teacher_columns_follow_the_student_label_order(teachers, tmp_path):
    student = LM.from_pretrained(teachers["classifier"])
    plain = _distill_task(student, teachers["classifier"], teachers["labeled"], "classify", tmp_path, alpha=1.0)
    # the same teacher with its two outputs swapped, and its label names with them, gives the same targets
    swapped = load_model_dir(teachers["classifier"])
    head = swapped.model.classifier
    head.weight.data, head.bias.data = head.weight.data.flip(0), head.bias.data.flip(0)
    swapped = replace(swapped, config=swapped.config.model_copy(update={"labels": swapped.config.labels[::-1]}))
    task = _distill_task(LM.from_pretrained(teachers["classifier"]), teachers["classifier"], teachers["labeled"],
                         "classify", tmp_path / "swapped", alpha=1.0, teacher_bundle=swapped)
    torch.testing.assert_close(task.base.soft_targets, plain.base.soft_targets, atol=1e-6, rtol=0)
    loss, _ = task.loss(student.model.eval(), task.train_batch(0, 0, 8))
    assert abs(loss.item()) < 1e-6


def test_a_word_textcnn_learns_from_a_bert_classifier_and_resumes_exactly(teachers, tmp_path):
    """Another family, another tokenizer: the teacher scores each training text once with its own tokens; the
    targets are its logits for each text read alone, the soft loss falls, and a killed run resumes bitwise."""
    class Stop(Exception):
        pass

    def config(run):
        return build_config({
            "model": {"arch": "textcnn", "n_embd": 16, "n_filters": 8, "kernel_sizes": [1, 2], "block_size": 16,
                      "dropout": 0.0},
            "tokenizer": {"kind": "word", "vocab_size": 100},
            "data": {"train": str(teachers["labeled"]), "val_fraction": 0.2},
            "train": {**FAST, "lr": 1e-2, "max_steps": 40, "save_every": 10, "distill_alpha": 0.9,
                      "distill_teacher": str(teachers["classifier"]), "distill_tokenizer": "own"},
            "run": {"dir": str(tmp_path / run)}})

    whole = config("whole")
    teacher = load_model_dir(teachers["classifier"])
    task, trained = make_task(LM.from_config(whole).bundle, whole.train, whole.data, tmp_path / "work",
                              teacher=teacher)
    assert trained.tokenizer.kind == "word" and task.teacher is None
    rows = split_validation(whole.data, whole.train.seed, read_labeled, read_labeled(teachers["labeled"]))[0]
    labels = [teacher.config.labels.index(name) for name in trained.config.labels]
    reference = torch.cat([_logits_alone(teacher, text) for text in rows.texts])[:, labels]
    torch.testing.assert_close(task.base.soft_targets, reference, atol=1e-4, rtol=0)

    records = []
    lm, _ = train_from_config(whole, progress=False, hooks=[lambda s, r: records.append(r)])
    soft = [r["soft_loss"] for r in records]
    assert sum(soft[-5:]) / 5 < 0.5 * sum(soft[:5]) / 5
    batch = task.base.train.batch(range(len(rows)))  # the same word vocabulary: the tokenizer is deterministic
    with torch.no_grad():
        predicted = lm.model.eval().classify(batch["ids"], pad_mask=batch["pad_mask"]).argmax(-1)
    agree = (predicted == task.base.soft_targets.argmax(-1)).float().mean()
    assert agree >= 0.95  # the student predicts what the teacher does on the training texts
    assert lm.meta["training"]["distill_tokenizer"] == "own"

    def kill_at_25(step, record):
        if step == 25:
            raise Stop

    with pytest.raises(Stop):
        train_from_config(config("broken"), progress=False, hooks=[kill_at_25])
    resumed, _ = train_from_config(config("broken"), resume=True, progress=False)
    for name, value in lm.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, atol=0, rtol=0)


def test_a_sweep_of_students_pays_for_one_teacher_pass(teachers, tmp_path, monkeypatch):
    from lmforge.tasks import distill

    def task(teacher_bundle=None):
        student = LM.from_pretrained(teachers["classifier"])
        student.config.train.distill_cache = str(tmp_path / "cache")
        return _distill_task(student, teachers["classifier"], teachers["labeled"], "classify", tmp_path / "work",
                             teacher_bundle=teacher_bundle)

    first = task()
    assert len(list((tmp_path / "cache").glob("teacher-scores-*.safetensors"))) == 1

    def no_scoring(self, rows, bar):
        raise AssertionError("the teacher ran again")

    with monkeypatch.context() as patch:
        patch.setattr(distill.TeacherScores, "_score", no_scoring)
        again = task()  # the same teacher and texts: read back
    torch.testing.assert_close(again.base.soft_targets, first.base.soft_targets, atol=0, rtol=0)
    other = load_model_dir(teachers["classifier"])
    with torch.no_grad():
        other.model.classifier.bias.add_(1.0)  # another teacher: scored anew, kept beside the first
    moved = task(other)
    assert len(list((tmp_path / "cache").glob("teacher-scores-*.safetensors"))) == 2
    torch.testing.assert_close(moved.base.soft_targets - first.base.soft_targets,
                               torch.ones_like(first.base.soft_targets), atol=1e-5, rtol=0)


def _logits_alone(teacher, text: str) -> torch.Tensor:
    """The teacher's head outputs (1, n_labels) for one text in a batch of its own."""
    ids, _ = encode_example(teacher.tokenizer, text, None, teacher.config.block_size)
    with torch.no_grad():
        return teacher.model.eval().classify(torch.tensor([ids])).float()


def test_a_classifier_distills_through_the_trainer_with_its_own_hooks(teachers, tmp_path):
    student = LM.new("bert", tokenizer_path=str(teachers["bert"] / "tokenizer.json"), n_layer=1, n_head=2,
                     n_embd=16, block_size=32)
    records = []
    student.fit(teachers["labeled"], objective="classify", run_dir=tmp_path / "run", max_steps=12, grad_accum=2,
                distill_teacher=str(teachers["classifier"]), hooks=[lambda s, r: records.append(r)], progress=False,
                **{**FAST, "eval_every": 6})
    assert {"hard_loss", "soft_loss", "accuracy"} <= records[0].keys()
    assert any("val_accuracy" in r for r in records)  # evaluation and the monitor are the classifier's
    assert (tmp_path / "run" / "eval.json").is_file()  # the base task's finish() ran
    assert student.config.model.labels == LM.from_pretrained(teachers["classifier"]).config.model.labels


def test_bfloat16_autocast_covers_student_and_teacher(teachers, tmp_path):
    student = LM.new("gpt", tokenizer_path=str(teachers["gpt"] / "tokenizer.json"), n_layer=1, n_head=2,
                     n_embd=16, block_size=32)
    records = []
    student.fit(teachers["corpus"], max_steps=4, dtype="bfloat16", distill_teacher=str(teachers["gpt"]),
                hooks=[lambda s, r: records.append(r)], progress=False, **FAST)
    assert all(0 < r["soft_loss"] < 100 and 0 < r["hard_loss"] < 100 for r in records)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_a_group_of_one_distills_as_a_plain_process_does(teachers, parallel):
    def run(mode):
        student = LM.new("gpt", tokenizer_path=str(teachers["gpt"] / "tokenizer.json"), n_layer=2, n_head=2,
                         n_embd=16, block_size=32)
        student.fit(teachers["corpus"], max_steps=6, parallel=mode, distill_teacher=str(teachers["gpt"]),
                    distill_alpha=0.8, progress=False, grad_norms_every=0, **FAST)
        return student.model.state_dict()

    plain, wrapped = run("none"), run(parallel)
    for name, value in plain.items():
        torch.testing.assert_close(wrapped[name], value, atol=1e-5, rtol=0, msg=name)
