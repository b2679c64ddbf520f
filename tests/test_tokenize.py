"""`lmforge data tokenize`: parallel, streaming tokenization gives the token file training builds, is skipped
when up to date, and keeps finished parts across a kill."""
import functools
import json

import numpy as np

from lmforge.cli import main
from lmforge.data import tokenize as tok
from lmforge.data.tokens import build_token_file, open_tokens
from lmforge.tokenizer import Tokenizer


def _corpus(root):
    from tests.conftest import small_corpus

    (root / "src").mkdir()
    (root / "src" / "a.txt").write_text(small_corpus(3000, seed=1))  # ~100 kB: several jobs at a small job size
    (root / "src" / "b.txt").write_text(small_corpus(500, seed=2))
    (root / "src" / "c.jsonl").write_text("".join(json.dumps({"text": f"record {i} says hi"}) + "\n" for i in range(50)))
    tokenizer = Tokenizer.train("bpe", [(root / "src" / "a.txt").read_text()], 300)
    tokenizer.save(root / "tokenizer.json")
    return tokenizer


def test_parallel_tokenization_matches_the_training_token_file_and_is_skipped_when_unchanged(tmp_path, monkeypatch, capsys):
    tokenizer = _corpus(tmp_path)
    monkeypatch.setattr(tok, "tokenize_corpus", functools.partial(tok.tokenize_corpus, job_bytes=16 << 10,
                                                                 piece_chars=4 << 10))
    args = ["data", "tokenize", str(tmp_path / "src"), "--tokenizer", str(tmp_path / "tokenizer.json"),
            "--out", str(tmp_path / "out"), "--workers", "2"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["skipped"] is False
    assert len(tok.plan_jobs(sorted((tmp_path / "src").iterdir()), 16 << 10)) > 4
    ours = np.array(open_tokens(tmp_path / "out" / "tokens.bin"))
    reference = np.array(open_tokens(build_token_file([str(tmp_path / "src")], tokenizer, tmp_path / "ref")))
    assert tokenizer.decode(ours.tolist()) == tokenizer.decode(reference.tolist())  # the same text, eos included
    assert abs(len(ours) - len(reference)) <= 0.001 * len(reference)  # pieces cut at other line ends
    assert (ours == tokenizer.eos_id).sum() == (reference == tokenizer.eos_id).sum() == 51
    # the same sources and tokenizer: training's own check accepts the file as up to date, and so does a rerun
    assert build_token_file([str(tmp_path / "src")], tokenizer, tmp_path / "out") == tmp_path / "out" / "tokens.bin"
    assert main(args) == 0 and json.loads(capsys.readouterr().out.splitlines()[-1])["skipped"] is True
    assert not (tmp_path / "out" / "parts").exists()


def test_a_killed_tokenization_keeps_its_finished_parts(tmp_path, monkeypatch, capsys):
    tokenizer = _corpus(tmp_path)
    small = dict(workers=1, job_bytes=16 << 10)
    whole = tok.tokenize_corpus([str(tmp_path / "src")], tokenizer, tmp_path / "whole", progress=False, **small)
    real = tok._join

    def killed(*args):
        raise KeyboardInterrupt  # killed after the parts were written, before the join

    monkeypatch.setattr(tok, "_join", killed)
    try:
        tok.tokenize_corpus([str(tmp_path / "src")], tokenizer, tmp_path / "out", progress=False, **small)
    except KeyboardInterrupt:
        pass
    parts = sorted((tmp_path / "out" / "parts").glob("*.bin"))
    assert len(parts) > 4
    parts[-1].unlink()  # as if the kill came before the last part landed
    monkeypatch.setattr(tok, "_join", real)
    capsys.readouterr()
    again = tok.tokenize_corpus([str(tmp_path / "src")], tokenizer, tmp_path / "out", progress=True, **small)
    assert f"resuming: {len(parts) - 1} of {len(parts)} parts were already done" in capsys.readouterr().err
    assert again["n_tokens"] == whole["n_tokens"]
    assert np.array_equal(open_tokens(tmp_path / "out" / "tokens.bin"), open_tokens(tmp_path / "whole" / "tokens.bin"))
