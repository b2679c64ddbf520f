"""Data passes: PII scrubbing (precision/recall on a generated English+Chinese set), dedup, contamination,
augmentation, synthesis, data cards, bad input, and the CLI group."""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from lmforge.cli import main
from lmforge.data.augment import augment_rows, augment_file
from lmforge.data.contamination import drop_contaminated, find_contamination
from lmforge.data.corpus import DataError
from lmforge.data.dedup import dedup_corpus
from lmforge.data.pii import find_pii
from lmforge.data.scrub import Scrubber, scrub_corpus, scrub_text
from pii_samples import is_chinese, labeled_set

PRECISION_MIN, RECALL_MIN = 0.98, 0.97


def _precision_recall(samples):
    true_pos = predicted = actual = 0
    for text, spans in samples:
        found = set(find_pii(text))
        predicted += len(found)
        actual += len(spans)
        true_pos += len(found & set(spans))
    return true_pos / max(predicted, 1), true_pos / max(actual, 1)


def test_scrubber_precision_and_recall_english_and_chinese():
    samples = labeled_set(900, seed=0)
    for language, subset in (("en", [s for s in samples if not is_chinese(s[0])]),
                             ("zh", [s for s in samples if is_chinese(s[0])])):
        precision, recall = _precision_recall(subset)
        assert precision >= PRECISION_MIN and recall >= RECALL_MIN, (language, precision, recall)
    kinds = {kind for _, spans in samples for _, _, kind in spans}
    assert len(kinds) >= 9  # every detector family is exercised


def test_text_without_pii_is_unchanged():
    lookalikes = [text for text, spans in labeled_set(900, seed=1) if not spans]
    assert len(lookalikes) > 250
    for text in lookalikes:
        assert scrub_text(text) == text
    prose = Path(__file__).read_text(encoding="utf-8").split("def test_")[0]  # code and prose with no PII
    assert scrub_text("版本 1.2.3.4 于 2023-11-05 发布，订单号 202311051234。") == "版本 1.2.3.4 于 2023-11-05 发布，订单号 202311051234。"
    assert scrub_text(prose) == prose


def test_placeholders_and_consistent_pseudonyms():
    text = "mail a.b@example.com, phone 13812345678 or 138-1234-5678, again a.b@example.com, other c@d.org"
    assert scrub_text(text) == "mail [EMAIL], phone [PHONE] or [PHONE], again [EMAIL], other [EMAIL]"
    assert scrub_text("call 13912345678 4111 1111 1111 1111 or 4111111111111111") == "call [PHONE] [CREDIT_CARD] or [CREDIT_CARD]"
    out = Scrubber("pseudonym", salt="k").scrub(text)[0]
    tags = out.replace(",", "").split()
    emails = [t for t in tags if t.startswith("[EMAIL_")]
    phones = [t for t in tags if t.startswith("[PHONE_")]
    assert emails[0] == emails[1] != emails[2] and phones[0] == phones[1]
    assert Scrubber("pseudonym", salt="other").scrub(text)[0] != out  # the key changes every tag


def _write_corpus(folder: Path, rng: random.Random, n_docs: int = 30) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    samples = labeled_set(n_docs * 3, seed=5)
    (folder / "notes.txt").write_text("\n".join(t for t, _ in samples[:n_docs]) + "\n", encoding="utf-8")
    (folder / "sub").mkdir()
    with open(folder / "sub" / "rows.jsonl", "w", encoding="utf-8") as handle:
        for text, _ in samples[n_docs:2 * n_docs]:
            handle.write(json.dumps({"text": text, "meta": {"note": "call 13912345678"}, "id": rng.randint(0, 9)},
                                    ensure_ascii=False) + "\n")
    with open(folder / "table.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows((text, "x") for text, _ in samples[2 * n_docs:])


def test_scrub_corpus_mirrors_files_reports_counts_and_is_the_same_in_parallel(tmp_path):
    _write_corpus(tmp_path / "corpus", random.Random(0))
    serial = scrub_corpus(tmp_path / "corpus", tmp_path / "one", workers=1)
    parallel = scrub_corpus(tmp_path / "corpus", tmp_path / "two", workers=2)
    assert serial == parallel
    for name in ("notes.txt", "sub/rows.jsonl", "table.csv"):
        assert (tmp_path / "one" / name).read_text(encoding="utf-8") == (tmp_path / "two" / name).read_text(encoding="utf-8")
    expected = sum(len(spans) for _, spans in labeled_set(90, seed=5)) + 30  # + the nested phone of every record
    assert sum(serial["found"].values()) == expected and serial["found"]["PHONE"] >= 30
    rows = [json.loads(line) for line in (tmp_path / "one" / "sub" / "rows.jsonl").read_text(encoding="utf-8").splitlines()]
    assert all(row["meta"]["note"] == "call [PHONE]" for row in rows)
    card = json.loads((tmp_path / "one" / "data_card.json").read_text())
    assert card["passes"][0]["found"] == serial["found"]
    assert "scrub (placeholder)" in (tmp_path / "one" / "DATA_CARD.md").read_text()
    # a later pass over the scrubbed folder carries the scrub record forward
    dedup_corpus(tmp_path / "one", tmp_path / "three")
    assert [p["pass"] for p in json.loads((tmp_path / "three" / "data_card.json").read_text())["passes"]] == ["scrub", "dedup"]


def _documents(rng, n, words=60):
    vocab = [f"w{i}" for i in range(2000)]
    return [" ".join(rng.choice(vocab) for _ in range(words)) for _ in range(n)]


def test_dedup_removes_planted_exact_and_near_duplicates_and_keeps_the_first(tmp_path):
    rng = random.Random(1)
    docs = _documents(rng, 200)
    planted_near, planted_exact = [], []
    rows = [{"text": d, "id": i} for i, d in enumerate(docs)]
    for i in range(0, 200, 10):
        words = docs[i].split()
        words[rng.randrange(60)] = "edited"  # one word in 60 changed: Jaccard of 5-grams about 0.85
        rows.append({"text": " ".join(words), "id": f"near{i}"})
        planted_near.append(f"near{i}")
    for i in range(5, 200, 20):
        rows.append({"text": "  " + docs[i].upper() + " ", "id": f"exact{i}"})
        planted_exact.append(f"exact{i}")
    zh = "今天天气很好，我们一起去公园散步，然后在湖边喝茶聊天，直到太阳下山才回家。" * 2
    rows += [{"text": zh, "id": "zh"}, {"text": zh.replace("喝茶", "喝咖啡"), "id": "zh-near"}]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "docs.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    report = dedup_corpus(tmp_path / "in", tmp_path / "out", near=0.7)
    kept = [json.loads(line)["id"] for line in (tmp_path / "out" / "docs.jsonl").read_text(encoding="utf-8").splitlines()]
    assert kept == list(range(200)) + ["zh"]  # every original, first occurrence, in order; no planted copy
    assert report == {"documents_in": len(rows), "exact_duplicates": 10, "near_duplicates": 21, "documents_out": 201}


def test_contamination_finds_planted_overlap_and_none_on_disjoint_sets(tmp_path):
    rng = random.Random(2)
    train_docs = _documents(rng, 50, 200)
    eval_items = _documents(random.Random(3), 40, 20)
    planted = [0, 7, 19, 33]
    for j, i in enumerate(planted):  # an eval item copied into the middle of a training document
        words = train_docs[j].split()
        train_docs[j] = " ".join(words[:100] + eval_items[i].split() + words[100:])
    (tmp_path / "train").mkdir()
    for j, doc in enumerate(train_docs):
        (tmp_path / "train" / f"{j}.txt").write_text(doc, encoding="utf-8")
    with open(tmp_path / "test.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sentence", "label"])
        writer.writerows((item, "a") for item in eval_items)
    report = find_contamination(tmp_path / "train", tmp_path / "test.csv", eval_text_field="sentence")
    assert sorted(item["index"] for item in report["flagged"]) == planted
    assert all(item["overlap"] == 1.0 for item in report["flagged"])
    kept = drop_contaminated(tmp_path / "test.csv", report, tmp_path / "clean.csv", text_field="sentence")
    assert kept == 36 and len((tmp_path / "clean.csv").read_text().splitlines()) == 37
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a.txt").write_text(" ".join(_documents(random.Random(9), 30, 200)), encoding="utf-8")
    clean = find_contamination(tmp_path / "other", tmp_path / "test.csv", eval_text_field="sentence")
    assert clean["contaminated"] == 0 and clean["mean_overlap"] == 0.0


def test_augmentation_keeps_labels_is_seeded_and_spares_question_words():
    rows = [{"text": "What is the largest city in the world ?", "label": "LOC"},
            {"text": "Who wrote the famous novel about the old man and the sea ?", "label": "HUM"},
            {"text": "How many people live in the capital of France ?", "label": "NUM"}]
    first = augment_rows(rows, "text", n=4, seed=7)
    assert first == augment_rows(rows, "text", n=4, seed=7)
    assert first != augment_rows(rows, "text", n=4, seed=8)
    originals = {row["text"]: row["label"] for row in rows}
    label_of = {}
    for row in first:
        if row["text"] in originals:
            current = row["label"]
            assert current == originals[row["text"]]
        assert row["label"] == current  # each copy follows its source row, with its label
        label_of[row["text"]] = row["label"]
    new = [row for row in first if row["text"] not in originals]
    assert len(new) >= 9
    for row in new:
        wh = {"LOC": "What", "HUM": "Who", "NUM": "How"}[row["label"]]
        assert wh in row["text"].split()
    synonyms = augment_rows(rows[:1], "text", methods=["synonym"], n=3, seed=0, keep_original=False)
    assert {r["text"] for r in synonyms} & {"What is the biggest city in the world ?", "What is the largest metropolis in the world ?",
                                            "What is the largest city in the globe ?", "What is the greatest city in the world ?",
                                            "What is the largest town in the world ?", "What is the largest city in the earth ?",
                                            "What is the largest city in the planet ?"}


def test_augment_file_and_cli(tmp_path, capsys):
    source = tmp_path / "train.csv"
    source.write_text("text,label\nthe movie was very good,pos\na dull and boring story,neg\n", encoding="utf-8")
    assert main(["data", "augment", str(source), str(tmp_path / "aug.csv"), "--n", "2", "--seed", "1"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "aug.csv", encoding="utf-8")))
    assert len(rows) >= 4 and {r["label"] for r in rows} == {"pos", "neg"}
    assert rows[0] == {"text": "the movie was very good", "label": "pos"}
    assert main(["data", "augment", str(source), str(tmp_path / "aug.csv")]) == 2  # exists, no --overwrite
    assert "exists" in capsys.readouterr().err
    with pytest.raises(DataError, match="no column 'sentence'"):
        augment_file(source, tmp_path / "x.csv", text_field="sentence")


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("problem", ["binary", "latin1", "empty", "empty_folder"])
def test_bad_input_gives_clear_error_and_leaves_output_untouched(tmp_path, problem):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "good.txt").write_text("contact a@b.com\n", encoding="utf-8")
    if problem == "binary":
        (corpus / "blob.txt").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(range(256)))
        expected = "binary"
    elif problem == "latin1":
        (corpus / "old.txt").write_bytes("café crème à l'hôtel\n".encode("latin-1"))
        expected = "not valid UTF-8"
    elif problem == "empty":
        (corpus / "good.txt").write_text("", encoding="utf-8")
        expected = "empty"
    else:
        (corpus / "good.txt").unlink()
        expected = "holds no"
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous.txt").write_text("an earlier result\n")
    before = _snapshot(out)
    for run in (lambda: scrub_corpus(corpus, out, overwrite=True), lambda: dedup_corpus(corpus, out, overwrite=True)):
        with pytest.raises(DataError, match=expected):
            run()
        assert _snapshot(out) == before
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left behind


def test_cli_errors_name_the_problem(tmp_path, capsys):
    (tmp_path / "train.txt").write_text("some training text here\n", encoding="utf-8")
    (tmp_path / "test.csv").write_text("question,label\nwhat is it,a\n", encoding="utf-8")
    assert main(["data", "contamination", "--train", str(tmp_path / "train.txt"), "--eval", str(tmp_path / "test.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "no column 'text'" in err and "question" in err
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x.txt").write_text("keep")
    assert main(["data", "scrub", str(tmp_path / "train.txt"), str(tmp_path / "out")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["data", "scrub", str(tmp_path / "train.txt"), str(tmp_path / "clean"), "--quiet", "--workers", "1",
                 "--report", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["documents"] == 1


def test_a_jsonl_line_nested_too_deeply_is_named_by_the_streaming_passes_too(tmp_path, capsys):
    # the streaming passes read records through the same parser as training (corpus.parse_json_record)
    source = tmp_path / "records.jsonl"
    source.write_text('{"text": "fine"}\n' + "[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")
    assert main(["data", "scrub", str(source), str(tmp_path / "clean"), "--quiet", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "records.jsonl:2" in err and "nested too deeply" in err
    assert not (tmp_path / "clean").exists()


def test_a_pass_output_file_gets_the_umask_permissions_like_any_saved_file(tmp_path):
    import os
    import stat

    source = tmp_path / "train.csv"
    source.write_text("text,label\nthe movie was very good,pos\n", encoding="utf-8")
    old = os.umask(0o022)
    try:
        augment_file(source, tmp_path / "aug.csv", n=1, seed=1)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "aug.csv").stat().st_mode) == 0o644  # not mkstemp's 0600
