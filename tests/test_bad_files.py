"""Bad input the hostile campaign of issue 21 found: each is refused with words that say what is wrong and what to
do, names the file, and writes nothing."""
from __future__ import annotations

import json

import pytest

from lmforge.cli import main
from lmforge.config import ConfigError, load_config
from lmforge.errors import ModelDirError
from lmforge.files import read_json, read_toml

RECIPE = "[model]\narch = \"gpt\"\nn_layer = 1\nn_head = 2\nn_embd = 16\nblock_size = 16\n"


def test_a_section_given_as_a_single_value_names_the_section(tmp_path, capsys):
    recipe = tmp_path / "scalar.toml"
    recipe.write_text('run = "x"\n' + RECIPE)
    with pytest.raises(ConfigError, match=r"section 'run' must be a table \(\[run\] followed by key = value lines\), "
                                          r"not the single value 'x'; for a run name write \[run\] with name = \"x\""):
        load_config(recipe)
    recipe.write_text(RECIPE.replace("[model]\n", "train = 3\n[model]\n"))
    assert main(["train", str(recipe), f"run.dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "section 'train' must be a table" in err and "AttributeError" not in err
    assert not (tmp_path / "run").exists()


def _fake_run(tmp_path):
    """A run directory with a final/ model directory (only the files that make them recognisable)."""
    run = tmp_path / "runs" / "x"
    final = run / "final"
    final.mkdir(parents=True)
    (run / "config.toml").write_text(RECIPE)
    (run / "checkpoints" / "step-4").mkdir(parents=True)
    for folder in (final, run / "checkpoints" / "step-4"):
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(b"")
    return run


@pytest.mark.parametrize("inside", ["final", "checkpoints/step-4"])
def test_resume_pointed_at_a_model_directory_names_the_run_directory(tmp_path, capsys, inside):
    run = _fake_run(tmp_path)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["train", str(recipe), "--resume", str(run / inside), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"cannot resume '{run / inside}': it is a model directory" in err
    assert f"--resume {run}" in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written inside it


def test_resume_at_a_lone_model_directory_suggests_model_init(tmp_path, capsys):
    model = tmp_path / "exported"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE)
    assert main(["train", str(recipe), "--resume", str(model)]) == 2
    assert f"model.init={model}" in capsys.readouterr().err
    assert sorted(p.name for p in model.iterdir()) == ["config.json", "model.safetensors"]


def test_weights_whose_names_do_not_fit_the_config_name_the_tensors(tmp_path, corpus_file, capsys):
    from lmforge.api import LM
    from lmforge.modeldir import load_model_dir

    lm = LM.new("bert", tokenizer="char", corpus=corpus_file, n_layer=1, n_head=2, n_embd=16, block_size=16,
                labels=["neg", "pos"])
    saved = lm.save(tmp_path / "classifier")
    meta = json.loads((saved / "config.json").read_text())
    meta["model"]["labels"] = []  # a plain encoder now: the classifier's tensors have no place
    (saved / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelDirError) as caught:
        load_model_dir(saved)
    message = str(caught.value)
    assert "Error(s) in loading state_dict" not in message
    assert f"'{saved / 'config.json'}'" in message
    assert "the file has tensors that model has no place for: " in message and "classifier.weight [2, 16]" in message
    meta["model"]["labels"] = ["neg", "pos"]
    meta["model"]["norm_position"] = "pre"  # a final norm the weights lack
    (saved / "config.json").write_text(json.dumps(meta))
    assert main(["classify", str(saved), "--text", "a"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "state_dict" not in err
    assert "the model it describes has tensors the file lacks: " in err and "ln_f.weight [16]" in err


@pytest.mark.parametrize("content,words", [
    (b"", "is empty; it should hold JSON"),
    (b"   \n", "is empty; it should hold JSON"),
    (b"\xff\xfe{}", "is not UTF-8 text (byte 0xff at offset 0); save it as UTF-8 JSON"),
    (b'{\n  "a": 1,\n  "b": \n}\n', "is not valid JSON at line 4, column 1: a value was expected"),
    (b'{\n  "a": 1,\n}\n', "at line 3, column 1: a key in double quotes was expected (JSON allows no trailing comma"),
    (b'{"a": 1}\n{"b": 2}\n', "at line 2, column 1: more text follows the first JSON value"),
])
def test_malformed_json_is_described_in_words_with_the_file_name(tmp_path, content, words):
    path = tmp_path / "config.json"
    path.write_bytes(content)
    with pytest.raises(ModelDirError) as caught:
        read_json(path, ModelDirError)
    assert str(caught.value).startswith(f"'{path}' ") and words in str(caught.value)
    assert "char " not in str(caught.value) and "codec can't decode" not in str(caught.value)


@pytest.mark.parametrize("content,words", [
    (b"[model]\nn_layer = \n", "is not valid TOML at line 2, column 11: invalid value: 'n_layer ='"),
    (b"[model\n", "is not valid TOML at line 1"),
    (b"\xff[model]\n", "is not UTF-8 text (byte 0xff at offset 0); save it as UTF-8 TOML"),
])
def test_malformed_toml_is_described_in_words_with_the_file_name(tmp_path, content, words, capsys):
    path = tmp_path / "recipe.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        read_toml(path, ConfigError)
    assert str(caught.value).startswith(f"'{path}' ") and words in str(caught.value)
    assert main(["train", str(path)]) == 2
    assert words in capsys.readouterr().err


def test_model_directory_with_a_malformed_config_json(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_bytes(b"")
    assert main(["generate", str(tmp_path / "m")]) == 2
    assert f"'{tmp_path / 'm' / 'config.json'}' is empty" in capsys.readouterr().err
