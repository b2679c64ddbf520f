"""Generation: KV cache equals full recompute, batching, sampling controls, stop strings, long prompts."""
import time

import pytest
import torch

from lmforge.infer.generate import SamplingConfig, generate, next_token
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
