"""Explanations: attention weights against an independent softmax(QK^T/sqrt(d) + mask), integrated gradients'
completeness and masked tokens, the logit lens against the model, neighbours, plots, CLI and bad input."""
import json
import math
import warnings

import numpy as np
import pytest
import torch

from conftest import small_corpus, tiny_model
from lmforge.api import LM
from lmforge.cli import main
from lmforge.config import Config
from lmforge.explain import attribute, attribute_embeddings, capture_attention, explain_attention, logit_lens, \
    nearest_tokens
from lmforge.explain import plots
from lmforge.tokenizer import Tokenizer

TEXT = "the cat sees the red apple."


@pytest.fixture(scope="module")
def char_tokenizer():
    return Tokenizer.train("char", [small_corpus(50), "猫坐在垫子上"])


@pytest.fixture(scope="module")
def wordpiece():
    return Tokenizer.train("wordpiece", small_corpus(200).splitlines(), vocab_size=80)


def make_lm(tokenizer, arch="gpt", **options) -> LM:
    model = tiny_model(arch, vocab_size=tokenizer.vocab_size, **options)
    return LM(model, tokenizer, Config(model=model.config.model_dump(), tokenizer={"kind": tokenizer.kind}))


def reference_weights(model, ids, pad_mask=None):
    """Each layer's attention recomputed from the inputs its attention module received, without Attention.forward."""
    inputs = []
    handles = [block.attn.register_forward_pre_hook(lambda module, args: inputs.append(args[0])) for block in model.h]
    try:
        with torch.no_grad():
            model(ids, pad_mask=pad_mask)
    finally:
        for handle in handles:
            handle.remove()
    cfg, T = model.config, ids.size(1)
    expected = []
    for block, x in zip(model.h, inputs):
        q, k, _ = block.attn.qkv(x).split([cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim,
                                           cfg.n_kv_head * cfg.head_dim], dim=-1)
        q = q.view(1, T, cfg.n_head, cfg.head_dim).transpose(1, 2)
        k = k.view(1, T, cfg.n_kv_head, cfg.head_dim).transpose(1, 2)
        if model.rope is not None:
            cos, sin = model.rope.cos[:T], model.rope.sin[:T]
            half = cfg.head_dim // 2
            rotate = lambda t: torch.cat([-t[..., half:], t[..., :half]], -1)  # noqa: E731
            q, k = q * cos + rotate(q) * sin, k * cos + rotate(k) * sin
        k = k.repeat_interleave(cfg.n_head // cfg.n_kv_head, dim=1)
        additive = torch.zeros(T, T)
        if model.is_causal:
            additive = additive.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        if pad_mask is not None:  # padded keys are hidden, except from themselves (a row is never empty)
            hidden = ~pad_mask[0][None, :].expand(T, T) & ~torch.eye(T, dtype=torch.bool)
            additive = additive.masked_fill(hidden, float("-inf"))
        expected.append(torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(cfg.head_dim) + additive, dim=-1)[0])
    return torch.stack(expected)


@pytest.mark.parametrize("arch,options", [("gpt", {}), ("llama", {"n_kv_head": 2}), ("bert", {}),
                                          ("bert", {"position": "rope", "norm_position": "pre"})])
def test_returned_attention_is_softmax_of_scores_and_leaves_logits_unchanged(arch, options):
    model = tiny_model(arch, **options)
    ids = torch.randint(0, 50, (1, 12), generator=torch.Generator().manual_seed(1))
    pad_mask = None
    if arch == "bert":
        pad_mask = torch.ones(1, 12, dtype=torch.bool)
        pad_mask[0, 9:] = False
    with torch.no_grad():
        plain = model(ids, pad_mask=pad_mask)
        hidden, weights = model.hidden_states(ids, pad_mask=pad_mask, return_weights=True)
        captured = model.lm_head(hidden) if model.is_causal else model.mlm_logits(hidden)
    weights = torch.stack([w[0] for w in weights])
    torch.testing.assert_close(weights, reference_weights(model, ids, pad_mask), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(captured, plain, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]), atol=1e-5, rtol=0)
    if model.is_causal:
        assert (weights[..., torch.ones(12, 12, dtype=torch.bool).triu(1)] == 0).all()
    else:
        assert (weights[:, :, :9, 9:] == 0).all()  # real tokens give padded keys no weight at all
        assert (weights[:, :, :9, :9] > 0).all()


def test_gpt_block_is_bit_identical_when_not_capturing():
    model = tiny_model("gpt")
    block = model.h[0]
    x = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = x + block.drop(block.attn(block.ln_1(x), causal=True))
        expected = expected + block.drop(block.mlp(block.ln_2(expected)))
        assert torch.equal(block(x), expected)
        ids = torch.randint(0, 50, (2, 9))
        assert torch.equal(model.hidden_states(ids), model.ln_f(model.h[1](model.h[0](model.wte(ids) + model.wpe.weight[:9]))))


def test_attention_map_api_plot_and_selection(char_tokenizer, tmp_path):
    lm = make_lm(char_tokenizer)
    result = lm.explain_attention("猫坐在垫子上 cat", out=tmp_path / "grid.png")
    assert result.weights.shape == (2, 4, 10, 10) and result.tokens[0] == "猫"
    assert result.select(1, 2).shape == (10, 10) and result.select(layer=1).shape == (4, 10, 10)
    assert result.select(head=3).shape == (2, 10, 10)
    np.testing.assert_array_equal(result.select(head=3)[1], result.weights[1, 3])
    import matplotlib.image

    image = matplotlib.image.imread(tmp_path / "grid.png")
    assert image.shape[0] > 300 and image.shape[1] > 500 and image[..., :3].std() > 0.05
    lm.explain_attention(TEXT, layer=0, head=1, out=tmp_path / "one.png")
    assert (tmp_path / "one.png").stat().st_size > 5000


def test_chinese_labels_use_a_cjk_font_or_warn_once_and_fall_back(char_tokenizer, tmp_path, monkeypatch):
    lm = make_lm(char_tokenizer)
    if plots.cjk_font() is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no missing-glyph warning, no fallback warning
            lm.explain_attention("猫坐在垫子上", layer=0, head=0, out=tmp_path / "zh.png")
    monkeypatch.setattr(plots, "cjk_font", lambda: None)
    plots._warn_no_cjk_font.cache_clear()
    with pytest.warns(UserWarning, match="no CJK-capable font found.*fonts-noto-cjk") as record:
        labels = plots.plot_labels(["猫", "cat"])
        plots.plot_labels(["坐"])
    assert labels == ["U+732B", "cat"] and len(record) == 1
    plots._warn_no_cjk_font.cache_clear()


def test_integrated_gradients_pass_completeness_for_decoder_and_classifier(char_tokenizer, wordpiece):
    decoder = make_lm(char_tokenizer)
    result = decoder.attribute("the cat sees", " the", steps=64)
    assert result.kind == "next-token" and len(result.scores) == len("the cat sees")
    difference = result.output - result.baseline_output
    assert abs(difference) > 1e-3 and result.completeness_relative < 0.01
    assert math.isclose(result.scores.sum(), difference, rel_tol=0.01)
    # the output is the log-probability of " the" (4 characters) after the text, recomputed here
    ids = char_tokenizer.encode("the cat sees the")
    with torch.no_grad():
        log_probs = decoder.model(torch.tensor([ids[:-1]]))[0].log_softmax(-1)
    expected = sum(float(log_probs[11 + j, ids[12 + j]]) for j in range(4))
    assert result.output == pytest.approx(expected, abs=1e-5)

    classifier = make_lm(wordpiece, "bert", labels=["neg", "pos"], pooling="mean")
    with torch.no_grad():  # a random head barely moves the output; a strong one makes the check meaningful
        classifier.model.classifier.weight.normal_(0, 3.0, generator=torch.Generator().manual_seed(0))
    result = classifier.attribute("the cat sees the red apple", "pos", steps=64, baseline="zero")
    assert abs(result.output - result.baseline_output) > 0.05
    assert result.kind == "class" and result.tokens[0] == "[CLS]" and result.tokens[-1] == "[SEP]"
    assert result.scores[0] == 0 and result.scores[-1] == 0  # [CLS]/[SEP] stay in the baseline
    assert result.completeness_relative <= 0.05
    assert result.scores.sum() == pytest.approx(result.output - result.baseline_output, rel=0.05)

    # a saturating head (char tokens: the same vocabulary every run): one step cannot follow its bend
    saturated = make_lm(char_tokenizer, "bert", labels=["neg", "pos"], pooling="mean")
    with torch.no_grad():
        saturated.model.classifier.weight.normal_(0, 300.0, generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match="miss the completeness check.*use more steps"):
        one = saturated.attribute("the cat sees the red apple", "pos", steps=1, max_steps=1, baseline="zero")
    assert one.completeness_relative > 0.05
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adaptive = saturated.attribute("the cat sees the red apple", "pos", steps=1, baseline="zero")
    assert adaptive.steps > 1 and adaptive.completeness_relative <= 0.05  # steps doubled until the check passed
    with pytest.warns(UserWarning, match="miss the completeness check"):
        half = saturated.attribute("the cat sees the red apple", "pos", steps=adaptive.steps // 2,
                                   max_steps=adaptive.steps // 2, baseline="zero")
    assert half.completeness_relative > 0.05  # ... and not further than needed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gxi = classifier.attribute("the cat sees the red apple", "pos", method="gradient_x_input")
    assert gxi.completeness_error is None and np.abs(gxi.scores).sum() > 0


def test_tokens_the_model_cannot_see_get_zero_attribution(wordpiece):
    model = tiny_model("bert", vocab_size=wordpiece.vocab_size, labels=["neg", "pos"])
    ids = torch.tensor([wordpiece.encode("the cat sees the red apple", add_special_tokens=True)])
    pad_mask = torch.ones_like(ids, dtype=torch.bool)
    pad_mask[0, 3] = False  # hidden from every other token: it cannot change [CLS]

    def score(batch):
        return model.classify(batch, pad_mask=pad_mask.expand(batch.size(0), -1)).log_softmax(-1)[:, 1]

    base = torch.zeros(ids.size(1), 32)
    vary = torch.ones(ids.size(1), dtype=torch.bool)
    scores, output, base_output = attribute_embeddings(model, ids, score, base, vary, steps=32)
    assert scores[3] == 0 and np.all(np.delete(scores, 3) != 0)
    assert abs(scores.sum() - (output - base_output)) <= 0.05 * abs(output - base_output) + 1e-6

    decoder = tiny_model("gpt")
    ids = torch.randint(0, 50, (1, 10), generator=torch.Generator().manual_seed(3))

    def next_at_4(batch):  # the prediction at position 4 reads tokens 0..4 only
        return decoder(batch)[:, 4].log_softmax(-1)[:, 7]

    scores, _, _ = attribute_embeddings(decoder, ids, next_at_4, torch.zeros(10, 32), torch.ones(10, dtype=torch.bool),
                                        steps=16)
    assert np.all(scores[5:] == 0) and np.all(scores[:5] != 0)


def test_logit_lens_last_depth_is_the_models_own_prediction(char_tokenizer, tmp_path):
    lm = make_lm(char_tokenizer, "llama")
    lens = lm.logit_lens(TEXT, top_k=3, out=tmp_path / "lens.png")
    ids = char_tokenizer.encode(TEXT)
    with torch.no_grad():
        probs = lm.model(torch.tensor([ids]))[0].softmax(-1)
    assert lens.depths == ["embeddings", "layer 0", "layer 1"] and lens.top_ids.shape == (3, len(ids), 3)
    np.testing.assert_array_equal(lens.top_ids[-1, :, 0], probs.argmax(-1).numpy())
    np.testing.assert_allclose(lens.top_probs[-1], probs.topk(3, -1).values.numpy(), atol=1e-6)
    assert not np.array_equal(lens.top_probs[0], lens.top_probs[-1])
    assert (tmp_path / "lens.png").stat().st_size > 5000


def test_neighbors_by_cosine(wordpiece):
    lm = make_lm(wordpiece, "bert")
    word, other = wordpiece.id_to_token(30), wordpiece.id_to_token(40)  # WordPiece training order varies: any two
    with torch.no_grad():
        lm.model.wte.weight[40] = 3 * lm.model.wte.weight[30]
    result = nearest_tokens(lm.model, wordpiece, word, k=5)
    assert result.query_tokens == [word] and result.neighbors[0] == (other, pytest.approx(1.0, abs=1e-6))
    assert len(result.neighbors) == 5 and all(t not in (word, "[PAD]", "[CLS]") for t, _ in result.neighbors)
    values = [c for _, c in result.neighbors]
    assert values == sorted(values, reverse=True)
    weight = lm.model.wte.weight.detach()
    third = wordpiece.token_to_id(result.neighbors[2][0])
    assert values[2] == pytest.approx(float(torch.cosine_similarity(weight[30], weight[third], dim=0)), abs=1e-6)
    assert lm.neighbors(word, k=2)[0][0] == other


def test_bad_input_gives_clear_errors(char_tokenizer, wordpiece):
    decoder = make_lm(char_tokenizer)
    with pytest.raises(ValueError, match="empty"):
        decoder.explain_attention("   ")
    with pytest.raises(ValueError, match="layer 5 does not exist: the model has 2 layers"):
        decoder.explain_attention(TEXT, layer=5)
    with pytest.raises(ValueError, match="head 4 does not exist"):
        decoder.explain_attention(TEXT, head=4)
    with pytest.warns(UserWarning, match="more than the model's block_size 32: explaining only its first 32"):
        result = decoder.explain_attention("x" * 40 + "y")
    assert result.weights.shape[-1] == 32
    with pytest.warns(UserWarning, match="block_size 32: explaining only its last 32"):
        lens = decoder.logit_lens("x" * 40 + "y")
    assert lens.tokens[-1] == "y"
    with pytest.raises(ValueError, match="class target needs a classification head.*'gpt'"):
        decoder.attribute(TEXT, "pos", kind="class")
    with pytest.raises(ValueError, match="target text is empty"):
        decoder.attribute(TEXT, "")
    with pytest.raises(ValueError, match="'joy' is not one of the model's labels: neg, pos"):
        make_lm(wordpiece, "bert", labels=["neg", "pos"]).attribute(TEXT, "joy")
    encoder = make_lm(wordpiece, "bert")
    with pytest.raises(ValueError, match="no classification head"):
        encoder.attribute(TEXT)
    with pytest.raises(ValueError, match="logit lens reads a decoder"):
        encoder.logit_lens(TEXT)
    with pytest.raises(ValueError, match="unknown attribution method"):
        decoder.attribute(TEXT, method="saliency")
    with pytest.raises(ValueError, match="use a .html, .png or .json"):
        decoder.attribute(TEXT, out="a.txt")

    class LSTMLike(torch.nn.Module):  # what a model without attention (issue 15's LSTM) looks like to explain/
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"arch": "lstm", "block_size": 32})()
            self.rnn = torch.nn.LSTM(8, 8)

    with pytest.raises(ValueError, match="needs a Transformer with attention.*'lstm'"):
        capture_attention(LSTMLike(), char_tokenizer, TEXT)
    with pytest.raises(ValueError, match="'lstm'"):
        logit_lens(LSTMLike(), char_tokenizer, TEXT)
    with pytest.raises(ValueError, match="token embedding"):
        nearest_tokens(LSTMLike(), char_tokenizer, "cat")


def test_cli_explain_commands(char_tokenizer, tmp_path, capsys):
    lm = make_lm(char_tokenizer)
    model_dir = lm.save(tmp_path / "model")
    assert main(["explain", "attention", str(model_dir), "--text", TEXT, "--out", str(tmp_path / "a.png")]) == 0
    assert (tmp_path / "a.png").is_file() and "strongest attention" in capsys.readouterr().out
    assert main(["explain", "attention", str(model_dir), "--text", "cat", "--layer", "1", "--head", "0", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["tokens"] == ["c", "a", "t"] and np.allclose(np.triu(np.array(data["weights"]), 1), 0)
    assert main(["explain", "attribution", str(model_dir), "--text", "the cat", "--target", " sees", "--steps", "16",
                 "--out", str(tmp_path / "a.html")]) == 0
    assert "completeness" in capsys.readouterr().out and "<span class=\"tok\"" in (tmp_path / "a.html").read_text()
    assert main(["explain", "lens", str(model_dir), "--text", "the cat", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["depths"][0] == "embeddings"
    assert main(["explain", "neighbors", str(model_dir), "--word", "c", "--k", "3"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
    assert main(["explain", "attention", str(model_dir), "--text", "", "--out", str(tmp_path / "b.png")]) == 2
    assert "error: the text to explain is empty" in capsys.readouterr().err and not (tmp_path / "b.png").exists()
    assert main(["explain", "attention", str(model_dir), "--text", TEXT, "--layer", "7"]) == 2
    assert "error: layer 7 does not exist" in capsys.readouterr().err
    assert main(["explain", "attribution", str(model_dir), "--text", TEXT, "--kind", "class"]) == 2
    assert "classification head" in capsys.readouterr().err
