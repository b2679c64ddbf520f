"""The data passes inside training (data.scrub, data.dedup, data.contamination -> model card), the memorization
audit (exposure grows with repetitions, scrubbing removes it), synthesis, and the 100 MB memory bound (slow)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lmforge import LM
from lmforge.app.workflows.memorization import memorization_audit
from lmforge.cli import main
from lmforge.config import build_config
from lmforge.data.corpus import resolve_paths
from lmforge.app.workflows.synthesize import synthesize

from conftest import small_corpus

TINY = {"arch": "gpt", "n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64}


def test_train_with_scrub_dedup_and_contamination_writes_the_model_card(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    body = small_corpus(200)
    (corpus / "a.txt").write_text(body + "write to jane.roe@example.com or call 13912345678.\n", encoding="utf-8")
    (corpus / "copy.txt").write_text(body + "write to jane.roe@example.com or call 13912345678.\n", encoding="utf-8")
    (corpus / "b.txt").write_text(small_corpus(200, seed=3), encoding="utf-8")
    test = tmp_path / "test.txt"
    test.write_text(body.splitlines()[0] + " " + body.splitlines()[1] + "\nan entirely unseen sentence about quantum ferns\n")
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(textwrap.dedent(f"""
        [model]
        n_layer = 1
        n_head = 2
        n_embd = 32
        block_size = 32
        [data]
        paths = ["{corpus}"]
        [train]
        max_steps = 5
        eval_every = 0
        [run]
        dir = "{tmp_path / 'run'}"
        """))
    assert main(["train", str(recipe), "data.scrub=true", "data.dedup=true", f"data.contamination=[\"{test}\"]",
                 "--quiet"]) == 0
    prepared = tmp_path / "run" / "data" / "prepared" / "dedup"
    assert sorted(p.name for p in prepared.iterdir()) == ["DATA_CARD.md", "a.txt", "b.txt", "data_card.json"]
    assert "[EMAIL] or call [PHONE]" in (prepared / "a.txt").read_text()
    assert [p.name for p in resolve_paths([str(prepared)])] == ["a.txt", "b.txt"]  # the card is not training text
    card = (tmp_path / "run" / "final" / "README.md").read_text()
    assert "## Data" in card and f"source: {corpus}" in card
    assert "EMAIL 2, PHONE 2" in card  # scrub counts (both copies were scrubbed before dedup)
    assert "3 documents in, 1 exact and 0 near duplicates removed, 2 kept" in card
    assert f"contamination against {test}: 1 of 2 evaluation items" in card
    meta = json.loads((tmp_path / "run" / "final" / "config.json").read_text())
    assert [p["pass"] for p in meta["data"]["passes"]] == ["scrub", "dedup", "contamination"]
    vocab = json.loads((tmp_path / "run" / "final" / "tokenizer.json").read_text())["model"]["vocab"]
    assert "@" not in vocab  # the tokenizer was trained on the scrubbed text too


def _audit_config(tmp_path, scrub: bool):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(small_corpus(300) + "version 3 of 2024 has 12 items and 56 more in 789.\n", encoding="utf-8")
    return build_config({"model": TINY, "data": {"paths": [str(corpus)], "scrub": scrub},
                         "train": {"max_steps": 300, "batch_size": 16, "lr": 3e-3, "warmup_steps": 20,
                                   "eval_every": 0, "save_every": 0}})


def test_exposure_grows_with_repetitions_and_scrubbing_removes_it(tmp_path):
    plain = memorization_audit(_audit_config(tmp_path, False), canaries=4, repetitions=[0, 32], candidates=200,
                               progress=False, work_dir=tmp_path / "plain")
    by_reps = plain["exposure_by_repetitions"]
    assert by_reps["32"] > by_reps["0"] + 4 and by_reps["32"] > 0.8 * plain["max_exposure"], by_reps
    scrubbed = memorization_audit(_audit_config(tmp_path, True), canaries=4, repetitions=[0, 32], candidates=200,
                                  progress=False, work_dir=tmp_path / "scrubbed")
    assert scrubbed["scrubbed"] and scrubbed["exposure_by_repetitions"]["32"] < 3.0, scrubbed["exposure_by_repetitions"]
    assert "[PHONE]" in (tmp_path / "scrubbed" / "data" / "prepared" / "scrub" / "corpus.txt").read_text()


def test_synthesize_writes_distinct_scrubbed_samples(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(small_corpus(200) + "mail bob@example.org now.\n" * 40, encoding="utf-8")
    lm = LM.new("gpt", corpus=corpus, n_layer=1, n_head=2, n_embd=32, block_size=32)
    lm.fit(corpus, max_steps=150, batch_size=16, lr=3e-3, warmup_steps=10, eval_every=0, progress=False)
    out = tmp_path / "synth.jsonl"
    report = synthesize(lm, ["the cat", "mail "], 12, out, max_new_tokens=24, seed=1, batch_size=8)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == report["kept"] == 12
    assert len({r["text"] for r in rows}) == 12
    assert report["generated"] == 12 + report["exact_duplicates"] + report["near_duplicates"] + report["empty"]
    assert not any("bob@example.org" in r["text"] for r in rows)


@pytest.mark.slow
def test_scrub_and_dedup_of_100_mb_stay_in_bounded_memory(tmp_path):
    """From a 5 MB to a 100 MB corpus, scrub's peak memory (main process and workers) grows by under 20 MB: it
    is constant; dedup's grows by under 2 KiB per document (its index), whatever the documents' length."""
    script = textwrap.dedent("""
        import json, random, resource, sys
        from pathlib import Path
        from lmforge.data.scrub import scrub_corpus
        from lmforge.data.dedup import dedup_corpus
        size, folder = int(sys.argv[1]), Path(sys.argv[2])
        rng = random.Random(0)
        words = [f"w{i}" for i in range(5000)]
        (folder / "in").mkdir(parents=True)
        written, n = 0, 0
        with open(folder / "in" / "docs.jsonl", "w") as handle:
            while written < size:
                text = " ".join(rng.choice(words) for _ in range(600)) + f" mail u{n}@example.com call 1391234{n % 10000:04d}"
                line = json.dumps({"text": text}) + "\\n"
                handle.write(line)
                written, n = written + len(line), n + 1
        peak = lambda who: resource.getrusage(who).ru_maxrss  # KiB on Linux
        scrub_corpus(folder / "in", folder / "clean", workers=2)
        after_scrub, workers = peak(resource.RUSAGE_SELF), peak(resource.RUSAGE_CHILDREN)
        dedup_corpus(folder / "clean", folder / "dedup")
        print(json.dumps({"scrub_kb": after_scrub, "workers_kb": workers, "dedup_kb": peak(resource.RUSAGE_SELF),
                          "documents": n}))
    """)
    peaks = {}
    for size in (5_000_000, 100_000_000):
        folder = tmp_path / str(size)
        done = subprocess.run([sys.executable, "-c", script, str(size), str(folder)], capture_output=True, text=True,
                              check=True)
        peaks[size] = json.loads(done.stdout.strip().splitlines()[-1])
        card = json.loads((folder / "dedup" / "data_card.json").read_text())
        assert card["passes"][0]["found"]["EMAIL"] == peaks[size]["documents"]
    small, large = peaks[5_000_000], peaks[100_000_000]
    assert large["scrub_kb"] - small["scrub_kb"] < 20 * 1024, peaks
    assert large["workers_kb"] - small["workers_kb"] < 20 * 1024, peaks
    per_document_kb = (large["dedup_kb"] - small["dedup_kb"]) / (large["documents"] - small["documents"])
    assert per_document_kb < 2.0, (per_document_kb, peaks)


def test_data_and_audit_commands_have_help_with_examples(capsys):
    for argv in (["data"], ["data", "scrub"], ["data", "dedup"], ["data", "contamination"], ["data", "augment"],
                 ["data", "synthesize"], ["audit"], ["audit", "memorization"]):
        with pytest.raises(SystemExit) as done:
            main([*argv, "--help"])
        assert done.value.code == 0 and "examples:" in capsys.readouterr().out, argv


def test_synthesize_and_audit_from_the_command_line(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text(small_corpus(100), encoding="utf-8")
    LM.new("gpt", corpus=corpus, n_layer=1, n_head=2, n_embd=16, block_size=16).save(tmp_path / "model")
    (tmp_path / "prompts.txt").write_text("the cat\na dog\n", encoding="utf-8")
    assert main(["data", "synthesize", str(tmp_path / "model"), "--prompts", str(tmp_path / "prompts.txt"), "--n", "4",
                 "--out", str(tmp_path / "s.jsonl"), "--max-new-tokens", "12", "--quiet"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and {r["prompt"] for r in rows} == {"the cat", "a dog"}
    recipe = tmp_path / "audit.toml"
    recipe.write_text(f'[model]\nn_layer = 1\nn_head = 2\nn_embd = 16\nblock_size = 32\n[data]\npaths = ["{corpus}"]\n'
                      f'[train]\nmax_steps = 10\neval_every = 0\n[run]\ndir = "{tmp_path / "audit"}"\n')
    assert main(["audit", "memorization", "--config", str(recipe), "--canaries", "2", "--repetitions", "0,2",
                 "--candidates", "20", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "exposure (bits" in out and "   2 x" in out
    report = json.loads((tmp_path / "audit" / "memorization.json").read_text())
    assert [c["repetitions"] for c in report["canaries"]] == [0, 2] and report["candidates"] == 20
    assert main(["audit", "memorization", "--config", str(recipe), "--repetitions", "a,b"]) == 2
