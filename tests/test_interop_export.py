"""Export to Hugging Face, round trips, vocabulary growth, and the bad inputs of `lmforge convert`."""
from __future__ import annotations

import json
import pickle

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmforge.api import LM  # noqa: E402
from lmforge.cli import main  # noqa: E402
from test_interop import VOCAB, load, make_hf, padded_batch  # noqa: E402

TINY = dict(n_layer=2, n_head=4, n_embd=32, block_size=32)


def trained(arch: str, corpus_file, steps: int = 3, **options) -> LM:
    """A tiny lmforge model trained a few steps (so no weight is at its initial value)."""
    kind = "wordpiece" if arch == "bert" else "char"
    lm = LM.new(arch, tokenizer=kind, vocab_size=80, corpus=corpus_file, lowercase=arch == "bert", **{**TINY, **options})
    if steps:
        lm.fit(corpus_file, max_steps=steps, batch_size=4, warmup_steps=0, eval_every=0, lr=1e-2, progress=False)
    return lm


AUTO = {"gpt": "AutoModelForCausalLM", "llama": "AutoModelForCausalLM", "bert": "AutoModelForMaskedLM"}


@pytest.mark.parametrize("arch,options", [("gpt", {}), ("llama", {"n_kv_head": 2, "tie_embeddings": False}),
                                          ("bert", {})])
def test_export_loads_in_transformers_and_comes_back_bit_exact(tmp_path, corpus_file, arch, options):
    lm = trained(arch, corpus_file, **options)
    lm.save_hf(tmp_path / "hf")
    auto = getattr(transformers, AUTO[arch])
    hf, info = auto.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    pad = lm.tokenizer.pad_id
    ids, mask = padded_batch(pad)
    ids = ids % lm.tokenizer.vocab_size
    with torch.no_grad():
        theirs = hf.eval()(input_ids=ids, attention_mask=mask.long()).logits
        ours = lm.model(ids, pad_mask=mask)
    assert (ours - theirs)[mask].abs().max() < 1e-4
    text = "the old man finds the blue sea."
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    special = arch == "bert"
    assert tok(text, add_special_tokens=special)["input_ids"] == lm.tokenizer.encode(text, add_special_tokens=special)
    back = LM.from_pretrained(tmp_path / "hf")
    ours_state, back_state = lm.model.state_dict(), back.model.state_dict()
    if arch == "bert":  # BertForMaskedLM has no pooler (only a classifier reads it): it comes back fresh
        ours_state = {k: v for k, v in ours_state.items() if not k.startswith("pooler.")}
        back_state = {k: v for k, v in back_state.items() if not k.startswith("pooler.")}
    assert ours_state.keys() == back_state.keys()
    assert all(torch.equal(ours_state[k], back_state[k]) for k in ours_state)
    # without a head, classifier_bias only says what a later head gets: HF's form for its decoders (no bias)
    same = {"init", "classifier_bias"}
    assert back.config.model.model_dump(exclude=same) == lm.config.model.model_dump(exclude=same)


@pytest.mark.parametrize("arch,options", [("gpt", {"classifier_bias": False}),
                                          ("llama", {"classifier_bias": False}), ("bert", {})])
def test_exported_classifiers_load_in_auto_sequence_classification(tmp_path, corpus_file, arch, options):
    torch.manual_seed(0)
    lm = trained(arch, corpus_file, steps=0, labels=["no", "yes"], **options)
    lm.save_hf(tmp_path / "hf")
    hf, info = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert hf.config.id2label == {0: "no", 1: "yes"}
    ids, mask = padded_batch(lm.tokenizer.pad_id)
    # real tokens are never the pad id: HF's decoder classifiers find the last token by comparing with it
    pad = lm.tokenizer.pad_id
    ids = ids % (lm.tokenizer.vocab_size - 1)
    ids = torch.where(ids >= pad, ids + 1, ids).masked_fill(~mask, pad)
    with torch.no_grad():
        theirs = hf.eval()(input_ids=ids, attention_mask=mask.long()).logits
        ours = lm.model.classify(ids, pad_mask=mask)
    assert (ours - theirs).abs().max() < 1e-4
    back = LM.from_pretrained(tmp_path / "hf")
    assert back.config.model.labels == ["no", "yes"]
    assert torch.equal(back.model.classifier.weight, lm.model.classifier.weight)


@pytest.mark.parametrize("arch,options,setting", [("gpt", {"position": "rope"}, "model.position='rope'"),
                                                  ("gpt", {"labels": ["a", "b"]}, "model.classifier_bias=True"),
                                                  ("bert", {"norm_position": "pre"}, "model.norm_position='pre'")])
def test_an_export_hf_cannot_express_is_refused_and_writes_nothing(tmp_path, corpus_file, capsys, arch, options, setting):
    lm = trained(arch, corpus_file, steps=0, **options)
    lm.save(tmp_path / "mine")
    assert main(["convert", str(tmp_path / "mine"), str(tmp_path / "out"), "--to", "hf"]) == 2
    assert setting in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_add_tokens_grows_embeddings_with_mean_rows_and_keeps_the_head_tied(tmp_path, corpus_file):
    lm = trained("gpt", corpus_file, steps=0)
    old_vocab, old_wte = lm.config.model.vocab_size, lm.model.wte.weight.detach().clone()
    ids = torch.tensor([lm.tokenizer.encode("the cat")])
    before = lm.model(ids)
    assert lm.add_tokens(["<|user|>", "<|bot|>"], special=True) == 2
    assert lm.config.model.vocab_size == lm.model.config.vocab_size == old_vocab + 2
    assert lm.model.lm_head.weight is lm.model.wte.weight
    assert torch.allclose(lm.model.wte.weight[old_vocab:], old_wte.mean(0).expand(2, -1))
    assert lm.tokenizer.encode("<|user|>hi") [0] == old_vocab
    assert torch.allclose(lm.model(ids)[..., :old_vocab], before, atol=1e-6)
    lm.save_hf(tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert hf.get_input_embeddings().weight.shape[0] == old_vocab + 2
    assert LM.from_pretrained(tmp_path / "hf").tokenizer.encode("<|bot|>") == [old_vocab + 1]


def test_finetuning_config_adds_tokens_to_an_imported_gpt2(tmp_path, corpus_file):
    from lmforge.app.training import train_from_config
    from lmforge.config import load_config

    _, directory = make_hf(tmp_path, "gpt2")
    config = load_config("configs/finetune-gpt2.toml", [
        f"model.init={directory}", f'data.paths=["{corpus_file}"]', 'tokenizer.add_special_tokens=["<|user|>"]',
        "train.max_steps=2", "train.batch_size=2", f"run.dir={tmp_path / 'run'}"])
    lm, result = train_from_config(config, progress=False)
    user = lm.tokenizer.token_to_id("<|user|>")
    assert user is not None and lm.tokenizer.encode("<|user|>") == [user]
    assert LM.from_pretrained(result.final_dir).tokenizer.token_to_id("<|user|>") == user


# -- what goes in: weight files, and bad directories --------------------------------------------------------
def test_sharded_safetensors_and_a_plain_pytorch_bin_load(tmp_path):
    hf, directory = make_hf(tmp_path, "gpt2")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    (tmp_path / "binary").mkdir()
    torch.save(hf.state_dict(), tmp_path / "binary" / "pytorch_model.bin")
    for name in ("config.json", "tokenizer.json"):
        for target in ("sharded", "binary"):
            (tmp_path / target / name).write_bytes((directory / name).read_bytes())
    ids = torch.tensor([[3, 5, 7, 9]])
    reference = load(directory).model(ids)
    for target in ("sharded", "binary"):
        assert torch.equal(load(tmp_path / target).model(ids), reference)


class _Payload:
    def __reduce__(self):
        return (print, ("the payload ran",))


def _bad_dirs(tmp_path):
    """(name, directory, words the error must contain) for each bad input."""
    _, good = make_hf(tmp_path, "gpt2")
    cases = []
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_bytes((good / "config.json").read_bytes())
    cases.append((no_weights, "no weights"))
    shapes = tmp_path / "shapes"
    shapes.mkdir()
    for name in ("model.safetensors", "tokenizer.json"):
        (shapes / name).write_bytes((good / name).read_bytes())
    config = json.loads((good / "config.json").read_text())
    (shapes / "config.json").write_text(json.dumps({**config, "n_embd": 64}))
    cases.append((shapes, "says n_embd=64, the weights have 32"))
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({**config, "model_type": "t5"}))
    (unknown / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes())
    cases.append((unknown, "model_type='t5' is not supported; lmforge reads gpt2, bert, llama"))
    crafted = tmp_path / "crafted"
    crafted.mkdir()
    (crafted / "config.json").write_bytes((good / "config.json").read_bytes())
    with open(crafted / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"transformer.wte.weight": _Payload()}, handle)
    cases.append((crafted, "refusing"))
    scaled = tmp_path / "scaled"
    _, llama = make_hf(tmp_path, "llama")
    scaled.mkdir()
    for name in ("model.safetensors", "tokenizer.json"):
        (scaled / name).write_bytes((llama / name).read_bytes())
    llama_config = json.loads((llama / "config.json").read_text())
    llama_config["rope_parameters"] = {"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0}
    (scaled / "config.json").write_text(json.dumps(llama_config))
    cases.append((scaled, "rope scaling 'linear' is not supported"))
    return cases


def test_bad_checkpoints_give_clear_errors_and_write_nothing(tmp_path, capsys):
    cases = _bad_dirs(tmp_path)
    capsys.readouterr()
    for directory, words in cases:
        out = tmp_path / f"out-{directory.name}"
        assert main(["convert", str(directory), str(out)]) == 2, directory.name
        captured = capsys.readouterr()
        assert words in captured.err and captured.err.startswith("error: "), (directory.name, captured.err)
        assert "the payload ran" not in captured.out
        assert not out.exists()


def test_convert_round_trip_and_an_existing_destination(tmp_path, capsys):
    _, directory = make_hf(tmp_path, "bert")
    assert main(["convert", str(directory), str(tmp_path / "mine")]) == 0
    assert (tmp_path / "mine" / "model.safetensors").is_file() and "format" in (tmp_path / "mine" / "config.json").read_text()
    assert main(["convert", str(tmp_path / "mine"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert main(["convert", str(tmp_path / "mine"), str(tmp_path / "hf"), "--to", "hf"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["fill-mask", str(tmp_path / "hf"), "the cat [MASK] the red apple."]) == 0
    ids = torch.tensor([[2, 5, 9, 11, 3]])
    assert torch.equal(load(directory).model(ids), load(tmp_path / "hf").model(ids))
    assert VOCAB == load(tmp_path / "hf").config.model.vocab_size


def test_classify_recipe_fine_tunes_a_hugging_face_encoder(tmp_path, capsys):
    import random

    _, directory = make_hf(tmp_path, "bert-base")
    rng = random.Random(0)
    for split, count in (("train", 200), ("test", 40)):
        lines = ["text,label"]
        for _ in range(count):
            animal = rng.choice(["cat", "dog"])
            lines.append(f"the {animal} {rng.choice(['sees', 'likes', 'eats'])} {rng.choice(['the red apple', 'some bread'])},"
                         f"{'pos' if animal == 'cat' else 'neg'}")
        (tmp_path / f"{split}.csv").write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    capsys.readouterr()
    assert main(["train", "configs/classify.toml", f"model.init={directory}", f"data.train={tmp_path / 'train.csv'}",
                 f"data.test={tmp_path / 'test.csv'}", f"run.dir={run}", "train.max_steps=40", "train.lr=1e-3",
                 "train.warmup_steps=5", "train.eval_every=20", "train.batch_size=16", "--quiet"]) == 0
    # the recipe's own sizes (4 x 128, rotary) give way to the checkpoint's, and the user is told
    assert "decides the architecture; ignoring the config's" in capsys.readouterr().err
    tuned = LM.from_pretrained(run / "final").config.model
    assert (tuned.n_embd, tuned.n_layer, tuned.position, tuned.labels) == (32, 2, "learned", ["neg", "pos"])
    assert main(["convert", str(run / "final"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf")
    assert hf.config.id2label == {0: "neg", 1: "pos"}
