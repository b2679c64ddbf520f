"""Pruning: magnitude zeros survive save/load and fine-tuning; removing heads / neurons equals masking them in the
unpruned model; pruned directories work with every command; bad input is refused before anything is written."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from conftest import tiny_model
from lmforge.api import LM
from lmforge.cli import main
from lmforge.compress import sparse, structured
from lmforge.app.workflows.prune import prune
from lmforge.modeldir import load_model_dir


def block_weights(model) -> dict[str, torch.Tensor]:
    return {name: module.weight.detach().clone() for name, module in sparse.prunable_linears(model)}


@pytest.fixture
def gpt_dir(tmp_path, corpus_file):
    lm = LM.new("gpt", tokenizer="char", corpus=corpus_file, n_layer=2, n_head=4, n_embd=32, block_size=32)
    return lm.save(tmp_path / "gpt")


def test_magnitude_pruning_is_global_exact_and_stored_compactly(gpt_dir, tmp_path, capsys):
    reference = LM.from_pretrained(gpt_dir).model
    dense = block_weights(reference)
    counts = sparse.magnitude_prune(reference, 0.5)
    assert counts["zeros"] == round(0.5 * counts["weights"])
    # global: one threshold across layers, so every kept weight is at least as large as every pruned one
    pruned = block_weights(reference)
    kept = torch.cat([dense[n][pruned[n] != 0].abs() for n in dense])
    cut = torch.cat([dense[n][pruned[n] == 0].abs() for n in dense])
    assert cut.max() <= kept.min()
    assert len({round(v, 2) for v in sparse.sparsity_report(reference)["per_layer"].values()}) > 1

    assert main(["prune", str(gpt_dir), str(tmp_path / "pruned"), "--sparsity", "0.5", "--quiet"]) == 0
    model, _, _, meta = load_model_dir(tmp_path / "pruned")
    assert meta["compression"][-1]["method"] == "magnitude"
    for name, weight in block_weights(model).items():  # the same zeros and values after save and load
        assert torch.equal(weight, block_weights(reference)[name]), name
    ids = torch.randint(0, 20, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), reference.eval()(ids), rtol=0, atol=0)
    with safe_open(str(tmp_path / "pruned" / "model.safetensors"), "pt") as handle:
        names = set(handle.keys())
    assert "h.0.attn.qkv.weight.sparse_bitmask" in names and "h.0.attn.qkv.weight" not in names
    dense, packed = ((path / "model.safetensors").stat().st_size for path in (gpt_dir, tmp_path / "pruned"))
    assert packed < 0.85 * dense  # block weights at 0.53x, embeddings dense


def test_zero_pattern_survives_the_finetune_and_a_later_training(gpt_dir, tmp_path, corpus_file):
    assert main(["prune", str(gpt_dir), str(tmp_path / "plain"), "--sparsity", "0.6", "--quiet"]) == 0
    assert main(["prune", str(gpt_dir), str(tmp_path / "tuned"), "--sparsity", "0.6", "--finetune-steps", "15",
                 "--data", str(corpus_file), "--lr", "3e-3", "--batch-size", "8", "--quiet"]) == 0
    plain = block_weights(LM.from_pretrained(tmp_path / "plain").model)
    tuned_lm = LM.from_pretrained(tmp_path / "tuned")
    tuned = block_weights(tuned_lm.model)
    for name in plain:
        assert torch.equal(plain[name] == 0, tuned[name] == 0), name
        assert not torch.equal(plain[name], tuned[name]), f"{name} did not train"
    metrics = tuned_lm.meta["compression"][-1]["metrics"]
    assert metrics["finetuned"]["val_loss"] < metrics["pruned"]["val_loss"]
    # the trainer knows nothing of pruning, yet training the pruned directory again keeps its zeros, through
    # packed checkpoints and a resume
    recipe = tmp_path / "again.toml"
    recipe.write_text(f'[data]\npaths = ["{corpus_file}"]\n[train]\nbatch_size = 8\nlr = 3e-3\nwarmup_steps = 0\n'
                      f'eval_every = 0\nsave_every = 4\n[run]\ndir = "{tmp_path / "again"}"\n')
    init = f"model.init={tmp_path / 'tuned'}"
    assert main(["train", str(recipe), init, "train.max_steps=4", "--quiet"]) == 0
    with safe_open(str(tmp_path / "again" / "checkpoints" / "step-4" / "model.safetensors"), "pt") as handle:
        assert "h.1.mlp.up.weight.sparse_values" in set(handle.keys())
    assert main(["train", str(recipe), init, "train.max_steps=8", "--resume", str(tmp_path / "again"),
                 "--quiet"]) == 0
    final = LM.from_pretrained(tmp_path / "again" / "final")
    assert final.meta["training"]["max_steps"] == 8
    for name, weight in block_weights(final.model).items():
        assert torch.equal(weight == 0, plain[name] == 0), name
        assert not torch.equal(weight, tuned[name])


def test_structured_pruning_of_a_sparse_model_keeps_its_zeros(gpt_dir, corpus_file):
    lm, _ = prune(LM.from_pretrained(gpt_dir), "magnitude", sparsity=0.5, log=lambda *a: None)
    lm, _ = prune(lm, "neurons", amount=0.25, data=corpus_file, finetune_steps=5, batch_size=4, progress=False,
                  log=lambda *a: None)
    assert [step["method"] for step in lm.meta["compression"]] == ["magnitude", "neurons"]
    assert 0.45 < sparse.sparsity_report(lm.model)["sparsity"] < 0.55


def _masked_output(model, kind, kept, ids):
    with structured.unit_gates(model, kind) as gates, torch.no_grad():
        for gate, keep in zip(gates, kept):
            gate.zero_()
            gate[keep] = 1
        return model(ids)


@pytest.mark.parametrize("arch, options", [("gpt", {}), ("llama", {"n_kv_head": 2}), ("bert", {})])
@pytest.mark.parametrize("kind", ["heads", "neurons"])
def test_removing_units_equals_masking_them_in_the_unpruned_model(arch, options, kind):
    model = tiny_model(arch, **options)
    ids = torch.randint(0, 50, (2, 16))
    scores = structured.weight_importance(model, kind)
    group = structured.group_sizes(model, kind)
    amount = 4 if kind == "heads" else 0.4
    kept = structured.choose_kept(scores, amount, kind, group)
    assert sum(map(len, kept)) == sum(s.numel() for s in scores) - (4 if kind == "heads" else
                                                                     round(0.4 * sum(s.numel() for s in scores)))
    expected = _masked_output(model, kind, kept, ids)
    (structured.remove_heads if kind == "heads" else structured.remove_neurons)(model, kept)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), expected, rtol=1e-5, atol=1e-5)


def test_head_pruned_directory_reloads_generates_and_fine_tunes(gpt_dir, tmp_path, corpus_file, capsys):
    dense = LM.from_pretrained(gpt_dir)
    assert main(["prune", str(gpt_dir), str(tmp_path / "small"), "--method", "heads", "--amount", "0.25",
                 "--data", str(corpus_file), "--score-batches", "2", "--batch-size", "4", "--quiet"]) == 0
    config = json.loads((tmp_path / "small" / "config.json").read_text())
    assert sum(config["model"]["layer_heads"]) == 6 and min(config["model"]["layer_heads"]) >= 1
    spec = config["compression"][-1]
    assert spec["importance"] == "gradient" and spec["parameters_after"] < spec["parameters_before"]
    pruned = LM.from_pretrained(tmp_path / "small")
    kept = [[h for h in range(4) if h not in spec["removed_heads"].get(str(layer), [])] for layer in range(2)]
    ids = torch.randint(0, dense.config.model.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(pruned.model(ids), _masked_output(dense.model, "heads", kept, ids),
                                   rtol=1e-5, atol=1e-5)
    # generation with the KV cache (per-layer head counts) matches generation without it
    cached = pruned.generate("the cat", max_new_tokens=12, temperature=0)
    assert cached == pruned.generate("the cat", max_new_tokens=12, temperature=0, use_cache=False)
    assert isinstance(pruned.generate("the cat", max_new_tokens=4, num_beams=2), str)
    from lmforge.infer.batching import BatchDecoder
    decoder = BatchDecoder(pruned.model)  # the server's shared cache, sized per layer
    prompt = pruned.tokenizer.encode("the dog")
    _, logits = decoder.add(prompt)
    with torch.no_grad():
        torch.testing.assert_close(logits, pruned.model(torch.tensor([prompt]))[0, -1], rtol=1e-5, atol=1e-5)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "small"), "--data", str(corpus_file), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["perplexity"] > 1
    recipe = tmp_path / "again.toml"
    recipe.write_text(f'[data]\npaths = ["{corpus_file}"]\n[train]\nmax_steps = 6\nbatch_size = 4\n'
                      f'eval_every = 0\nwarmup_steps = 0\n[run]\ndir = "{tmp_path / "again"}"\n')
    assert main(["train", str(recipe), f"model.init={tmp_path / 'small'}", "--quiet"]) == 0
    again = LM.from_pretrained(tmp_path / "again" / "final")
    assert again.config.model.layer_heads == config["model"]["layer_heads"]
    with pytest.raises(ValueError, match="cannot be exported"):
        pruned.save_hf(tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_neuron_pruned_classifier_classifies(tmp_path, corpus_file, capsys):
    lm = LM.new("bert", tokenizer="char", corpus=corpus_file, n_layer=2, n_head=4, n_embd=32, block_size=32,
                labels=["no", "yes"])
    source = lm.save(tmp_path / "clf")
    assert main(["prune", str(source), str(tmp_path / "thin"), "--method", "neurons", "--amount", "64",
                 "--quiet"]) == 0
    widths = LM.from_pretrained(tmp_path / "thin").config.model.layer_intermediate
    assert sum(widths) == 2 * 128 - 64 and min(widths) >= 1
    capsys.readouterr()
    assert main(["classify", str(tmp_path / "thin"), "--text", "the cat sees a dog", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["label"] in ("no", "yes")


@pytest.mark.parametrize("args, words", [
    (["--sparsity", "1.0"], "[0, 1)"),
    (["--sparsity", "-0.1"], "[0, 1)"),
    (["--method", "heads", "--amount", "9"], "only 8"),
    (["--method", "heads", "--amount", "7"], "leaving a layer with none"),
    (["--method", "heads", "--amount", "1.5"], "whole count"),
    (["--method", "heads"], "needs --amount"),
    (["--method", "heads", "--amount", "2", "--sparsity", "0.5"], "--sparsity is for --method magnitude"),
    (["--finetune-steps", "10"], "needs --data"),
    (["--method", "heads", "--amount", "2", "--importance", "gradient"], "give --data"),
    (["--finetune-steps", "2", "--data", "no-such-file.txt"], "no-such-file.txt"),
])
def test_bad_requests_are_clear_errors_and_write_nothing(gpt_dir, tmp_path, capsys, args, words):
    assert main(["prune", str(gpt_dir), str(tmp_path / "out"), *args, "--quiet"]) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unknown_method_baseline_arch_and_existing_destination(gpt_dir, tmp_path, corpus_file, capsys):
    with pytest.raises(SystemExit) as done:
        main(["prune", "--help"])
    assert done.value.code == 0 and "examples:" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["prune", str(gpt_dir), str(tmp_path / "out"), "--method", "random"])
    assert done.value.code == 2 and "invalid choice" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown pruning method"):
        prune(LM.from_pretrained(gpt_dir), "random")
    quantized = LM.from_pretrained(gpt_dir)
    quantized.meta["compression"] = [{"kind": "quantize", "method": "dynamic-int8"}]
    with pytest.raises(ValueError, match="already compressed .quantize.; prune the model before quantizing"):
        prune(quantized, "magnitude", sparsity=0.5)
    lstm = LM.new("lstm", tokenizer="char", corpus=corpus_file, n_layer=1, n_embd=16, block_size=16).save(
        tmp_path / "lstm")
    assert main(["prune", str(lstm), str(tmp_path / "out"), "--quiet"]) == 2
    assert "arch gpt, llama, bert" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    assert main(["prune", str(gpt_dir), str(tmp_path / "taken"), "--quiet"]) == 2
    assert "--force" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not any((tmp_path / "taken").iterdir())


def test_layer_sizes_are_checked_in_the_config(tmp_path):
    from lmforge.config import ModelConfig

    with pytest.raises(ValueError, match="one per layer"):
        ModelConfig(n_layer=2, n_head=4, n_embd=32, layer_heads=[4])
    with pytest.raises(ValueError, match="multiple of 2"):
        ModelConfig(arch="llama", n_layer=2, n_head=4, n_kv_head=2, n_embd=32, layer_heads=[4, 3])
    with pytest.raises(ValueError, match="at least 1"):
        ModelConfig(n_layer=2, layer_intermediate=[0, 4])


def test_a_pruned_directory_with_an_edited_prune_step_is_named(gpt_dir, tmp_path):
    from lmforge.modeldir import ModelDirError

    lm, _ = prune(LM.from_pretrained(gpt_dir), "heads", amount=1, log=lambda *a: None)
    path = lm.save(tmp_path / "small")
    config = json.loads((path / "config.json").read_text())
    for step, words in (({"kind": "prune", "method": "random"}, "method 'random'"),
                        (config["compression"][0], "no 'layer_heads'")):
        edited = {**config, "compression": [step]}
        if words.startswith("no"):
            edited["model"] = {**config["model"], "layer_heads": None}
        (path / "config.json").write_text(json.dumps(edited))
        with pytest.raises(ModelDirError, match=words):
            load_model_dir(path)
