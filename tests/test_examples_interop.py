"""The two classic programs, examples/bert_mlm.py and examples/gpt2_finetune.py, run on tiny Hugging Face models."""
from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from conftest import small_corpus  # noqa: E402
from lmforge.api import LM  # noqa: E402
from test_interop import make_hf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def quiet_load(path) -> LM:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LM.from_pretrained(path)


def test_bert_mlm_example_lowers_the_masked_lm_loss_and_fills_the_mask(tmp_path):
    _, model = make_hf(tmp_path, "bert")
    data = tmp_path / "text.txt"
    data.write_text(small_corpus(300), encoding="utf-8")
    out = run("bert_mlm.py", "--model", str(model), "--data", str(data), "--epochs", "3", "--lr", "2e-3",
              "--sentence", "the cat [MASK] the red apple.", "--save", str(tmp_path / "tuned"))
    assert "before:" in out and "after:" in out
    before, after = quiet_load(model).evaluate(data)["loss"], quiet_load(tmp_path / "tuned").evaluate(data)["loss"]
    assert after < before - 0.25


def test_gpt2_finetune_example_adds_tokens_trains_and_generates(tmp_path):
    _, model = make_hf(tmp_path, "gpt2")
    data = tmp_path / "text.txt"
    data.write_text(small_corpus(300), encoding="utf-8")
    out = run("gpt2_finetune.py", "--model", str(model), "--data", str(data), "--epochs", "1", "--lr", "3e-3",
              "--save-hf", str(tmp_path / "tuned"))
    assert "added 2 tokens" in out and "Once upon a time" in out
    tuned = quiet_load(tmp_path / "tuned")
    assert tuned.tokenizer.encode("<|user|>") == [tuned.tokenizer.token_to_id("<|user|>")]
    assert tuned.evaluate(data)["loss"] < quiet_load(model).evaluate(data)["loss"] - 0.5
