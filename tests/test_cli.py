"""The command line, end to end: train, resume, generate, eval, and its errors."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def recipe(tmp_path, corpus_file):
    path = tmp_path / "tiny.toml"
    path.write_text(f"""
[model]
n_layer = 2
n_head = 2
n_embd = 32
block_size = 32
[data]
paths = ["{corpus_file}"]
[train]
max_steps = 40
batch_size = 8
lr = 3e-3
warmup_steps = 5
eval_every = 20
eval_steps = 2
save_every = 20
[run]
dir = "{tmp_path / 'run'}"
""")
    return path


def test_train_generate_eval_and_resume(recipe, tmp_path, capsys):
    assert main(["train", str(recipe), "--quiet"]) == 0
    out = capsys.readouterr().out
    final = tmp_path / "run" / "final"
    assert f"model saved to {final}" in out and (final / "model.safetensors").is_file()
    saved = (tmp_path / "run" / "config.toml").read_text()
    assert "max_steps = 40" in saved and "vocab_size" in saved

    assert main(["generate", str(final), "--prompt", "the cat", "--max-new-tokens", "20", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("the cat")
    assert main(["generate", str(final), "--prompt", "a", "--prompt", "the", "--max-new-tokens", "5", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in rows] == ["a", "the"]

    held_out = tmp_path / "held.txt"
    held_out.write_text("the cat sees the blue sea.\na dog likes some bread.\n")
    assert main(["eval", str(final), "--data", str(held_out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result) >= {"loss", "perplexity", "tokens"} and result["tokens"] == len(held_out.read_text()) - 1
    assert 1 < result["perplexity"] < 30

    # starting the same run again would overwrite it: refused, with the way to continue
    assert main(["train", str(recipe), "--quiet"]) == 2
    assert "--resume" in capsys.readouterr().err
    # resume with more steps continues from step 40
    assert main(["train", str(recipe), "train.max_steps=60", "--resume", str(tmp_path / "run"), "--quiet"]) == 0
    assert "trained 60 steps" in capsys.readouterr().out
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 60


@pytest.mark.parametrize("args,words", [
    (["train", "nope.toml"], ["does not exist"]),
    (["generate", "no/such/dir"], ["does not exist"]),
    (["eval", ".", "--data", "x.txt"], ["not a model directory", "missing"]),
])
def test_errors_are_one_clear_line_and_exit_2(args, words, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and all(w in err for w in words) and "Traceback" not in err


def test_resume_with_a_different_architecture_is_refused(recipe, tmp_path, capsys):
    assert main(["train", str(recipe), "train.max_steps=20", "--quiet"]) == 0
    assert main(["train", str(recipe), "model.n_layer=3", "--resume", str(tmp_path / "run"), "--quiet"]) == 2
    assert "model.n_layer: saved 2, config 3" in capsys.readouterr().err


def test_every_command_has_help_with_examples(capsys):
    for command in ["train", "generate", "eval", "fill-mask", "classify", "demo"]:
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0 and "examples:" in capsys.readouterr().out, command
    out = subprocess.run([sys.executable, "-m", "lmforge", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "COMMAND" in out.stdout


def test_readme_commands_are_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```")[1]
    assert "make demo" in first_block and "make test" in first_block
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    makefile = (ROOT / "Makefile").read_text()
    assert "torch==2.13.0" in makefile and "pip install" in makefile
