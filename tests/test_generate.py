"""Generation: KV cache equals full recompute, batching, sampling controls, stop strings, long prompts."""
import time

import pytest
import torch

from lmforge.infer.generate import SamplingConfig, draw, generate, next_token, nucleus
from lmforge.tokenizer import Tokenizer

from conftest import small_corpus, tiny_model


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train("char", [small_corpus(50)])


@pytest.mark.parametrize("arch,extra", [("gpt", {}), ("llama", {}), ("llama", {"n_kv_head": 2})])
def test_greedy_generation_with_cache_equals_without(tokenizer, arch, extra):
    model = tiny_model(arch, vocab_size=tokenizer.vocab_size, block_size=64, **extra)
    greedy = SamplingConfig(max_new_tokens=40, temperature=0)
    cached = generate(model, tokenizer, ["the cat sees"], greedy, use_cache=True)
    full = generate(model, tokenizer, ["the cat sees"], greedy, use_cache=False)
    assert cached == full and len(cached[0]) > 0


@pytest.mark.parametrize("arch", ["gpt", "llama"])
def test_a_batch_of_prompts_gives_what_each_prompt_gives_alone(tokenizer, arch):
    model = tiny_model(arch, vocab_size=tokenizer.vocab_size, block_size=64)
    greedy = SamplingConfig(max_new_tokens=15, temperature=0)
    prompts = ["the cat", "a dog likes the blue", "my"]
    batch = generate(model, tokenizer, prompts, greedy)
    assert batch == [generate(model, tokenizer, [p], greedy)[0] for p in prompts]


def test_sampling_is_repeatable_with_a_seed_and_varies_without(tokenizer):
    model = tiny_model("gpt", vocab_size=tokenizer.vocab_size, block_size=64)
    first = generate(model, tokenizer, ["the"], SamplingConfig(30, temperature=1.0, seed=3))
    assert first == generate(model, tokenizer, ["the"], SamplingConfig(30, temperature=1.0, seed=3))
    others = {generate(model, tokenizer, ["the"], SamplingConfig(30, temperature=1.0, seed=s))[0] for s in range(5)}
    assert len(others) > 1


def test_top_k_one_is_greedy_and_top_p_keeps_the_nucleus():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.5]])
    history, mask = torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.bool)
    gen = torch.Generator().manual_seed(0)
    assert next_token(logits, history, mask, SamplingConfig(temperature=1.0, top_k=1), gen).item() == 1
    probs = logits.softmax(-1)[0]  # [0.087, 0.644, 0.237, 0.032]
    assert probs[1] < 0.7 < probs[1] + probs[2]
    picks = {next_token(logits, history, mask, SamplingConfig(temperature=1.0, top_p=0.7), gen).item() for _ in range(200)}
    assert picks == {1, 2}


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.999])
def test_the_nucleus_found_among_the_top_candidates_is_the_one_a_full_sort_finds(top_p):
    """A CPU looks for the nucleus among the 1,024 most likely tokens first (a full sort of a big vocabulary costs
    a quarter of a decoding step); where they fall short (flat rows, top_p near 1) it sorts them all."""
    torch.manual_seed(0)
    logits = torch.cat([torch.randn(3, 5000) * 4, torch.randn(1, 5000) * 0.1])  # the last row nearly flat
    fast = nucleus(logits, top_p)
    full = nucleus(logits, top_p, candidates=logits.size(-1))
    assert torch.equal(fast, full)
    kept = fast.isfinite()
    probs = logits.softmax(-1)
    assert bool(((probs * kept).sum(-1) >= top_p).all())  # the kept mass reaches top_p
    smallest_kept = torch.where(kept, probs, 2.0).amin(-1)
    assert bool((smallest_kept[:, None] >= torch.where(kept, 0.0, probs)).all())  # none left out is likelier
    # without the smallest kept token the mass falls short: the set is the smallest one
    assert bool(((probs * kept).sum(-1) - smallest_kept < top_p).all())


def test_draws_follow_the_probabilities_and_never_pick_a_zero_one():
    probs = torch.tensor([[0.5, 0.0, 0.2, 0.3, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]])
    gen = torch.Generator().manual_seed(0)
    picks = torch.stack([draw(probs, gen) for _ in range(20000)])  # (20000, 2)
    counts = torch.bincount(picks[:, 0], minlength=5).double() / 20000
    assert counts[1] == 0 and counts[4] == 0 and bool((picks[:, 1] == 4).all())
    assert torch.allclose(counts, probs[0].double(), atol=0.015)  # 3 sigma of a binomial share at n = 20000
    again = torch.stack([draw(probs, torch.Generator().manual_seed(0)) for _ in range(3)])
    assert torch.equal(again[0], again[1])  # repeatable with a seed
    unnormalised = draw(probs * 3.0, torch.Generator().manual_seed(0))  # rows need not sum to 1
    assert torch.equal(unnormalised, draw(probs, torch.Generator().manual_seed(0)))
    assert 0 <= draw(torch.full((1, 5), float("nan")), gen).item() < 5  # a broken row still names a token


def test_repetition_penalty_lowers_seen_tokens():
    logits = torch.tensor([[2.0, 1.9]])
    history, mask = torch.tensor([[0]]), torch.tensor([[True]])
    assert next_token(logits, history, mask, SamplingConfig(temperature=0), None).item() == 0
    assert next_token(logits, history, mask, SamplingConfig(temperature=0, repetition_penalty=1.5), None).item() == 1


def test_stop_string_ends_the_text_before_it(tokenizer):
    model = tiny_model("gpt", vocab_size=tokenizer.vocab_size, block_size=64)
    text = generate(model, tokenizer, ["the"], SamplingConfig(40, temperature=0))[0]
    stop = text[5:7]
    cut = generate(model, tokenizer, ["the"], SamplingConfig(40, temperature=0, stop=(stop,)))[0]
    assert cut == text[:text.find(stop)]


def test_streaming_pieces_add_up_to_the_result(tokenizer):
    model = tiny_model("gpt", vocab_size=tokenizer.vocab_size, block_size=64)
    pieces = []
    out = generate(model, tokenizer, ["the"], SamplingConfig(25, temperature=0), on_text=lambda i, p: pieces.append(p))
    assert "".join(pieces) == out[0]


def test_a_prompt_longer_than_the_context_is_cut_from_the_left_with_a_warning(tokenizer):
    model = tiny_model("gpt", vocab_size=tokenizer.vocab_size, block_size=32)
    long_prompt = "the old man finds a small house. " * 4
    with pytest.warns(UserWarning, match="keeping its last"):
        out = generate(model, tokenizer, [long_prompt], SamplingConfig(10, temperature=0, ignore_eos=True))
    assert len(out[0]) == 10


def test_generation_past_the_context_keeps_going(tokenizer):
    model = tiny_model("llama", vocab_size=tokenizer.vocab_size, block_size=16)
    out = generate(model, tokenizer, ["the"], SamplingConfig(60, temperature=1.0, seed=0, ignore_eos=True))
    assert len(out[0]) > 2 * 16  # special tokens (unknown, end-of-text) decode to nothing


def test_bad_sampling_values_are_clear_errors(tokenizer):
    model = tiny_model("gpt", vocab_size=tokenizer.vocab_size)
    for bad, word in [(dict(temperature=-1), "temperature"), (dict(top_p=1.5), "top_p"), (dict(top_k=0), "top_k")]:
        with pytest.raises(ValueError, match=word):
            generate(model, tokenizer, ["a"], SamplingConfig(5, **bad))
