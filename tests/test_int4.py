"""weight-int4: 4-bit codes in groups of 32 with a scale and a minimum each. Codes within half a step, the int4
kernel's products equal to the dequantized weight's, an exact save/load round trip in bf16, a Q4_1 GGUF file's
blocks given back exactly, commands on the directory, and clear errors."""
import copy
import json
import shutil
from contextlib import nullcontext

import pytest
import torch
from safetensors.torch import load_file
from test_quantize import _logits, corpus_path, trained  # noqa: F401  (the module's fixtures)
from torch import nn

from lmforge.api import LM
from lmforge.app.workflows.quantize import quantize_dir
from lmforge.cli import main
from lmforge.compress import int4
from lmforge.compress.int4 import Int4Linear, quantize_groups, unpack_codes
from lmforge.compress.quantize import quantize_model
from lmforge.modeldir import ModelDirError, load_model_dir

KERNEL = pytest.mark.skipif(int4._INT4_MM is None, reason="this torch has no CPU int4 kernel")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (this path runs only there)")


def test_codes_are_within_half_a_step_and_a_zero_group_stays_zero():
    weight = torch.randn(6, 96)
    weight[2, 32:64] = 0.0  # a pruned group
    packed, scale, low = quantize_groups(weight)
    assert packed.dtype == torch.uint8 and packed.shape == (6, 48) and scale.shape == low.shape == (6, 3)
    codes = unpack_codes(packed)
    assert codes.max() <= 15 and torch.equal(codes[:, 0::2], packed & 15)  # the even column in the low nibble
    restored = (codes.view(6, 3, 32).float() * scale[..., None] + low[..., None]).view(6, 96)
    assert bool(((restored - weight).abs() <= scale.repeat_interleave(32, 1) / 2 + 1e-6).all())
    assert torch.equal(restored[2, 32:64], torch.zeros(32))
    # each group's least and greatest value are codes 0 and 15: the grid spans the group exactly
    assert torch.equal(codes.view(6, 3, 32).amin(-1)[[0, 1]], torch.zeros(2, 3, dtype=torch.uint8))
    assert torch.equal(codes.view(6, 3, 32).amax(-1)[[0, 1]], torch.full((2, 3), 15, dtype=torch.uint8))
    with pytest.raises(ValueError, match="100 inputs cannot be cut into groups of 32"):
        quantize_groups(torch.randn(4, 100))


@KERNEL
def test_kernel_products_equal_the_dequantized_weight_and_other_inputs_dequantize():
    """A decoding step's few bf16 rows run on torch's int4 kernel: the products of the dequantized weight within
    bf16 rounding. float32, many rows, gradients and widths the kernel cannot pack take the dequantizing path."""
    torch.manual_seed(0)
    linear = nn.Linear(96, 64)
    layer = Int4Linear.from_linear(linear).to(torch.bfloat16)
    assert layer.weight_scale.dtype == torch.float32  # scales keep float32 in a bf16 model
    x = torch.randn(2, 3, 96, dtype=torch.bfloat16)
    assert int4._kernel_rows(x) and not int4._kernel_rows(torch.randn(33, 96, dtype=torch.bfloat16))
    assert not int4._kernel_rows(torch.randn(1, 96))  # the kernel reads float32 activations ~30x slower
    with torch.no_grad():
        fast = layer(x).float()
        plain = (x.float() @ layer.dequantized_weight().t() + layer.bias.float())
    assert fast.shape == (2, 3, 64) and layer._kernel is not None  # the kernel ran
    assert (fast - plain).abs().max() <= 0.02 * plain.abs().max()
    x.requires_grad_(True)
    assert not int4._kernel_rows(x)
    layer(x).sum().backward()
    assert x.grad is not None
    odd = Int4Linear.from_linear(nn.Linear(64, 20))  # 20 outputs: not a multiple of the kernel's 16
    with torch.no_grad():
        y = odd.to(torch.bfloat16)(torch.randn(1, 64, dtype=torch.bfloat16))
    assert y.shape == (1, 20) and odd._kernel is None
    with torch.inference_mode():  # quantized and run where tensors keep no version counter
        made_here = Int4Linear.from_linear(linear).to(torch.bfloat16)
        assert torch.equal(made_here(x), layer(x))
    other = Int4Linear.from_linear(nn.Linear(96, 64)).to(torch.bfloat16)
    layer.load_state_dict(other.state_dict())  # new weights in place after the layer packed its old ones
    with torch.no_grad():
        assert torch.equal(layer(x.detach()), other(x.detach()))
    # a float32 layer computes exactly the dequantized product
    exact = Int4Linear.from_linear(linear)
    x32 = torch.randn(4, 96)
    assert torch.equal(exact(x32), nn.functional.linear(x32, exact.dequantized_weight(), exact.bias))


def _tinygemm_reference(x, packed, group, scales_zeros):
    """The product tinygemm computes, written out, for the layout lmforge hands it: bytes holding the even column
    in the high nibble, weight = (code - 8) * scale + zero (here the bytes stand in for its tiled packing)."""
    codes = torch.stack((packed >> 4, packed & 15), dim=-1).view(packed.size(0), -1).float()
    scale, zero = (scales_zeros[..., i].t().float().repeat_interleave(group, 1) for i in (0, 1))
    return (x.float() @ ((codes - 8) * scale + zero).t()).to(x.dtype)


def _misread(x, packed, group, scales_zeros):  # the low nibble taken as the even column
    return _tinygemm_reference(x, (packed << 4) | (packed >> 4), group, scales_zeros)


def _refused(*_):
    raise RuntimeError("_weight_int4pack_mm_cuda is only supported on AMD gpu arch greater than or equal to CDNA2")


@pytest.mark.parametrize("product, used", [(_tinygemm_reference, True), (_misread, False), (_refused, False)])
def test_the_cuda_kernels_packing_is_checked_once_and_a_kernel_that_differs_is_not_used(monkeypatch, product, used):
    """The CUDA int4 path's packing and its one check against the dequantized product, run on CPU tensors with the
    product written out in place of tinygemm: a kernel reading the layout as lmforge writes it is used, one that
    reads it otherwise or refuses (an older GPU) is not, with one warning; the results stay right either way."""
    monkeypatch.setattr(int4, "_CUDA_PACK", lambda data, tiles: data)
    monkeypatch.setattr(int4, "_CUDA_MM", product)
    monkeypatch.setattr(int4, "_warned", set())
    torch.manual_seed(0)
    layer = Int4Linear.from_linear(nn.Linear(96, 64)).to(torch.bfloat16)
    codes = unpack_codes(layer.weight_int4)
    scale, low = layer.weight_scale, layer.weight_min
    scales_zeros = torch.stack((scale, low + 8 * scale), dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
    with pytest.warns(UserWarning, match="torch's int4 kernel") if not used else nullcontext():
        kernel = int4._cuda_kernel(layer, codes, scales_zeros)
    assert (kernel is not None) == used
    if used:
        x = torch.randn(3, 96, dtype=torch.bfloat16)
        fast, plain = kernel[0](x, kernel[1], 32, kernel[2]).float(), x.float() @ layer.dequantized_weight().t()
        assert (fast - plain).abs().max() <= 0.02 * plain.abs().max()


@CUDA
def test_on_cuda_a_decoding_step_runs_on_the_int4_kernel_and_the_captured_decoder_agrees(trained):  # noqa: F811
    from lmforge.infer.generate import SamplingConfig, generate

    torch.manual_seed(0)
    layer = Int4Linear.from_linear(nn.Linear(96, 64)).to("cuda", torch.bfloat16)
    x = torch.randn(2, 96, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        fast = layer(x).float()
    plain = x.float() @ layer.dequantized_weight().t() + layer.bias.float()
    assert (fast - plain).abs().max() <= 0.02 * plain.abs().max()
    if torch.cuda.get_device_capability() >= (8, 0):
        assert layer._kernel is not None and layer._kernel[0] is int4._CUDA_MM
    folder, _ = trained
    lm = LM.from_pretrained(folder / "weight-int4", device="cuda")
    greedy = SamplingConfig(max_new_tokens=8, temperature=0)
    prompts = ["the ", "and so "]
    assert generate(lm.model, lm.tokenizer, prompts, greedy) == generate(lm.model, lm.tokenizer, prompts, greedy,
                                                                        static=False)


def test_int4_logits_stay_close_to_fp32(trained, corpus_path):  # noqa: F811
    """4-bit weights in groups of 32 on a tiny trained model: logits within 8% relative error, the same top token
    at most positions, perplexity within 3%; the directory is saved and loads in bf16."""
    folder, lm = trained
    quantized = LM.from_pretrained(folder / "weight-int4")
    assert sum(isinstance(m, Int4Linear) for m in quantized.model.modules()) == 9  # 4 per block + lm_head
    assert quantized.model.wte.weight.dtype == torch.bfloat16
    assert json.loads((folder / "weight-int4" / "config.json").read_text())["dtype"] == "bfloat16"
    exact = LM.from_pretrained(folder / "weight-int4", dtype="float32")  # the 4-bit weights without bf16's rounding
    reference, logits = _logits(lm.model), _logits(exact.model)
    relative = ((logits - reference).norm() / reference.norm()).item()
    assert relative < 0.08, relative
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.9
    before, after = lm.evaluate(corpus_path)["perplexity"], exact.evaluate(corpus_path)["perplexity"]
    assert abs(after / before - 1) < 0.03, (before, after)
    assert (_logits(quantized.model).argmax(-1) == logits.argmax(-1)).float().mean() >= 0.9


def test_int4_save_load_round_trip_is_exact(trained):  # noqa: F811
    folder, lm = trained
    saved = load_file(str(folder / "weight-int4" / "model.safetensors"))
    packed, scale, low = quantize_groups(lm.model.h[1].mlp.down.weight)
    assert torch.equal(saved["h.1.mlp.down.weight_int4"], packed)
    assert torch.equal(saved["h.1.mlp.down.weight_scale"], scale) and torch.equal(saved["h.1.mlp.down.weight_min"], low)
    assert "h.1.mlp.down.weight" not in saved and saved["wte.weight"].dtype == torch.bfloat16
    fresh = quantize_model(copy.deepcopy(lm.model), "weight-int4")[0].to(torch.bfloat16)
    loaded, _, _, meta = load_model_dir(folder / "weight-int4")
    assert torch.equal(_logits(fresh), _logits(loaded))
    assert torch.equal(_logits(copy.deepcopy(loaded)), _logits(loaded))  # a copy after use packs again
    step = meta["compression"][-1]
    assert step["method"] == "weight-int4" and step["group_size"] == 32 and "Q4_1" in step["scheme"]
    fp32 = (folder / "fp32" / "model.safetensors").stat().st_size
    assert (folder / "weight-int4" / "model.safetensors").stat().st_size < 0.3 * fp32


def test_int4_directory_runs_commands_and_damage_is_named(trained, corpus_path, tmp_path, capsys):  # noqa: F811
    folder, _ = trained
    assert main(["generate", str(folder / "weight-int4"), "--prompt", "the ", "--max-new-tokens", "12",
                 "--temperature", "0", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["text"]) == 12
    assert main(["compare", str(folder / "fp32"), str(folder / "weight-int4"), "--data", str(corpus_path), "--json",
                 "--rounds", "1", "--batch-size", "2", "--new-tokens", "4", "--quiet",
                 "--out", str(tmp_path / "compare.png")]) == 0
    plain, four_bit = json.loads(capsys.readouterr().out)
    assert four_bit["parameters"] == plain["parameters"] and four_bit["weights_bytes"] < 0.3 * plain["weights_bytes"]
    assert abs(four_bit["quality"] / plain["quality"] - 1) < 0.03  # perplexity, in bf16 here
    out = tmp_path / "again"
    assert main(["quantize", str(folder / "weight-int4"), str(out), "--method", "weight-int4"]) == 2
    assert "already quantized (weight-int4)" in capsys.readouterr().err and not out.exists()
    broken = tmp_path / "broken"
    shutil.copytree(folder / "weight-int4", broken)
    meta = json.loads((broken / "config.json").read_text())
    meta["compression"][-1]["group_size"] = 3
    (broken / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelDirError, match="group_size 3"):
        load_model_dir(broken)
    meta["compression"][-1]["group_size"] = 32
    meta["dtype"] = "int5"
    (broken / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelDirError, match="config.json.*'int5' is not a dtype"):
        load_model_dir(broken)


def test_widths_that_are_not_a_multiple_of_the_group_stay_floating_point(tmp_path, corpus_path, capsys):  # noqa: F811
    torch.manual_seed(0)
    lm = LM.new("gpt", tokenizer="char", corpus=corpus_path, n_layer=1, n_head=2, n_embd=48, block_size=16,
                tie_embeddings=False)
    lm.save(tmp_path / "fp32")
    assert main(["quantize", str(tmp_path / "fp32"), str(tmp_path / "w4"), "--method", "weight-int4"]) == 0
    printed = capsys.readouterr().out
    assert "quantized 1 Linear layers (weight-int4)" in printed  # the MLP's down product alone has 192 inputs
    assert "inputs not a multiple of 32): h.0.attn.qkv, h.0.attn.proj, h.0.mlp.up, lm_head" in printed
    loaded = LM.from_pretrained(tmp_path / "w4", dtype="float32")
    assert isinstance(loaded.model.h[0].mlp.down, Int4Linear) and type(loaded.model.h[0].mlp.up) is nn.Linear


def test_parameter_counts_see_the_weights_not_the_bytes(trained):  # noqa: F811
    from lmforge.app.workflows.compare import count_weights
    from lmforge.models import count_parameters

    folder, lm = trained
    quantized = LM.from_pretrained(folder / "weight-int4").model
    assert count_parameters(quantized) == count_parameters(lm.model)  # scales and minimums are buffers
    total, nonzero = count_weights(quantized)
    assert total == count_parameters(lm.model) and 0 < nonzero <= total


def test_float32_decoding_says_it_is_slow_once(trained, monkeypatch):  # noqa: F811
    folder, _ = trained
    monkeypatch.setattr(int4, "_warned", set())
    model = LM.from_pretrained(folder / "weight-int4", dtype="float32").model
    with pytest.warns(UserWarning, match="dequantizing every weight.*bfloat16"), torch.no_grad():
        model(torch.tensor([[1, 2, 3]]))
    with torch.no_grad():
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # said once
            model(torch.tensor([[4]]))


@pytest.mark.parametrize("lora", [None, {"rank": 4}])
def test_training_a_quantized_model_is_refused_clearly(trained, corpus_path, tmp_path, lora):  # noqa: F811
    folder, _ = trained
    for method in ("weight-int4", "weight-int8"):
        quantized = LM.from_pretrained(folder / method)
        options = {"lora": lora} if lora else {}
        with pytest.raises(ValueError, match=rf"quantized \({method}\).*Fine-tune the floating-point original"):
            quantized.fit(corpus_path, max_steps=2, batch_size=2, eval_every=0, progress=False,
                          run_dir=tmp_path / "run", **options)
        assert not (tmp_path / "run").exists()


def test_an_encoder_classifier_in_weight_int4(tmp_path, corpus_path):  # noqa: F811
    """A BERT with a classification head, 4-bit (saved and run in bf16): class probabilities within 0.05 of fp32's,
    and fill-mask runs."""
    torch.manual_seed(0)
    lm = LM.new("bert", tokenizer="wordpiece", vocab_size=120, corpus=corpus_path, n_layer=2, n_head=4, n_embd=64,
                block_size=32, labels=["neg", "pos"])
    lm.save(tmp_path / "bert")
    summary = quantize_dir(tmp_path / "bert", tmp_path / "w4", "weight-int4")
    assert any(name.endswith("mlp.up") for name in summary["quantized"])
    quantized = LM.from_pretrained(tmp_path / "w4")
    texts = ["the cat sees the sea.", "a dog eats some bread."]
    for (_, p), (_, q) in zip(lm.classify(texts), quantized.classify(texts)):
        assert abs(p["pos"] - q["pos"]) < 0.05
    assert len(quantized.fill_mask("the [MASK] sees the sea.")) == 5


def test_chat_banner_says_what_answers(trained):  # noqa: F811
    from lmforge.app.commands.chat import describe, faster
    from lmforge.modeldir import load_model_dir

    folder, _ = trained
    bundle = load_model_dir(folder / "weight-int4")
    assert describe(bundle).startswith("gpt, ") and describe(bundle).endswith("bfloat16 on cpu, weight-int4")
    assert faster(bundle) == []  # already what runs fastest
