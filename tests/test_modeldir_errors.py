"""Broken lmforge model directories: each gives an error that names the file and what is wrong."""
from __future__ import annotations

import json

import pytest

from lmforge.api import LM
from lmforge.cli import main
from lmforge.modeldir import ModelDirError, load_model_dir


@pytest.fixture
def saved(tmp_path, corpus_file):
    lm = LM.new("gpt", tokenizer="char", corpus=corpus_file, n_layer=2, n_head=4, n_embd=16, block_size=32)
    return lm.save(tmp_path / "model")


@pytest.mark.parametrize("content", ["42", '"x"', "null", "[1, 2]"])
def test_config_json_that_is_not_an_object(saved, content):
    (saved / "config.json").write_text(content)
    with pytest.raises(ModelDirError, match=r"config.json' must hold a JSON object"):
        load_model_dir(saved)


def test_wrong_types_in_config_json_name_the_file_and_the_key(saved, capsys):
    meta = json.loads((saved / "config.json").read_text())
    meta["model"]["n_layer"] = "four"
    (saved / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelDirError, match=r"config.json.*\n  model.n_layer: .*'four'") as caught:
        load_model_dir(saved)
    assert "pydantic" not in str(caught.value) and "errors.pydantic.dev" not in str(caught.value)
    meta["model"] = "gpt"
    (saved / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelDirError, match="no 'model' section"):
        load_model_dir(saved)
    assert main(["generate", str(saved), "--prompt", "a"]) == 2
    assert capsys.readouterr().err.startswith("error: ")


@pytest.mark.parametrize("key,value,message", [("n_embd", 32, "says n_embd=32, the weights have 16"),
                                               ("vocab_size", 200, "says vocab_size=200, the weights have"),
                                               ("block_size", 64, "says block_size=64, the weights have 32"),
                                               ("n_layer", 3, "says n_layer=3, the weights have 2")])
def test_weights_that_disagree_with_config_json_name_the_setting(saved, key, value, message):
    meta = json.loads((saved / "config.json").read_text())
    meta["model"][key] = value
    (saved / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelDirError, match=message) as caught:
        load_model_dir(saved)
    assert "size mismatch" not in str(caught.value)


def test_an_intact_model_directory_still_loads(saved):
    model, tokenizer, config, _ = load_model_dir(saved)
    assert config.n_embd == 16 and tokenizer.vocab_size == config.vocab_size


def test_a_directory_loads_in_the_dtype_it_was_saved_in(saved, tmp_path):
    """config.json records the weights' dtype: a bf16 model saved loads as bf16 (the same values), float32 when
    asked; a directory from before the record (no "dtype") loads as float32."""
    import torch

    bf16 = LM.from_pretrained(saved, dtype="bfloat16")
    again = bf16.save(tmp_path / "bf16")
    assert json.loads((again / "config.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((saved / "config.json").read_text())["dtype"] == "float32"
    loaded = load_model_dir(again).model
    assert loaded.wte.weight.dtype == torch.bfloat16 and torch.equal(loaded.wte.weight, bf16.model.wte.weight)
    assert load_model_dir(again, dtype="float32").model.wte.weight.dtype == torch.float32
    meta = json.loads((again / "config.json").read_text())
    del meta["dtype"]
    (again / "config.json").write_text(json.dumps(meta))
    assert load_model_dir(again).model.wte.weight.dtype == torch.float32


def test_fine_tuning_a_bf16_directory_starts_from_float32_weights(saved, tmp_path, corpus_file):
    """model.init of a directory saved in bf16 trains float32 weights (train.dtype=bfloat16 is autocast over them),
    as before config.json recorded the dtype."""
    import torch

    from lmforge.app.building import build_bundle
    from lmforge.config import Config

    bf16 = LM.from_pretrained(saved, dtype="bfloat16").save(tmp_path / "bf16")
    config = Config.model_validate({"model": {"arch": "gpt", "init": str(bf16)}, "data": {"paths": [str(corpus_file)]}})
    bundle, _ = build_bundle(config)
    assert bundle.model.wte.weight.dtype == torch.float32
