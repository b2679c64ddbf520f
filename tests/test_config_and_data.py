"""Configuration and input errors are clear, and leave nothing half-written."""
import json

import numpy as np
import pytest

from lmforge import LM
from lmforge.config import ConfigError, Config, load_config, to_toml
from lmforge.data.corpus import DataError, iter_documents, read_text
from lmforge.data.tokens import TokenWindows, build_token_file, open_tokens
from lmforge.modeldir import ModelDirError, read_model_config
from lmforge.tokenizer import Tokenizer

from conftest import small_corpus


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_toml_and_overrides_resolve(tmp_path):
    cfg_file = write(tmp_path / "my.toml", '[model]\narch = "llama"\nn_kv_head = 2\n[train]\nlr = 1e-3\n')
    cfg = load_config(cfg_file, ["train.lr=3e-4", 'data.paths=["a.txt", "b/"]', "model.dropout=0.1", "run.dir=out"])
    assert cfg.train.lr == 3e-4 and cfg.data.paths == ["a.txt", "b/"] and cfg.model.dropout == 0.1
    assert cfg.model.norm == "rmsnorm" and cfg.run.name == "my" and str(cfg.run.path) == "out"
    again = load_config(write(tmp_path / "again.toml", to_toml(cfg)))
    assert again == cfg  # the saved resolved config reads back the same


@pytest.mark.parametrize("override,words", [
    (["train.learning_rate=1"], ["unknown key 'train.learning_rate'", "lr"]),
    (["train.max_steps=many"], ["train.max_steps", "'many'"]),
    (["train.lr=-1"], ["train.lr", "greater than 0"]),
    (["model.arch=transformer"], ["model.arch", "'gpt'", "'llama'", "'bert'"]),
    (["nosection.key=1"], ["unknown section 'nosection'"]),
    (["lr=1"], ["section.key"]),
    (["train.lr"], ["section.key=value"]),
])
def test_bad_config_names_the_key_the_value_and_what_is_allowed(override, words):
    with pytest.raises(ConfigError) as error:
        load_config(None, override)
    for word in words:
        assert word in str(error.value)


def test_unknown_key_in_a_file_and_a_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'model.layers'"):
        load_config(write(tmp_path / "bad.toml", "[model]\nlayers = 4\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path / "broken.toml", "[model\n"))


def test_objective_must_fit_the_family():
    with pytest.raises(ConfigError, match="decoder"):
        load_config(None, ["train.objective=mlm"])
    assert Config(model={"arch": "bert"}).train.objective == "mlm"


def test_missing_file_and_empty_corpus(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        list(iter_documents([str(tmp_path / "nope.txt")]))
    empty = write(tmp_path / "empty.txt", "")
    with pytest.raises(ValueError, match="empty corpus"):
        LM.new("gpt", corpus=empty)
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match="holds no"):
        list(iter_documents([str(tmp_path / "folder")]))


def test_a_corpus_shorter_than_a_window_is_refused_and_leaves_no_run(tmp_path):
    short = write(tmp_path / "short.txt", "just a few characters here")
    lm = LM.new("gpt", corpus=short, n_layer=1, n_head=2, n_embd=16, block_size=32)
    with pytest.raises(DataError, match="too short.*block_size"):
        lm.fit(short, run_dir=tmp_path / "run", max_steps=5, progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "final").exists()


def test_invalid_utf8_is_replaced_with_a_warning_or_rejected(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café au lait\n".encode("latin-1"))
    with pytest.warns(UserWarning, match="1 invalid UTF-8 byte sequence.*replaced"):
        assert read_text(path) == "caf\ufffd au lait\n"
    with pytest.raises(DataError, match="not valid UTF-8.*offset 3"):
        read_text(path, errors="strict")


def test_jsonl_and_csv_records(tmp_path):
    write(tmp_path / "a.jsonl", '{"body": "first"}\n\n{"body": "second"}\n')
    assert [t for t, _ in iter_documents([str(tmp_path / "a.jsonl")], "body")] == ["first", "second"]
    with pytest.raises(DataError, match="no field 'text'"):
        list(iter_documents([str(tmp_path / "a.jsonl")]))
    write(tmp_path / "b.jsonl", '{"text": "ok"}\nnot json\n')
    with pytest.raises(DataError, match="b.jsonl:2: not valid JSON"):
        list(iter_documents([str(tmp_path / "b.jsonl")]))
    write(tmp_path / "c.csv", "text,label\nhello,1\nworld,0\n")
    assert [t for t, _ in iter_documents([str(tmp_path / "c.csv")])] == ["hello", "world"]


def test_token_file_round_trips_splits_and_is_reused(tmp_path):
    text = small_corpus(200)
    corpus = write(tmp_path / "c.txt", text)
    tok = Tokenizer.train("char", [text])
    path = build_token_file([str(corpus)], tok, tmp_path / "data")
    tokens = open_tokens(path)
    assert tokens.dtype == np.uint16 and tok.decode(tokens.tolist()) == text
    stamp = path.stat().st_mtime_ns
    assert build_token_file([str(corpus)], tok, tmp_path / "data").stat().st_mtime_ns == stamp
    windows = TokenWindows(tokens, 16, 0.1)
    x, y = windows.sample("val", 4, np.random.default_rng(0))
    assert x.shape == (4, 16) and (x[:, 1:] == y[:, :-1]).all()
    assert int(len(tokens) * 0.9) <= min(windows.splits["val"])


def test_documents_are_separated_by_end_of_text(tmp_path):
    write(tmp_path / "a.txt", "aaa")
    write(tmp_path / "b.txt", "bbb")
    tok = Tokenizer.train("char", ["aaabbb"])
    tokens = open_tokens(build_token_file([str(tmp_path)], tok, tmp_path / "data")).tolist()
    assert tokens == tok.encode("aaa") + [tok.eos_id] + tok.encode("bbb")


def test_bpe_tokenizer_round_trips_unicode(tmp_path):
    text = small_corpus(100) + "naïve café — 水浒传\n"
    tok = Tokenizer.train("bpe", [text], vocab_size=300)
    assert tok.decode(tok.encode("naïve café — 水浒传")) == "naïve café — 水浒传"
    assert tok.vocab_size <= 300 and len(tok.encode("the cat sees")) < len("the cat sees")
    tok.save(tmp_path / "tokenizer.json")
    assert Tokenizer.load(tmp_path).encode("the dog") == tok.encode("the dog")


def test_a_folder_that_is_not_a_model_directory_says_what_is_missing(tmp_path):
    with pytest.raises(ModelDirError, match="does not exist"):
        read_model_config(tmp_path / "nothing")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(ModelDirError, match="missing config.json, model.safetensors, tokenizer.json.*run directory"):
        read_model_config(tmp_path / "run")
    (tmp_path / "hf").mkdir()
    write(tmp_path / "hf" / "config.json", json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ModelDirError, match="Hugging Face checkpoint.*LM.from_pretrained"):
        read_model_config(tmp_path / "hf")
