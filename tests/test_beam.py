"""Beam search: with enough beams it finds what an exhaustive search finds; one beam is greedy; it equals
transformers' beam search on imported checkpoints."""
import itertools

import pytest
import torch

from lmforge.infer.beam import beam_search, cut_at_stop
from lmforge.infer.generate import SamplingConfig, generate
from lmforge.tokenizer import Tokenizer

from conftest import small_corpus, tiny_model

EOS = 5


def peaked_model(seed: int):
    # a random tiny model with sharp, distinct next-token distributions, so the best sequence is unambiguous
    model = tiny_model("gpt", vocab_size=6, block_size=16)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return model


def sequence_logprob(model, prompt, tokens):
    ids = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logprobs = model(ids)[0].float().log_softmax(-1)
    return sum(float(logprobs[len(prompt) - 1 + i, t]) for i, t in enumerate(tokens))


def exhaustive_best(model, prompt, max_new_tokens, length_penalty):
    """Score every sequence: ended by EOS at each length, or cut at max_new_tokens."""
    best = None
    for length in range(max_new_tokens + 1):
        for body in itertools.product([t for t in range(6) if t != EOS], repeat=length):
            endings = [True] if length < max_new_tokens else [False]
            for ended in endings:
                tokens = list(body) + ([EOS] if ended else [])
                if not tokens:
                    continue
                score = sequence_logprob(model, prompt, tokens) / len(tokens) ** length_penalty
                if best is None or score > best[0]:
                    best = (score, list(body), ended)
    return best


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0, -0.5])
@pytest.mark.parametrize("seed", [0, 1])
def test_wide_beam_equals_exhaustive_search(seed, length_penalty):
    model = peaked_model(seed)
    prompt = [1, 2]
    score, tokens, ended = exhaustive_best(model, prompt, 3, length_penalty)
    # 150 beams hold every live sequence (5 x 5) and every candidate (25 x 6): the search is exhaustive
    found = beam_search(model, prompt, num_beams=150, max_new_tokens=3, length_penalty=length_penalty, eos_id=EOS)[0]
    assert found.tokens == tokens and found.finished == ended
    assert found.score == pytest.approx(score, abs=1e-4)


def test_beam_scores_are_the_sequences_log_probabilities():
    model = peaked_model(2)
    hyps = beam_search(model, [3], num_beams=4, max_new_tokens=5, length_penalty=1.0, eos_id=EOS, num_return=4)
    assert len(hyps) == 4 and [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
    for h in hyps:
        tokens = h.tokens + ([EOS] if h.finished else [])
        assert h.logprob == pytest.approx(sequence_logprob(model, [3], tokens), abs=1e-4)
        assert h.score == pytest.approx(h.logprob / len(tokens), abs=1e-4)


def test_wider_beams_find_likelier_sequences_than_greedy():
    gains = []
    for seed in range(6):
        model = peaked_model(seed)
        greedy, wide = (beam_search(model, [1], num_beams=k, max_new_tokens=6, length_penalty=0.0, eos_id=None)[0].score
                        for k in (1, 64))
        assert wide >= greedy - 1e-5
        gains.append(wide - greedy)
    assert max(gains) > 1e-3  # on some of these models greedy is not the most likely sequence: the search pays off


def test_one_beam_is_greedy():
    tokenizer = Tokenizer.train("char", [small_corpus(50)])
    model = tiny_model("gpt", vocab_size=tokenizer.vocab_size, block_size=64)
    greedy = generate(model, tokenizer, ["the cat"], SamplingConfig(max_new_tokens=20, temperature=0, ignore_eos=True))
    beam = beam_search(model, tokenizer.encode("the cat"), num_beams=1, max_new_tokens=20, eos_id=None)[0]
    assert tokenizer.decode(beam.tokens) == greedy[0]


def test_bad_beam_arguments_are_refused_clearly():
    model = peaked_model(0)
    with pytest.raises(ValueError, match="num_beams"):
        beam_search(model, [1], num_beams=0)
    with pytest.raises(ValueError, match="block_size 16"):
        beam_search(model, [1] * 10, num_beams=2, max_new_tokens=10)
    assert cut_at_stop("ab.cd.", (".", "c")) == "ab"


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_beam_search_equals_transformers_on_an_imported_model(tmp_path, kind):
    pytest.importorskip("transformers")
    from test_interop import load, make_hf

    hf, directory = make_hf(tmp_path, kind)
    lm = load(directory)
    hf.generation_config.eos_token_id = None  # every beam runs to max_new_tokens: no end-of-text conventions
    for prompt in ([5, 9, 2], [17]):
        ours = beam_search(lm.model, prompt, num_beams=4, max_new_tokens=10, eos_id=None, num_return=4)
        with torch.no_grad():
            theirs = hf.generate(torch.tensor([prompt]), num_beams=4, num_return_sequences=4, max_new_tokens=10,
                                 do_sample=False, length_penalty=1.0, pad_token_id=hf.config.pad_token_id,
                                 output_scores=True, return_dict_in_generate=True)
        assert [h.tokens for h in ours] == [row[len(prompt):].tolist() for row in theirs.sequences]
        assert [h.score for h in ours] == pytest.approx(theirs.sequences_scores.tolist(), abs=1e-4)


@pytest.mark.parametrize("arch", ["gpt", "llama"])
def test_beam_search_on_fixed_cache_rows_equals_the_growing_cache(arch):
    # the static path (the default on CUDA): num_beams fixed rows, the reorder inside the step
    model = tiny_model(arch, vocab_size=40, block_size=48)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    for beams, penalty, new in ((1, 1.0, 12), (4, 1.0, 20), (5, 0.0, 30), (3, 2.0, 9)):
        for prompt in ([1, 2, 3], [7]):
            plain = beam_search(model, prompt, num_beams=beams, max_new_tokens=new, length_penalty=penalty,
                                eos_id=EOS, num_return=beams, static=False)
            fixed = beam_search(model, prompt, num_beams=beams, max_new_tokens=new, length_penalty=penalty,
                                eos_id=EOS, num_return=beams, static=True)
            assert [(h.tokens, h.finished) for h in fixed] == [(h.tokens, h.finished) for h in plain]
            assert [h.score for h in fixed] == pytest.approx([h.score for h in plain], rel=1e-6)
