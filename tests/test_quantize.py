"""int8 and int4 quantization: outputs close to fp32, an exact save/load round trip, every command on quantized
directories, and clear errors that write nothing."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from lmforge.api import LM
from lmforge.cli import main
from lmforge.app.workflows.quantize import quantize_dir
from lmforge.compress.quantize import Int8Linear, quantize_model, quantize_weight
from lmforge.modeldir import ModelDirError, load_model_dir

METHODS = ["dynamic-int8", "weight-int8"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus_path):
    """A tiny char GPT trained for a short while (trained weights have the outliers random ones lack)."""
    folder = tmp_path_factory.mktemp("quantize")
    torch.manual_seed(0)
    lm = LM.new("gpt", tokenizer="char", corpus=corpus_path, n_layer=2, n_head=4, n_embd=64, block_size=32,
                tie_embeddings=False)
    lm.fit(corpus_path, max_steps=150, batch_size=16, lr=3e-3, warmup_steps=10, eval_every=0, progress=False)
    lm.save(folder / "fp32")
    for method in [*METHODS, "weight-int4"]:
        quantize_dir(folder / "fp32", folder / method, method)
    return folder, lm


@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory):
    from conftest import small_corpus

    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(small_corpus(), encoding="utf-8")
    return path


def _logits(model, seed=1, vocab=20):
    ids = torch.randint(0, vocab, (8, 32), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(ids)


def test_quantize_weight_is_per_channel_symmetric_and_within_half_a_step():
    weight = torch.randn(6, 40)
    weight[2] = 0.0  # a pruned row
    q, scale = quantize_weight(weight)
    assert q.dtype == torch.int8 and q.abs().max() <= 127
    assert torch.allclose(scale[[0, 1, 3]], weight[[0, 1, 3]].abs().amax(1) / 127)
    assert torch.equal(q[2], torch.zeros(40, dtype=torch.int8))  # stays exactly zero
    error = (q.float() * scale[:, None] - weight).abs()
    assert bool((error <= scale[:, None] / 2 + 1e-7).all())  # round to nearest: at most half a step


@pytest.mark.parametrize("method,tolerance", [("dynamic-int8", 0.03), ("weight-int8", 0.01)])
def test_int8_logits_stay_close_to_fp32(trained, corpus_path, method, tolerance):
    """Tolerance: the logits' relative error ||q - f|| / ||f|| under 3% (dynamic: weights and 7-bit activations in
    int8) or 1% (weight-only); the same top token almost everywhere; perplexity within 1%."""
    folder, lm = trained
    quantized = LM.from_pretrained(folder / method)
    assert sum(isinstance(m, Int8Linear) for m in quantized.model.modules()) == 9  # 4 per block + lm_head
    reference, logits = _logits(lm.model), _logits(quantized.model)
    relative = ((logits - reference).norm() / reference.norm()).item()
    assert relative < tolerance, relative
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.97
    before, after = lm.evaluate(corpus_path)["perplexity"], quantized.evaluate(corpus_path)["perplexity"]
    assert abs(after / before - 1) < 0.01, (before, after)


@pytest.mark.skipif(not hasattr(torch, "_weight_int8pack_mm"), reason="this torch has no int8-weight kernel")
def test_weight_int8_in_bf16_runs_the_int8_kernel_with_the_dequantized_products(trained):
    """A few bf16 rows on a CPU: torch's int8-weight kernel, the products of the dequantized weight (within
    bf16's rounding); with a gradient wanted, the dequantizing path (the kernel has no backward)."""
    from lmforge.compress import quantize

    folder, _ = trained
    model = LM.from_pretrained(folder / "weight-int8", dtype="bfloat16").model
    layer = model.h[0].mlp.up
    x = torch.randn(3, 5, layer.in_features, dtype=torch.bfloat16)
    assert quantize._int8_kernel(x)  # 15 rows: a decoding step's few; a prompt's many dequantize instead
    assert not quantize._int8_kernel(torch.randn(3, 6, layer.in_features, dtype=torch.bfloat16))
    assert not quantize._int8_kernel(torch.randn(1, layer.in_features))  # float32: no faster than dequantizing
    with torch.no_grad():
        fast = layer(x).float()
        plain = torch.nn.functional.linear(x, layer.dequantized_weight(torch.bfloat16), layer.bias.bfloat16()).float()
    assert fast.shape == (3, 5, layer.out_features)
    assert (fast - plain).abs().max() <= 0.02 * plain.abs().max()
    x.requires_grad_(True)
    assert not quantize._int8_kernel(x)
    layer(x).sum().backward()
    assert x.grad is not None
    float32 = _logits(LM.from_pretrained(folder / "weight-int8").model)
    assert (_logits(model).argmax(-1) == float32.argmax(-1)).float().mean() > 0.9


@pytest.mark.parametrize("method", METHODS)
def test_save_load_round_trip_is_exact(trained, method):
    folder, lm = trained
    saved = load_file(str(folder / method / "model.safetensors"))
    reference = lm.model.h[1].mlp.down.weight
    q, scale = quantize_weight(reference)
    assert saved["h.1.mlp.down.weight_int8"].dtype == torch.int8
    assert torch.equal(saved["h.1.mlp.down.weight_int8"], q) and torch.equal(saved["h.1.mlp.down.weight_scale"], scale)
    assert "h.1.mlp.down.weight" not in saved
    # the loaded model computes exactly what the freshly quantized one does
    import copy
    fresh, _, _ = quantize_model(copy.deepcopy(lm.model), method)
    loaded, _, _, meta = load_model_dir(folder / method)
    assert torch.equal(_logits(fresh), _logits(loaded))
    assert torch.equal(_logits(copy.deepcopy(loaded)), _logits(loaded))  # a copy after use repacks its weights
    assert meta["compression"][-1]["kind"] == "quantize" and meta["compression"][-1]["method"] == method
    assert "metrics" not in meta  # the fp32 model's numbers are not this model's
    assert "## Compression" in (folder / method / "README.md").read_text()


def test_file_is_smaller(trained):
    folder, _ = trained
    fp32 = (folder / "fp32" / "model.safetensors").stat().st_size
    int8 = (folder / "dynamic-int8" / "model.safetensors").stat().st_size
    # the Linears shrink 4x; embeddings and norms stay fp32
    assert int8 < 0.45 * fp32, (int8, fp32)


def test_commands_work_on_quantized_directories(trained, corpus_path, capsys):
    folder, lm = trained
    for method in METHODS:
        assert main(["generate", str(folder / method), "--prompt", "the ", "--max-new-tokens", "12",
                     "--temperature", "0", "--json"]) == 0
        text = json.loads(capsys.readouterr().out)["text"]
        assert len(text) == 12
        assert main(["eval", str(folder / method), "--data", str(corpus_path), "--json"]) == 0
        assert json.loads(capsys.readouterr().out.splitlines()[-1])["perplexity"] < 20


def test_encoder_classifier_quantized(tmp_path, corpus_path, capsys):
    """A BERT with a classification head: classify and fill-mask run on the quantized directory, close to fp32."""
    torch.manual_seed(0)
    lm = LM.new("bert", tokenizer="wordpiece", vocab_size=120, corpus=corpus_path, n_layer=2, n_head=4, n_embd=64,
                block_size=32,
                labels=["neg", "pos"])
    lm.save(tmp_path / "bert")
    quantize_dir(tmp_path / "bert", tmp_path / "q8", "dynamic-int8")
    quantized = LM.from_pretrained(tmp_path / "q8")
    texts = ["the cat sees the sea.", "a dog eats some bread."]
    for (_, p), (_, q) in zip(lm.classify(texts), quantized.classify(texts)):
        assert abs(p["pos"] - q["pos"]) < 0.02
    assert main(["classify", str(tmp_path / "q8"), "--text", texts[0], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["label"] in ("neg", "pos")
    assert main(["fill-mask", str(tmp_path / "q8"), "the [MASK] sees the sea.", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]) == 5


def test_dynamic_int8_refuses_other_devices_clearly(trained):
    folder, _ = trained
    model, _, _, _ = load_model_dir(folder / "dynamic-int8")
    with pytest.raises(ValueError, match="CPU only.*weight-int8"):
        model.to("meta")
    weight_only, _, _, _ = load_model_dir(folder / "weight-int8")
    weight_only.to(torch.float64)  # weight-only follows the activations' dtype and device
    assert _logits(weight_only).dtype == torch.float64


def test_bad_input_is_refused_and_writes_nothing(trained, tmp_path, capsys):
    folder, _ = trained
    out = tmp_path / "out"
    assert main(["quantize", str(folder / "dynamic-int8"), str(out)]) == 2
    assert "already quantized (dynamic-int8)" in capsys.readouterr().err and not out.exists()
    with pytest.raises(ValueError, match="unknown quantization method 'int4'.*dynamic-int8"):
        quantize_dir(folder / "fp32", out, "int4")
    with pytest.raises(SystemExit):  # argparse's own refusal, naming the choices
        main(["quantize", str(folder / "fp32"), str(out), "--method", "int4"])
    assert "invalid choice: 'int4'" in capsys.readouterr().err
    assert not out.exists()
    assert main(["quantize", str(tmp_path), str(out)]) == 2
    assert "is not a model directory" in capsys.readouterr().err and not out.exists()
    assert main(["quantize", str(folder / "fp32"), str(folder / "weight-int8")]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["convert", str(folder / "dynamic-int8"), str(out), "--to", "hf"]) == 2
    assert "has no plain weight" in capsys.readouterr().err and not out.exists()
    # unmerged LoRA adapters must be merged first
    lora = tmp_path / "lora"
    shutil.copytree(folder / "fp32", lora)
    meta = json.loads((lora / "config.json").read_text())
    (lora / "config.json").write_text(json.dumps({**meta, "compression": [{"kind": "lora", "rank": 8}]}))
    with pytest.raises(ValueError, match="merge them first"):
        quantize_dir(lora, out, "dynamic-int8")
    assert not out.exists()


def test_damaged_quantize_step_is_named(trained, tmp_path):
    folder, _ = trained
    broken = tmp_path / "broken"
    shutil.copytree(folder / "dynamic-int8", broken)
    meta = json.loads((broken / "config.json").read_text())
    meta["compression"][-1]["modules"][0] = "h.0.ln_1"
    (broken / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelDirError, match="'h.0.ln_1', which is not a Linear layer"):
        load_model_dir(broken)
    meta["compression"][-1]["method"] = "int3"
    (broken / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelDirError, match="method 'int3'"):
        load_model_dir(broken)
