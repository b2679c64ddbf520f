"""Regression (MSE/Huber) and multi-label (BCE) heads, label smoothing, and the L1 penalty."""
import csv
import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmforge.api import LM
from lmforge.cli import main
from lmforge.config import ConfigError, TrainConfig, build_config
from lmforge.data.corpus import DataError
from lmforge.data.labeled import read_labeled
from lmforge.data.tokens import TokenWindows
from lmforge.data.targets import parse_tags
from lmforge.infer.multilabel import multilabel_report
from lmforge.infer.regress import regression_report, spearman
from lmforge.tasks import CausalLMTask, ClassificationTask, MaskedLMTask
from lmforge.train.penalty import l1_parameters, l1_penalty
from lmforge.train.trainer import train

from conftest import tiny_model

WEIGHTS = {"red": -2.0, "green": -1.0, "blue": 0.0, "gold": 1.0, "pink": 2.0, "gray": 3.0}
FILLER = ["the", "a", "of", "and", "to", "in"]
SMALL = dict(n_layer=1, n_head=2, n_embd=32, block_size=24)


def write_csv(path, rows, fields):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)
    return path


def scored(n, seed):
    """Texts of four colour words (and filler); the score is linear in them: the sum of the words' weights."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        colours = [rng.choice(list(WEIGHTS)) for _ in range(4)]
        words = colours + rng.sample(FILLER, 2)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "score": sum(WEIGHTS[c] for c in colours)})
    return rows


def tagged(n, seed):
    """The planted rule: tag 'x' when 'foo' is in the text, tag 'y' when 'bar' is; any mix, none included."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.sample(FILLER + ["cat", "dog", "sun", "sea"], 4)
        foo, bar = rng.random() < 0.5, rng.random() < 0.5
        words += (["foo"] if foo else []) + (["bar"] if bar else [])
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "tags": ";".join((["x"] if foo else []) + (["y"] if bar else []))})
    return rows


@pytest.fixture(scope="module")
def regressor(tmp_path_factory):
    folder = tmp_path_factory.mktemp("regress")
    train_file = write_csv(folder / "train.csv", scored(400, 0), ("text", "score"))
    test_file = write_csv(folder / "test.csv", scored(100, 1), ("text", "score"))
    torch.manual_seed(0)
    lm = LM.new("bert", tokenizer="wordpiece", vocab_size=80, corpus=train_file, pooling="mean", **SMALL)
    lm.config.data.label_field, lm.config.data.test = "score", str(test_file)
    result = lm.fit(train_file, objective="regress", run_dir=folder / "run", max_steps=250, batch_size=32, lr=5e-3,
                    min_lr=5e-4, warmup_steps=10, eval_every=125, weight_decay=0.0, progress=False)
    return lm, result, folder, test_file


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multilabel")
    train_file = write_csv(folder / "train.csv", tagged(300, 0), ("text", "tags"))
    test_file = write_csv(folder / "test.csv", tagged(100, 1), ("text", "tags"))
    torch.manual_seed(0)
    lm = LM.new("gpt", tokenizer="wordpiece", vocab_size=80, corpus=train_file, **SMALL)
    lm.config.data.label_field, lm.config.data.test = "tags", str(test_file)
    result = lm.fit(train_file, objective="multilabel", run_dir=folder / "run", max_steps=150, batch_size=32,
                    lr=3e-3, warmup_steps=10, eval_every=75, weight_decay=0.0, progress=False)
    return lm, result, folder, test_file


# -- regression ---------------------------------------------------------------------------------------

def test_regression_head_learns_a_linear_target_to_near_zero_error(regressor):
    lm, result, folder, test_file = regressor
    scores = np.array([row["score"] for row in scored(100, 1)])
    metrics = lm.evaluate(test_file)
    # predicting the mean would score the variance (about 7); the model must get within a few percent of 0
    assert metrics["mse"] < 0.03 * scores.var(), metrics
    assert metrics["pearson"] > 0.99 and metrics["spearman"] > 0.98
    assert result.eval["val_mse"] == pytest.approx(metrics["mse"], rel=1e-4)
    report = json.loads((folder / "run" / "eval.json").read_text())
    train_mean = lm.meta["classification"]["target_mean"]
    assert report["mean_baseline_mse"] == pytest.approx(((scores - train_mean) ** 2).mean())
    assert (folder / "run" / "scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_regression_reloads_with_its_kind_name_and_target_scaling(regressor):
    lm, _, folder, _ = regressor
    loaded = LM.from_pretrained(folder / "run" / "final")
    head = loaded.meta["classification"]
    assert head["kind"] == "regress" and loaded.config.model.labels == ["score"]
    train_scores = np.array([row["score"] for row in scored(400, 0)])
    # the scaling comes from the training split (data.test validates, so that is all 400 rows)
    assert head["target_mean"] == pytest.approx(train_scores.mean())
    assert head["target_std"] == pytest.approx(train_scores.std())
    texts = ["gray gray gray gray the a", "red red red red of and"]
    (high, values), (low, _) = loaded.classify(texts)
    assert values == {"score": high} and high == pytest.approx(12, abs=1.0) and low == pytest.approx(-8, abs=1.0)
    assert [s for s, _ in lm.classify(texts)] == pytest.approx([high, low], abs=1e-5)


def test_cli_scores_and_evaluates_a_regression_model(regressor, capsys):
    _, _, folder, test_file = regressor
    final = str(folder / "run" / "final")
    assert main(["classify", final, "--text", "gold gold gold gold to in", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["score"] == pytest.approx(4, abs=1.0)
    assert main(["eval", final, "--data", str(test_file), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert {"mse", "mae", "pearson", "spearman"} <= set(metrics)
    assert main(["classify", final, "--text", "x", "--threshold", "0.5"]) == 2  # no threshold for a number
    assert "multi-label" in capsys.readouterr().err


def test_gpt_regression_from_python_reads_the_last_token(tmp_path):
    train_file = write_csv(tmp_path / "train.csv", scored(300, 2), ("text", "score"))
    torch.manual_seed(0)
    lm = LM.new("gpt", tokenizer="wordpiece", vocab_size=80, corpus=train_file, **SMALL)
    lm.config.data.label_field = "score"
    result = lm.fit(train_file, objective="regress", regression_loss="huber", max_steps=150, batch_size=32, lr=3e-3,
                    warmup_steps=10, eval_every=150, weight_decay=0.0, progress=False)
    assert lm.classify("gold", threshold=None)[1].keys() == {"score"}
    assert result.eval["val_pearson"] > 0.8, result.eval  # a decoder sees the words in order, then the last one


def test_regression_metrics_match_definitions():
    true, predicted = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 1.5, 3.5, 5.0])
    report = regression_report(true, predicted)
    assert report["mse"] == pytest.approx((0.25 + 0.25 + 0.25 + 1.0) / 4) and report["mae"] == pytest.approx(0.625)
    assert report["pearson"] == pytest.approx(np.corrcoef(true, predicted)[0, 1])
    # ties share their average rank; a monotone transform keeps Spearman at 1
    assert report["spearman"] == pytest.approx(np.corrcoef([0, 1, 2, 3], [0.5, 0.5, 2, 3])[0, 1])
    assert spearman(true, np.exp(true)) == pytest.approx(1.0)


# -- multi-label --------------------------------------------------------------------------------------

def test_multilabel_learns_a_planted_two_label_rule(tagger):
    lm, result, folder, test_file = tagger
    assert lm.config.model.labels == ["x", "y"]
    metrics = lm.evaluate(test_file)
    assert metrics["subset_accuracy"] >= 0.95 and metrics["micro_f1"] >= 0.97, metrics
    assert result.eval["val_subset_accuracy"] == pytest.approx(metrics["subset_accuracy"])
    assert json.loads((folder / "run" / "eval.json").read_text())["labels"] == ["x", "y"]
    assert (folder / "run" / "label_f1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loaded = LM.from_pretrained(folder / "run" / "final")
    assert loaded.meta["classification"]["kind"] == "multilabel" and loaded.config.model.labels == ["x", "y"]
    results = loaded.classify(["the foo cat bar sea of", "foo sea sun and cat", "dog cat of sun", "the dog bar in sun"])
    assert [tags for tags, _ in results] == [["x", "y"], ["x"], [], ["y"]], results
    # a threshold of 0 gives every tag, of 1 (almost surely) none
    assert loaded.classify("dog cat of", threshold=0.0)[0] == ["x", "y"]


def test_cli_tags_with_a_threshold_and_evaluates(tagger, capsys):
    _, _, folder, test_file = tagger
    final = str(folder / "run" / "final")
    assert main(["classify", final, "--text", "foo the dog", "--threshold", "0.5"]) == 0
    assert capsys.readouterr().out.startswith("x\t")
    assert main(["classify", final, "--text", "foo the dog", "--json"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["labels"] == ["x"] and set(line["probabilities"]) == {"x", "y"}
    assert main(["eval", final, "--data", str(test_file)]) == 0
    out = capsys.readouterr().out
    assert "micro_f1" in out and "subset_accuracy" in out
    for bad in ("1.5", "-0.1"):
        assert main(["classify", final, "--text", "foo", "--threshold", bad]) == 2
        assert "between 0 and 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="between 0 and 1"):
        LM.from_pretrained(final).evaluate(test_file, threshold=2)


def test_tags_parse_from_separators_and_json_lists(tmp_path):
    assert parse_tags("a; b ;;a") == ["a", "b"] and parse_tags('["a", "b c"]') == ["a", "b c"] and parse_tags("") == []
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "one", "tags": ["a", "b"]}\n{"text": "two", "tags": []}\n', encoding="utf-8")
    data = read_labeled(path, label_field="tags", allow_empty_label=True)
    assert [parse_tags(label) for label in data.labels] == [["a", "b"], []]


def test_multilabel_metrics_match_definitions():
    true = np.array([[1, 0], [1, 1], [0, 0], [0, 1]])
    predicted = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])
    report = multilabel_report(true, predicted, ["a", "b"])
    # micro: 3 hits, 4 predicted, 4 true; per tag a: p 1, r 1; b: p 1/2, r 1/2
    assert report["micro_f1"] == pytest.approx(0.75) and report["macro_f1"] == pytest.approx(0.75)
    assert report["subset_accuracy"] == pytest.approx(0.5) and report["hamming_loss"] == pytest.approx(2 / 8)


# -- label smoothing ----------------------------------------------------------------------------------

def _smoothed(logits, target, eps):
    """The textbook definition: (1 - eps) * cross-entropy + eps * mean over classes of -log p."""
    log_p = logits.float().log_softmax(-1)
    nll = -log_p.gather(-1, target[:, None])[:, 0]
    return ((1 - eps) * nll + eps * (-log_p.mean(-1))).mean()


def test_label_smoothing_zero_is_plain_cross_entropy_and_positive_follows_the_definition():
    torch.manual_seed(0)
    gpt = tiny_model("gpt", vocab_size=50)
    ids, targets = torch.randint(0, 50, (3, 10)), torch.randint(0, 50, (3, 10))
    batch = {"ids": ids, "targets": targets}
    logits = gpt(ids).reshape(-1, 50)
    plain = F.cross_entropy(logits, targets.reshape(-1))
    windows = TokenWindows(np.arange(400) % 50, 10, 0.1)
    assert torch.equal(CausalLMTask(windows, 0, label_smoothing=0.0, chunked=False).loss(gpt, batch)[0], plain)
    # the default, chunked loss (tasks/chunked.py): the same sum in another order
    assert CausalLMTask(windows, 0, label_smoothing=0.0).loss(gpt, batch)[0].item() == pytest.approx(plain.item(),
                                                                                                  abs=1e-6)
    smoothed = CausalLMTask(windows, 0, label_smoothing=0.1).loss(gpt, batch)[0]
    assert smoothed.item() == pytest.approx(_smoothed(logits, targets.reshape(-1), 0.1).item(), rel=1e-6)

    bert = tiny_model("bert", vocab_size=50, labels=["a", "b", "c"])
    cls_batch = {"ids": ids, "pad_mask": torch.ones_like(ids, dtype=torch.bool),
                 "token_type_ids": torch.zeros_like(ids), "labels": torch.tensor([0, 2, 1])}
    cls_logits = bert.classify(ids).float()
    task = ClassificationTask(None, None, ["a", "b", "c"], seed=0, label_smoothing=0.0)
    assert torch.equal(task.loss(bert, cls_batch)[0], F.cross_entropy(cls_logits, cls_batch["labels"]))
    task.label_smoothing = 0.2
    expected = _smoothed(cls_logits, cls_batch["labels"], 0.2).item()
    assert task.loss(bert, cls_batch)[0].item() == pytest.approx(expected, rel=1e-6)

    labels = torch.full_like(ids, -100)
    labels[:, 3] = targets[:, 3]
    mlm = MaskedLMTask.__new__(MaskedLMTask)  # its loss reads only label_smoothing: no token file needed
    mlm.label_smoothing = 0.0
    chosen = labels != -100
    mlm_logits = bert.mlm_logits(bert.hidden_states(ids)[chosen]).float()
    assert torch.equal(mlm.loss(bert, {"ids": ids, "labels": labels})[0], F.cross_entropy(mlm_logits, labels[chosen]))
    mlm.label_smoothing = 0.1
    assert mlm.loss(bert, {"ids": ids, "labels": labels})[0].item() == pytest.approx(
        _smoothed(mlm_logits, labels[chosen], 0.1).item(), rel=1e-6)


def test_label_smoothing_does_not_change_what_evaluation_reports(corpus_file, tmp_path):
    from lmforge.tasks import make_task

    lm = LM.new("gpt", tokenizer="char", corpus=corpus_file, n_layer=1, n_head=2, n_embd=32, block_size=32)
    plain, _ = make_task(lm.bundle, lm.config.train, lm.config.data, tmp_path)
    lm.config.train.label_smoothing = 0.3
    smoothed, _ = make_task(lm.bundle, lm.config.train, lm.config.data, tmp_path / "s")
    assert smoothed.label_smoothing == 0.3
    assert smoothed.evaluate(lm.model, 2, 4, "cpu") == plain.evaluate(lm.model, 2, 4, "cpu")


# -- L1 ------------------------------------------------------------------------------------------------

def test_l1_covers_weight_matrices_not_embeddings_norms_or_biases():
    gpt = tiny_model("gpt", labels=["a", "b"])
    names = {name for name, _ in l1_parameters(gpt)}
    assert "classifier.weight" in names and "h.0.attn.qkv.weight" in names and "h.1.mlp.down.weight" in names
    assert not names & {"wte.weight", "wpe.weight", "lm_head.weight", "classifier.bias", "ln_f.weight"}
    assert all(".ln_" not in n and not n.endswith(".bias") for n in names)
    bert = tiny_model("bert")
    names = {name for name, _ in l1_parameters(bert)}
    assert {"pooler.weight", "mlm_dense.weight"} <= names
    assert not names & {"wte.weight", "wpe.weight", "wtt.weight", "lm_head.weight", "ln_emb.weight"}
    # the same as weight decay's matrices (dim >= 2) less the embedding tables
    matrices = {n for n, p in bert.named_parameters() if p.dim() >= 2}
    assert matrices - names == {"wte.weight", "wpe.weight", "wtt.weight"}


class _ZeroTask:
    """A task whose loss has no gradient at all, so the only gradient is the penalty's."""

    can_evaluate = False

    def train_batch(self, step, micro, batch_size):
        return {"ids": torch.zeros((1, 4), dtype=torch.long)}

    def loss(self, model, batch):
        return (model(batch["ids"]) * 0).sum(), {}

    def count_tokens(self, batch):
        return 4


def test_l1_adds_exactly_l1_times_the_absolute_sum_and_pulls_weights_to_zero():
    model = tiny_model("gpt").train()
    chosen = dict(l1_parameters(model))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    l1, lr = 1e-3, 1e-2
    expected = l1 * sum(p.abs().sum() for p in chosen.values()).item()
    assert l1_penalty(list(chosen.values())).item() == pytest.approx(expected / l1, rel=1e-6)
    records = []
    cfg = TrainConfig(max_steps=1, lr=lr, min_lr=lr, warmup_steps=0, weight_decay=0.0, grad_clip=0.0, l1=l1,
                      eval_every=0, device="cpu")
    train(model, _ZeroTask(), cfg, progress=False, hooks=[lambda step, record: records.append(record)])
    assert records[0]["l1_penalty"] == pytest.approx(expected, rel=1e-6) and records[0]["loss"] == 0.0
    for name, param in model.named_parameters():
        moved = param.detach() - before[name]
        if name in chosen:  # Adam's first step is lr * sign(gradient), and the gradient is l1 * sign(w)
            torch.testing.assert_close(moved, -lr * torch.sign(before[name]), rtol=1e-4, atol=1e-7)
        else:
            assert torch.equal(moved, torch.zeros_like(moved)), name


# -- bad input -------------------------------------------------------------------------------------------

def test_bad_targets_get_clear_errors(tmp_path):
    bad_score = write_csv(tmp_path / "s.csv", [{"text": "a", "score": "1.5"}, {"text": "b", "score": "high"}],
                          ("text", "score"))
    lm = LM.new("bert", tokenizer="wordpiece", vocab_size=40, corpus=bad_score, **SMALL)
    lm.config.data.label_field = "score"
    with pytest.raises(DataError, match=r"row 2 has score 'high', not a number"):
        lm.fit(bad_score, objective="regress", max_steps=1, progress=False)
    same = write_csv(tmp_path / "c.csv", [{"text": "a", "score": "2"}, {"text": "b", "score": "2"}], ("text", "score"))
    with pytest.raises(DataError, match="same score"):
        lm.fit(same, objective="regress", max_steps=1, progress=False)
    no_tags = write_csv(tmp_path / "t.csv", [{"text": "a", "tags": ""}, {"text": "b", "tags": "[]"}], ("text", "tags"))
    lm.config.data.label_field = "tags"
    with pytest.raises(DataError, match="every row has an empty tag list"):
        lm.fit(no_tags, objective="multilabel", max_steps=1, progress=False)
    broken = write_csv(tmp_path / "b.csv", [{"text": "a", "tags": "x"}, {"text": "b", "tags": "[x"}], ("text", "tags"))
    with pytest.raises(DataError, match="row 2"):
        lm.fit(broken, objective="multilabel", max_steps=1, progress=False)
    assert main(["train", "configs/classify.toml", "train.objective=regress", f"data.train={bad_score}",
                 "data.label_field=score", f"run.dir={tmp_path / 'run'}", "--quiet"]) == 2


def test_config_rejects_smoothing_a_regression_and_bad_values():
    with pytest.raises(ConfigError, match="label_smoothing"):
        build_config({"train": {"objective": "regress", "label_smoothing": 0.1}})
    for key, value in (("label_smoothing", 1.0), ("l1", -1e-6), ("regression_loss", "l1")):
        with pytest.raises(ConfigError, match=key):
            build_config({"train": {key: value}})
