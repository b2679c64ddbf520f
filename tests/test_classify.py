"""Classification for both families: learning, saved labels, fine-tuning groups, metrics, CLI, bad input."""
import csv
import json
import random

import numpy as np
import pytest
import torch

from lmforge.api import LM

from lmforge.app.training import train_from_config
from lmforge.cli import main
from lmforge.config import TrainConfig, build_config, load_config
from lmforge.data.corpus import DataError
from lmforge.data.labeled import encode_example, read_labeled, read_texts_for_prediction
from lmforge.infer.metrics import classification_report
from lmforge.tasks import layerwise_groups, make_task

POSITIVE = ["good", "great", "excellent", "wonderful", "superb", "delightful", "moving", "charming"]
NEGATIVE = ["bad", "awful", "terrible", "boring", "dreadful", "dull", "tedious", "clumsy"]
FILLER = ["the", "film", "was", "a", "story", "movie", "and", "very", "plot", "acting", "with", "it"]


def reviews(n, seed):
    """A separable toy sentiment set: the label is fixed by which list the two key words come from."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["neg", "pos"])
        words = rng.sample(FILLER, 5) + rng.sample(POSITIVE if label == "pos" else NEGATIVE, 2)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_csv(path, rows, fields=("text", "label")):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("labeled")
    return folder, write_csv(folder / "train.csv", reviews(300, 0)), write_csv(folder / "test.csv", reviews(80, 1))


SMALL = dict(n_layer=2, n_head=4, n_embd=32, block_size=32)
FIT = dict(max_steps=120, batch_size=16, lr=3e-3, min_lr=3e-4, warmup_steps=10, eval_every=40, weight_decay=0.0,
           progress=False)


@pytest.fixture(scope="module")
def bert_classifier(data):
    folder, train, test = data
    torch.manual_seed(0)
    lm = LM.new("bert", tokenizer="wordpiece", vocab_size=120, corpus=train, **SMALL)
    assert lm.config.model.labels == []  # no head yet: the fit makes it from the labels it finds
    lm.config.data.test = str(test)
    result = lm.fit(train, objective="classify", run_dir=folder / "run", **FIT)
    return lm, result, folder


def test_bert_learns_a_separable_task_from_scratch(bert_classifier, data):
    lm, result, _ = bert_classifier
    _, _, test = data
    assert lm.config.model.labels == ["neg", "pos"]
    metrics = lm.evaluate(test)
    assert metrics["accuracy"] >= 0.95, metrics
    assert set(metrics) >= {"accuracy", "macro_f1", "per_class", "confusion", "labels"}
    assert np.array(metrics["confusion"]).sum() == 80
    assert result.eval["val_accuracy"] >= 0.95


def test_saved_label_names_come_back_on_load(bert_classifier):
    lm, _, folder = bert_classifier
    final = folder / "run" / "final"
    loaded = LM.from_pretrained(final)
    assert loaded.config.model.labels == ["neg", "pos"]
    assert json.loads((final / "config.json").read_text())["model"]["labels"] == ["neg", "pos"]
    texts = ["a wonderful and charming film", "boring and dreadful plot"]
    assert [label for label, _ in loaded.classify(texts)] == ["pos", "neg"]
    label, probabilities = loaded.classify("superb acting")
    assert label == "pos" and set(probabilities) == {"neg", "pos"} and abs(sum(probabilities.values()) - 1) < 1e-5
    for (_, p), (_, q) in zip(loaded.classify(texts), lm.classify(texts)):
        assert all(abs(p[k] - q[k]) < 1e-5 for k in p)
    # the end of the run leaves the validation report and the confusion matrix picture
    assert (folder / "run" / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((folder / "run" / "eval.json").read_text())["labels"] == ["neg", "pos"]


def test_gpt_learns_the_same_task(data):
    _, train, test = data
    torch.manual_seed(0)
    lm = LM.new("gpt", tokenizer="bpe", vocab_size=320, corpus=train, **SMALL)
    lm.fit(train, objective="classify", **{**FIT, "max_steps": 200})
    assert lm.config.model.labels == ["neg", "pos"]
    assert lm.evaluate(test)["accuracy"] >= 0.9


def test_cli_fine_tunes_a_pretrained_encoder_then_classifies_and_evaluates(data, tmp_path, capsys):
    folder, train, test = data
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(r["text"] for r in reviews(300, 5)), encoding="utf-8")
    torch.manual_seed(0)
    base = LM.new("bert", tokenizer="wordpiece", vocab_size=120, corpus=corpus, position="rope", **SMALL)
    base.fit(corpus, objective="mlm", max_steps=20, batch_size=16, progress=False)
    base_dir = base.save(tmp_path / "pretrained")
    run = tmp_path / "clf"
    overrides = [f"model.init={base_dir}", f"data.train={train}", f"data.test={test}", f"run.dir={run}",
                 "model.n_layer=2", "model.n_head=4", "model.n_embd=32", "model.block_size=32",
                 "train.max_steps=150", "train.lr=2e-3", "train.head_lr=5e-3", "train.layer_lr_decay=0.8",
                 "train.eval_every=50", "train.patience=2", "train.warmup_steps=10", "train.batch_size=16",
                 "model.pooling=mean"]  # a fine-tuning may choose its pooling; the pretrained model had 'cls'
    assert main(["train", "configs/classify.toml", *overrides, "--quiet"]) == 0
    assert "model saved to" in capsys.readouterr().out
    assert LM.from_pretrained(run / "final").config.model.pooling == "mean"
    assert main(["classify", str(run / "final"), "--text", "a delightful and moving story"]) == 0
    assert capsys.readouterr().out.startswith("pos")
    reviews_file = write_csv(tmp_path / "reviews.csv", [{"text": "dull and tedious"}, {"text": "great acting"}],
                             fields=("text",))
    assert main(["classify", str(run / "final"), "--file", str(reviews_file), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["label"] for line in lines] == ["neg", "pos"]
    assert main(["eval", str(run / "final"), "--data", str(test), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert metrics["accuracy"] >= 0.9 and len(metrics["confusion"]) == 2 and "per_class" in metrics


def test_layerwise_groups_cover_each_parameter_once_with_decayed_rates():
    lm = LM.new("bert", tokenizer="wordpiece", vocab_size=60, corpus=None, **{**SMALL, "n_layer": 3})
    lm.model.classifier = torch.nn.Linear(32, 2)
    cfg = TrainConfig(lr=1e-4, head_lr=1e-3, layer_lr_decay=0.5)
    groups = layerwise_groups(lm.model, cfg)
    seen = [id(p) for params, _ in groups for p in params]
    assert len(seen) == len(set(seen)) == len({id(p) for p in lm.model.parameters()})
    scale_of = {id(p): scale for params, scale in groups for p in params}
    assert scale_of[id(lm.model.classifier.weight)] == pytest.approx(10.0)
    assert scale_of[id(lm.model.h[2].attn.qkv.weight)] == pytest.approx(0.5)
    assert scale_of[id(lm.model.h[0].attn.qkv.weight)] == pytest.approx(0.125)
    assert scale_of[id(lm.model.wte.weight)] == pytest.approx(0.0625)


def test_metrics_match_a_hand_computed_example():
    true = [0, 0, 0, 1, 1, 2]
    predicted = [0, 0, 1, 1, 2, 2]
    report = classification_report(true, predicted, ["a", "b", "c"])
    assert report["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["per_class"]["a"] == {"precision": 1.0, "recall": pytest.approx(2 / 3), "f1": pytest.approx(0.8),
                                        "support": 3}
    assert report["per_class"]["b"]["precision"] == pytest.approx(0.5)
    assert report["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_text_pairs_get_segment_ids(tmp_path):
    lm = LM.new("bert", tokenizer="wordpiece", vocab_size=80, corpus=None, **SMALL)
    tok = lm.tokenizer
    ids, types = encode_example(tok, "the function returns", "a value", 32)
    assert ids[0] == tok.cls_id and ids.count(tok.sep_id) == 2 and ids[-1] == tok.sep_id
    assert types[:ids.index(tok.sep_id) + 1] == [0] * (ids.index(tok.sep_id) + 1) and types[-1] == 1
    long = " ".join(["word"] * 100)
    ids, types = encode_example(tok, long, long, 32)
    assert len(ids) == 32 and ids.count(tok.sep_id) == 2


def test_class_weights_balance_an_imbalanced_set(tmp_path):
    rows = [r for r in reviews(300, 3) if r["label"] == "pos"][:90] + [r for r in reviews(300, 4) if r["label"] == "neg"][:10]
    train = write_csv(tmp_path / "imbalanced.csv", rows)
    lm = LM.new("bert", tokenizer="wordpiece", vocab_size=80, corpus=train, **SMALL)
    raw = lm.config.model_dump()
    raw["data"]["train"] = str(train)
    raw["train"].update(objective="classify", class_weights=True)
    lm.config = build_config(raw)
    task, _ = make_task(lm.bundle, lm.config.train, lm.config.data, tmp_path)
    weights = dict(zip(task.labels, task.weights.tolist()))
    assert weights["neg"] > 3 * weights["pos"]


# -- bad input: a clear DataError, and no run directory left behind -----------------------------------------
def _train_expecting_error(tmp_path, train, match, extra=()):
    run = tmp_path / "run"
    config = load_config("configs/classify.toml", [f"data.train={train}", f"run.dir={run}", "model.n_layer=1",
                                                   "model.n_embd=16", "model.n_head=2", "tokenizer.vocab_size=60",
                                                   "train.max_steps=2", *extra])
    with pytest.raises(DataError, match=match):
        train_from_config(config, progress=False)
    assert not run.exists() or not any(run.rglob("*")), "a failed run left files behind"


def test_missing_label_column_names_file_and_columns(tmp_path):
    train = write_csv(tmp_path / "train.csv", [{"text": "a", "sentiment": "pos"}], fields=("text", "sentiment"))
    _train_expecting_error(tmp_path, train, r"train.csv.*no column 'label'.*columns: text, sentiment")


def test_empty_label_is_an_error(tmp_path):
    train = write_csv(tmp_path / "train.csv", [{"text": "a", "label": "pos"}, {"text": "b", "label": ""}])
    _train_expecting_error(tmp_path, train, "row 2 has an empty 'label'")


def test_empty_file_is_an_error(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("text,label\n", encoding="utf-8")
    _train_expecting_error(tmp_path, train, "no labeled rows")


def test_a_single_class_is_an_error(tmp_path):
    train = write_csv(tmp_path / "train.csv", [{"text": t, "label": "pos"} for t in ("a b", "c d", "e f")])
    _train_expecting_error(tmp_path, train, "only one class")


def test_bad_encoding_is_an_error_in_strict_mode_and_a_warning_otherwise(tmp_path):
    train = tmp_path / "train.csv"
    train.write_bytes("text,label\ncaf\xe9 noir,pos\nthe film,neg\n".encode("latin-1"))
    _train_expecting_error(tmp_path, train, "not valid UTF-8", ["data.encoding_errors=\"strict\""])
    with pytest.warns(UserWarning, match="invalid UTF-8"):
        data = read_labeled(train, errors="replace")
    assert data.texts[0] == "caf\ufffd noir" and data.labels == ["pos", "neg"]


def test_jsonl_with_other_column_names_and_unknown_eval_labels(tmp_path, bert_classifier):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps({"review": r["text"], "stars": r["label"]}) for r in reviews(5, 2)) + "\n")
    data = read_labeled(path, text_field="review", label_field="stars")
    assert len(data) == 5
    lm, _, _ = bert_classifier
    odd = tmp_path / "odd.csv"
    write_csv(odd, [{"text": "great", "label": "neutral"}])
    with pytest.raises(DataError, match="labels the model does not know: 'neutral'"):
        lm.evaluate(odd)


def test_prediction_files_and_their_errors(tmp_path):
    txt = tmp_path / "reviews.txt"
    txt.write_text("first review\n\nsecond review\n", encoding="utf-8")
    assert read_texts_for_prediction(txt) == ["first review", "second review"]
    with pytest.raises(DataError, match="no column 'text'"):
        read_texts_for_prediction(write_csv(tmp_path / "x.csv", [{"body": "a"}], fields=("body",)))
    with pytest.raises(DataError, match="does not exist"):
        read_texts_for_prediction(tmp_path / "missing.csv")


def test_a_new_head_depends_on_the_seed_alone():
    from lmforge.tasks import attach_head

    heads = []
    for seed, burn in ((3, 0), (3, 1000), (4, 0)):
        lm = LM.new("bert", vocab_size=60, corpus=None, **SMALL)
        torch.rand(burn)  # whatever ran before moved the global random state
        state = torch.random.get_rng_state()
        attach_head(lm.bundle, ["neg", "pos"], seed)
        assert torch.equal(torch.random.get_rng_state(), state)  # and attaching a head leaves it alone
        heads.append(lm.model.classifier.weight.detach().clone())
    assert torch.equal(heads[0], heads[1]) and not torch.equal(heads[0], heads[2])
