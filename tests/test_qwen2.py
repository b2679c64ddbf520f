"""Qwen2, the family added as one folder (models/qwen2/) and one registry line: tiny random transformers
Qwen2 models imported number for number, exported back, generated from, and trained from scratch."""
from __future__ import annotations

import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmforge.api import LM  # noqa: E402
from lmforge.config import ModelConfig  # noqa: E402
from lmforge.models import ARCHS, build_model, is_decoder  # noqa: E402
from lmforge.modeldir import ModelDirError, load_model_dir, save_model_dir  # noqa: E402

from test_interop import VOCAB, char_tokenizer, hf_greedy_text, padded_batch  # noqa: E402


def make_qwen2(tmp_path, name: str = "qwen2", classifier: bool = False, **options):
    """A tiny random Qwen2ForCausalLM (or ...ForSequenceClassification) saved with a char tokenizer."""
    torch.manual_seed(3)
    tok = char_tokenizer()
    config = transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, bos_token_id=tok.eos_id, eos_token_id=tok.eos_id,
        pad_token_id=VOCAB - 1, **{"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}, **options})
    if classifier:
        config.id2label, config.label2id = {0: "neg", 1: "pos"}, {"neg": 0, "pos": 1}
    cls = transformers.Qwen2ForSequenceClassification if classifier else transformers.Qwen2ForCausalLM
    model = cls(config).eval()
    with torch.no_grad():  # make every weight matter (HF zero-inits biases and ones-inits norms)
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    directory = tmp_path / name
    model.save_pretrained(directory)
    tok.save(directory / "tokenizer.json")
    return model, directory


def load(directory) -> LM:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LM.from_pretrained(directory)


@pytest.mark.parametrize("tied", [False, True])
def test_imported_qwen2_logits_equal_transformers_in_a_padded_batch(tmp_path, tied):
    hf, directory = make_qwen2(tmp_path, tie_word_embeddings=tied)
    lm = load(directory)
    cfg = lm.config.model
    assert (cfg.arch, cfg.bias, cfg.qkv_bias, cfg.n_kv_head, cfg.rope_theta) == ("qwen2", False, True, 2, 1e6)
    attention = lm.model.h[0].attn
    assert attention.qkv.bias is not None and attention.proj.bias is None and lm.model.h[0].mlp.up.bias is None
    assert (lm.model.lm_head.weight is lm.model.wte.weight) == tied
    ids, mask = padded_batch()
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask.long()).logits
        ours = lm.model(ids, pad_mask=mask)
    assert (ours - theirs)[mask].abs().max() < 1e-4


def test_qwen2_export_loads_in_transformers_with_equal_logits_and_comes_back_bit_exact(tmp_path):
    _, directory = make_qwen2(tmp_path)
    lm = load(directory)
    lm.save_hf(tmp_path / "out")
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert type(hf).__name__ == "Qwen2ForCausalLM"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ids, mask = padded_batch()
    with torch.no_grad():
        theirs = hf.eval()(input_ids=ids, attention_mask=mask.long()).logits
        ours = lm.model(ids, pad_mask=mask)
    assert (ours - theirs)[mask].abs().max() < 1e-4
    back = load(tmp_path / "out")
    ours_state, back_state = lm.model.state_dict(), back.model.state_dict()
    assert ours_state.keys() == back_state.keys()
    assert all(torch.equal(ours_state[k], back_state[k]) for k in ours_state)


def test_greedy_qwen2_generation_equals_transformers_generate(tmp_path):
    hf, directory = make_qwen2(tmp_path)
    lm = load(directory)
    assert lm.generate("the cat sees", max_new_tokens=20, temperature=0) == hf_greedy_text(hf, lm, "the cat sees", 20)


def test_imported_qwen2_classifier_matches_transformers(tmp_path):
    hf, directory = make_qwen2(tmp_path, classifier=True)
    lm = load(directory)
    assert lm.config.model.labels == ["neg", "pos"]
    ids, mask = padded_batch()
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask.long()).logits
        ours = lm.model.classify(ids, pad_mask=mask)
    assert (ours - theirs).abs().max() < 1e-4


def test_qwen2_from_scratch_has_the_family_defaults_trains_and_survives_a_model_directory(tmp_path, corpus_file):
    cfg = ModelConfig(arch="qwen2", vocab_size=50, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
    assert (cfg.bias, cfg.qkv_bias, cfg.norm, cfg.mlp, cfg.position, cfg.rope_theta) == (
        False, True, "rmsnorm", "swiglu", "rope", 1e6)
    assert ModelConfig(arch="qwen2", rope_theta=5e5).rope_theta == 5e5  # a set value wins over the default
    assert ARCHS["qwen2"].name == "qwen2" and is_decoder(build_model(cfg))
    lm = LM.new("qwen2", tokenizer="char", corpus=corpus_file, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                block_size=32)
    losses = []
    lm.fit(corpus_file, max_steps=40, batch_size=8, warmup_steps=0, eval_every=0, lr=3e-3, log_every=1,
           progress=False, run_dir=tmp_path / "run", hooks=[lambda step, record: losses.append(record["loss"])])
    assert len(losses) == 40 and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3
    save_model_dir(tmp_path / "model", lm.bundle)
    back = load_model_dir(tmp_path / "model")
    assert back.config.arch == "qwen2" and "Qwen2-style decoder" in (tmp_path / "model" / "README.md").read_text()
    ids = torch.randint(0, lm.tokenizer.vocab_size, (2, 10))
    with torch.no_grad():
        assert torch.equal(back.model(ids), lm.model.eval()(ids))


def test_qwen2_features_lmforge_lacks_are_refused_with_the_key(tmp_path):
    _, directory = make_qwen2(tmp_path, use_sliding_window=True, sliding_window=8)
    with pytest.raises(ModelDirError, match="sliding-window attention"):
        load(directory)
    lm = LM.new("qwen2", tokenizer="char", n_layer=1, n_head=2, n_embd=16, block_size=16, qkv_bias=False)
    with pytest.raises(ValueError, match="qwen2 has no way to express model.qkv_bias=False"):
        lm.save_hf(tmp_path / "out")
    assert not (tmp_path / "out").exists()
