"""BERT encoder: bidirectional attention, padding invariance, bert-base size, MLM learning, fill-mask."""
import json
import random

import numpy as np
import pytest
import torch

from lmforge.api import LM
from lmforge.cli import main
from lmforge.config import ModelConfig
from lmforge.models import build_model, count_parameters
from lmforge.tasks import MaskedLMTask


def tiny_bert(vocab_size=60, **overrides):
    torch.manual_seed(0)
    options = dict(arch="bert", n_layer=2, n_head=4, n_embd=32, block_size=32, vocab_size=vocab_size)
    options.update(overrides)
    return build_model(ModelConfig(**options)).eval()


def patterned_corpus(n_lines=600, seed=0) -> str:
    """Sentences whose last word is fixed by the first: a masked word can be told from context on both sides."""
    rng = random.Random(seed)
    pairs = {"cat": "mat", "dog": "log", "bird": "tree", "fish": "pond", "frog": "rock"}
    middles = ["sat on the", "slept near the", "looked at the", "ran to the"]
    return "".join(f"the {a} {rng.choice(middles)} {b} .\n" for a, b in (rng.choice(list(pairs.items()))
                                                                        for _ in range(n_lines)))


VARIANTS = [dict(norm_position="post"), dict(norm_position="pre"), dict(position="rope"),
            dict(position="rope", pooling="mean")]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(v.values()))
def test_changing_a_token_changes_outputs_at_earlier_positions(variant):
    model = tiny_bert(**variant)
    ids = torch.randint(5, 60, (2, 20))
    for t in (5, 12, 19):
        changed = ids.clone()
        changed[:, t] = (changed[:, t] + 1) % 55 + 5
        a, b = model.hidden_states(ids), model.hidden_states(changed)
        # an encoder looks both ways: every earlier position sees the change
        assert ((a[:, :t] - b[:, :t]).abs().amax(-1) > 1e-4).all()


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(v.values()))
def test_padded_batch_equals_each_sequence_alone(variant):
    model = tiny_bert(**variant)
    lengths = [7, 20, 13]
    rows = [torch.randint(5, 60, (n,)) for n in lengths]
    ids = torch.zeros(3, 20, dtype=torch.long)  # 0 = [PAD]
    mask = torch.zeros(3, 20, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, :len(row)], mask[i, :len(row)] = row, True
    batched = model.hidden_states(ids, pad_mask=mask)
    model.classifier = torch.nn.Linear(32, 3)
    classes = model.classify(ids, pad_mask=mask)
    for i, row in enumerate(rows):
        alone = model.hidden_states(row[None])
        torch.testing.assert_close(batched[i, :len(row)], alone[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(classes[i], model.classify(row[None])[0], atol=1e-5, rtol=1e-4)
    # what the padding holds does not matter either
    noisy = torch.where(mask, ids, torch.randint(5, 60, ids.shape))
    torch.testing.assert_close(model.hidden_states(noisy, pad_mask=mask)[mask], batched[mask], atol=1e-5, rtol=1e-4)


def test_gpt_classify_reads_the_last_real_token_and_ignores_padding():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="gpt", n_layer=2, n_head=4, n_embd=32, block_size=32, vocab_size=60,
                                    labels=["a", "b"])).eval()
    rows = [torch.randint(1, 60, (n,)) for n in (4, 11)]
    ids = torch.zeros(2, 11, dtype=torch.long)
    mask = torch.zeros(2, 11, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, :len(row)], mask[i, :len(row)] = row, True
    batched = model.classify(ids, pad_mask=mask)
    for i, row in enumerate(rows):
        torch.testing.assert_close(batched[i], model.classify(row[None])[0], atol=1e-5, rtol=1e-4)


def test_pre_norm_adds_only_a_final_norm_and_round_trips(tmp_path):
    post, pre = tiny_bert(), tiny_bert(norm_position="pre")
    post_names, pre_names = set(post.state_dict()), set(pre.state_dict())
    assert not any(name.startswith("ln_f.") for name in post_names)  # BERT's names, unchanged
    assert pre_names - post_names == {"ln_f.weight", "ln_f.bias"} and post_names <= pre_names
    ids = torch.randint(5, 60, (2, 12))
    assert not torch.allclose(post.hidden_states(ids), pre.hidden_states(ids))
    lm = LM.new("bert", n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=60, corpus=None,
                norm_position="pre")
    lm.save(tmp_path / "pre")
    loaded = LM.from_pretrained(tmp_path / "pre")
    assert loaded.config.model.norm_position == "pre" and loaded.model.ln_f is not None


def test_rotary_encoder_has_no_position_table_and_still_knows_order(tmp_path):
    model = tiny_bert(position="rope")
    assert model.wpe is None and not any(name.startswith("wpe.") for name in model.state_dict())
    with torch.no_grad():  # sharpen attention: at init it is near uniform, and position hardly shows
        for name, param in model.named_parameters():
            if name.startswith("h.") and ".attn." in name and param.dim() == 2:
                param.mul_(30)
    ids = torch.randint(5, 60, (1, 12))
    swapped = ids[:, [1, 0, *range(2, 12)]]
    # not a bag of words: swapping two tokens changes what a later position sees
    assert (model.hidden_states(ids)[0, 5] - model.hidden_states(swapped)[0, 5]).abs().max() > 1e-4
    lm = LM.new("bert", n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=60, corpus=None, position="rope")
    lm.save(tmp_path / "rope")
    loaded = LM.from_pretrained(tmp_path / "rope")
    assert loaded.config.model.position == "rope"
    probe = torch.randint(5, 60, (2, 16))
    torch.testing.assert_close(loaded.model.eval().hidden_states(probe), lm.model.eval().hidden_states(probe),
                               atol=0, rtol=0)


def test_mean_pooling_averages_the_real_tokens_only():
    model = tiny_bert(pooling="mean")
    ids = torch.randint(5, 60, (2, 9))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 4:] = False
    hidden = model.hidden_states(ids, pad_mask=mask)
    pooled = model.pooled(ids, pad_mask=mask)
    torch.testing.assert_close(pooled[0], hidden[0].mean(0))
    torch.testing.assert_close(pooled[1], hidden[1, :4].mean(0))
    with pytest.raises(ValueError, match="pooling is an arch 'bert' switch"):
        ModelConfig(arch="gpt", pooling="mean")


def test_token_types_change_the_output():
    model = tiny_bert()
    ids = torch.randint(5, 60, (1, 10))
    types = torch.zeros_like(ids)
    types[:, 5:] = 1
    assert not torch.allclose(model.hidden_states(ids), model.hidden_states(ids, token_type_ids=types))


def test_bert_base_dimensions_build():
    cfg = ModelConfig(arch="bert", n_layer=12, n_head=12, n_embd=768, block_size=512, vocab_size=30522,
                      dropout=0.1, labels=["neg", "pos"])
    model = build_model(cfg)
    # bert-base-uncased: 109.48M parameters with the pooler; +MLM transform/bias and a 2-class head
    assert 109.4e6 < count_parameters(model) < 110.2e6
    assert model.lm_head.weight is model.wte.weight
    assert model.mlm_logits(torch.zeros(1, 768)).shape == (1, 30522)


@pytest.fixture(scope="module")
def trained_mlm(tmp_path_factory):
    """A tiny BERT taught the patterned corpus with masked-LM (about 10 s on 2 cores)."""
    folder = tmp_path_factory.mktemp("mlm")
    corpus = folder / "corpus.txt"
    corpus.write_text(patterned_corpus(), encoding="utf-8")
    torch.manual_seed(0)
    lm = LM.new("bert", n_layer=2, n_head=4, n_embd=64, block_size=32, tokenizer="wordpiece", vocab_size=100,
                corpus=corpus)
    result = lm.fit(corpus, objective="mlm", max_steps=600, batch_size=32, lr=3e-3, min_lr=3e-4, warmup_steps=30,
                    weight_decay=0.0, eval_every=600, eval_steps=5, progress=False, run_dir=folder / "run")
    return lm, result, folder


PLACES, ANIMALS = {"mat", "log", "tree", "pond", "rock"}, {"cat", "dog", "bird", "fish", "frog"}


def test_mlm_learns_to_fill_masks(trained_mlm):
    lm, result, _ = trained_mlm
    # chance is 1/vocab (~1%); always guessing the commonest token ('the') scores ~25%
    assert result.eval["val_mlm_accuracy"] > 0.5, result.eval
    # the slot's word class is learned from both sides: the five places after "on the", animals after "the"
    assert {token for token, _ in lm.fill_mask("the cat sat on the [MASK] .")} == PLACES
    assert {token for token, _ in lm.fill_mask("the [MASK] slept near the pond .")} == ANIMALS
    assert lm.fill_mask("the dog ran to the log [MASK]")[0][0] == "."


def test_fill_mask_with_several_masks_gives_one_list_each(trained_mlm):
    lm, _, _ = trained_mlm
    out = lm.fill_mask("the [MASK] looked at the [MASK] .", top_k=3)
    assert len(out) == 2 and all(len(choices) == 3 for choices in out)
    vocab = lm.tokenizer.backend.get_vocab()
    for choices in out:
        probabilities = [p for _, p in choices]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-6
        assert all(token in vocab and not token.startswith("[") for token, _ in choices)


def test_fill_mask_errors_are_clear(trained_mlm):
    lm, _, _ = trained_mlm
    with pytest.raises(ValueError, match=r"no \[MASK\]"):
        lm.fill_mask("the cat sat on the mat .")
    gpt = LM.new("gpt", n_layer=1, n_head=2, n_embd=16, block_size=16, corpus=None)
    with pytest.raises(ValueError, match="encoder"):
        gpt.fill_mask("a [MASK] b")


def test_saved_mlm_model_fills_masks_from_the_cli(trained_mlm, capsys):
    lm, _, folder = trained_mlm
    final = folder / "run" / "final"
    assert main(["fill-mask", str(final), "the cat sat on the [MASK] .", "--top-k", "2", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown[0][0]["token"] in PLACES and len(shown[0]) == 2
    assert main(["fill-mask", str(final), "no mask here"]) == 2
    assert "[MASK]" in capsys.readouterr().err


def test_evaluate_on_a_bert_gives_masked_lm_metrics(trained_mlm, tmp_path):
    lm, _, _ = trained_mlm
    held_out = tmp_path / "held_out.txt"
    held_out.write_text(patterned_corpus(100, seed=9), encoding="utf-8")
    metrics = lm.evaluate(held_out)
    assert {"loss", "perplexity", "mlm_accuracy", "tokens"} <= metrics.keys()
    assert metrics["mlm_accuracy"] > 0.5 and metrics["perplexity"] < 5
    assert lm.evaluate(held_out) == metrics  # masks are fixed: the same score every time


def test_mlm_batches_are_deterministic_and_wrapped_in_cls_sep(trained_mlm):
    lm, _, _ = trained_mlm
    tokens = np.asarray(lm.tokenizer.encode(patterned_corpus(200)), dtype=np.int64)
    task = MaskedLMTask(tokens, lm.tokenizer, block_size=32, val_fraction=0.1, seed=3)
    a, b, c = task.train_batch(5, 0, 8), task.train_batch(5, 0, 8), task.train_batch(6, 0, 8)
    assert torch.equal(a["ids"], b["ids"]) and torch.equal(a["labels"], b["labels"])
    assert not torch.equal(a["ids"], c["ids"])
    assert a["ids"].shape == (8, 32)
    assert (a["ids"][:, 0] == lm.tokenizer.cls_id).all() and (a["ids"][:, -1] == lm.tokenizer.sep_id).all()
    assert (a["labels"][:, [0, -1]] == -100).all()


def test_mlm_objective_is_refused_for_a_decoder():
    with pytest.raises(Exception, match="decoder"):
        LM.new("gpt", n_layer=1, n_head=2, n_embd=16, block_size=16).fit(objective="mlm", max_steps=1)
