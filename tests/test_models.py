"""Decoder models: causality, KV cache, GQA, padding, shapes of the known sizes."""
import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.models import build_model, count_parameters
from lmforge.models.layers import make_cache

from conftest import tiny_model

DECODERS = [("gpt", {}), ("llama", {}), ("llama", {"n_kv_head": 2}), ("llama", {"n_kv_head": 1})]


@pytest.mark.parametrize("arch,extra", DECODERS)
def test_changing_a_token_never_changes_earlier_logits(arch, extra):
    model = tiny_model(arch, **extra)
    ids = torch.randint(0, 50, (2, 20))
    for t in (0, 7, 19):
        changed = ids.clone()
        changed[:, t] = (changed[:, t] + 1) % 50
        a, b = model(ids), model(changed)
        torch.testing.assert_close(a[:, :t], b[:, :t], atol=0, rtol=0)
        assert not torch.allclose(a[:, t:], b[:, t:])


@pytest.mark.parametrize("arch,extra", DECODERS)
def test_cached_forward_equals_full_forward(arch, extra):
    model = tiny_model(arch, **extra)
    ids = torch.randint(0, 50, (3, 24))
    full = model(ids)
    cache = make_cache(model.config, 3, 32)
    pieces = [model(ids[:, :10], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(10, 20)]
    pieces.append(model(ids[:, 20:], cache=cache))  # several new tokens at once on top of a cache
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch,extra", DECODERS)
def test_left_padding_does_not_change_a_row(arch, extra):
    model = tiny_model(arch, **extra)
    ids = torch.randint(1, 50, (1, 12))
    alone = model(ids)[:, -1]
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), ids], 1)
    mask = torch.cat([torch.zeros(1, 5, dtype=torch.bool), torch.ones(1, 12, dtype=torch.bool)], 1)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    out = model(padded, positions=positions, pad_mask=mask)[:, -1]
    torch.testing.assert_close(out, alone, atol=1e-5, rtol=1e-4)


def test_gpt2_small_dimensions_build_with_the_known_parameter_count():
    cfg = ModelConfig(arch="gpt", n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257)
    with torch.device("meta"):
        model = build_model(cfg)
    assert count_parameters(model) == 124_439_808  # GPT-2 small, tied embeddings


def test_llama_switches_follow_arch():
    cfg = ModelConfig(arch="llama", n_embd=96, n_head=6, n_kv_head=2, vocab_size=10)
    assert (cfg.norm, cfg.mlp, cfg.position, cfg.bias) == ("rmsnorm", "swiglu", "rope", False)
    model = build_model(cfg)
    assert model.wpe is None and not any(n.endswith(".bias") for n, _ in model.named_parameters())
    q, kv = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    assert model.h[0].attn.qkv.weight.shape == (q + 2 * kv, 96)


def test_bad_head_counts_are_clear_errors():
    with pytest.raises(ValueError, match="divisible by n_head"):
        ModelConfig(n_embd=100, n_head=3)
    with pytest.raises(ValueError, match="divisible by n_kv_head"):
        ModelConfig(arch="llama", n_head=4, n_kv_head=3)


def test_sequence_longer_than_block_size_is_refused():
    model = tiny_model("gpt")
    with pytest.raises(ValueError, match="exceeds block_size"):
        model(torch.zeros(1, 33, dtype=torch.long))


@pytest.mark.parametrize("arch", ["llama", "bert", "lstm"])
def test_loading_makes_no_random_draws_and_gives_the_saved_model(tmp_path, corpus_file, arch):
    """A model directory's model is built without drawing its random initial weights (every one is loaded next,
    strictly): the global generator is untouched, torch.nn.init is itself again afterwards, the weights and the
    tables a constructor computes (rotary cos/sin) are the saved model's."""
    from torch import nn

    from lmforge import LM
    from lmforge.models import no_initialization
    from lmforge.modeldir import load_model_dir

    shape = {"n_layer": 2, "n_embd": 32, "block_size": 32, **({} if arch == "lstm" else {"n_head": 2})}
    lm = LM.new(arch, corpus=corpus_file, **shape)
    lm.save(tmp_path / "model")
    normal, state = nn.init.normal_, torch.random.get_rng_state()
    loaded = load_model_dir(tmp_path / "model").model
    assert torch.equal(torch.random.get_rng_state(), state) and nn.init.normal_ is normal
    reference = lm.model.eval().state_dict(keep_vars=False)
    assert set(loaded.state_dict()) == set(reference)
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, reference[name]), name
    for name, buffer in lm.model.named_buffers():  # non-persistent ones too
        assert torch.equal(buffer, dict(loaded.named_buffers())[name]), name
    ids = torch.randint(0, 20, (2, 8))
    with torch.no_grad():
        assert torch.equal(loaded(ids), lm.model(ids))
    with pytest.raises(KeyError), no_initialization():  # restored when the build fails too
        raise KeyError("a failing constructor")
    assert nn.init.normal_ is normal
