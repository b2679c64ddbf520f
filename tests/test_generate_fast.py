"""The fast generation paths against the plain ones: packed oneDNN linears vs torch's linear, the cached batched
loop vs recomputation, one prompt at a time and transformers' generate; end-of-text cuts."""
import pytest
import torch

from lmforge.infer import packed
from lmforge.infer.generate import SamplingConfig, continue_prompts, generate
from lmforge.infer.prompt_cache import PromptCache
from lmforge.tokenizer import Tokenizer

from conftest import small_corpus, tiny_model

WIDE = dict(n_layer=3, n_head=6, n_embd=384, block_size=128)  # 21 MB of linear weights: they get packed


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train("char", [small_corpus(50)])


@pytest.mark.skipif(not packed.available(), reason="this torch build has no oneDNN linear")
@pytest.mark.parametrize("rows", [1, 3])
def test_packed_linears_give_the_logits_of_the_plain_model(tokenizer, rows):
    model = tiny_model("gpt", vocab_size=tokenizer.vocab_size, **WIDE)
    ids = torch.randint(0, tokenizer.vocab_size, (rows, 9))
    with torch.inference_mode():
        plain = model(ids)
        with packed.packed_linears(model, rows) as count:
            fast = model(ids)
        again = model(ids)
    assert count == 3 * 4  # qkv, proj, mlp up and down of each layer; the small head stays plain
    assert (fast - plain).abs().max() < 1e-4
    assert torch.equal(again, plain)  # restored on exit
    assert all("forward" not in m.__dict__ for m in model.modules())


GQA = dict(WIDE, arch="llama", n_kv_head=2)  # SwiGLU MLPs and grouped-query attention, 3 query heads per key head


@pytest.mark.skipif(not packed.available(), reason="this torch build has no oneDNN linear")
def test_packed_swiglu_multiplies_gate_and_up_as_one_product(tokenizer):
    model = tiny_model(vocab_size=tokenizer.vocab_size, **GQA)
    ids = torch.randint(0, tokenizer.vocab_size, (2, 9))
    with torch.inference_mode():
        plain = model(ids)
        with packed.packed_linears(model, 2) as count:
            assert "forward" in model.h[0].mlp.__dict__ and "forward" not in model.h[0].mlp.gate.__dict__
            fast = model(ids)
            with packed.packed_linears(model, 2) as inner:  # nested (a chat session, then each reply)
                assert inner == 0 and torch.equal(model(ids), fast)
        again = model(ids)
    assert count == 3 * 4  # qkv, proj, gate with up, down
    assert (fast - plain).abs().max() < 1e-4
    assert torch.equal(again, plain)
    assert all("forward" not in m.__dict__ for m in model.modules())


@pytest.mark.skipif(torch.bfloat16 not in packed.packable_dtypes(), reason="oneDNN has no bf16 kernels here")
@pytest.mark.parametrize("arch", ["gpt", "llama"])
def test_packed_bfloat16_linears_give_the_logits_of_torch_bfloat16(tokenizer, arch):
    # 25 MB of bf16 linear weights: they stream from memory, so every product is packed even for one row
    model = tiny_model(arch, tokenizer.vocab_size, n_layer=4, n_head=8, n_embd=512, block_size=128,
                       n_kv_head=2 if arch == "llama" else None).to(torch.bfloat16)
    ids = torch.randint(0, tokenizer.vocab_size, (1, 9))
    with torch.inference_mode():
        plain = model(ids).float()
        with packed.packed_linears(model, 1) as count:
            fast = model(ids).float()
    assert count == 4 * 4
    # bf16 outputs of the same products: apart by a few of bf16's rounding steps at most
    assert (fast - plain).abs().max() <= 0.02 * plain.abs().max()
    greedy = SamplingConfig(max_new_tokens=20, temperature=0, ignore_eos=True)
    assert generate(model, tokenizer, ["the cat"], greedy) == generate(model, tokenizer, ["the cat"], greedy,
                                                                        use_cache=False)


@pytest.mark.parametrize("arch", ["gpt", "llama", "lstm"])
def test_last_only_logits_are_the_last_position_of_the_full_ones(arch):
    """A prompt's prefill asks for the last position's logits alone (the head skips the others)."""
    model = tiny_model(arch)
    ids = torch.randint(0, 50, (2, 11))
    with torch.inference_mode():
        full = model(ids)
        last = model(ids, last_only=True)
    assert last.shape == (2, 1, 50)
    assert torch.allclose(last[:, 0], full[:, -1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "lstm"])
def test_a_prompt_cache_prefills_only_what_is_new_and_changes_no_token(tokenizer, arch):
    model = tiny_model(arch, vocab_size=tokenizer.vocab_size, block_size=128)
    short, longer = (SamplingConfig(max_new_tokens=n, temperature=0, ignore_eos=True) for n in (15, 40))
    cache = PromptCache()
    first = continue_prompts(model, tokenizer, ["the cat"], short, prompt_cache=cache)[0]
    prompt = tokenizer.encode("the cat") + first.tokens + tokenizer.encode(" and the dog")
    # the next prompt repeats the first and its continuation; more new tokens: a bigger cache, the prefix copied
    again = continue_prompts(model, tokenizer, [prompt], longer, prompt_cache=cache)[0]
    assert again.tokens == continue_prompts(model, tokenizer, [prompt], longer)[0].tokens
    # the cache held the prompt and every new token but the last (chosen, never fed); a recurrent state: nothing
    assert cache.reused == (len(tokenizer.encode("the cat")) + len(first.tokens) - 1 if arch == "llama" else 0)
    continue_prompts(model, tokenizer, [prompt], short, prompt_cache=cache)
    assert cache.reused == (len(prompt) - 1 if arch == "llama" else 0)  # all of it: the last token is fed again
    with torch.no_grad():  # other weights (a training step): the cache is not reused
        next(model.parameters()).mul_(1.0)
    changed = continue_prompts(model, tokenizer, [prompt], short, prompt_cache=cache)[0]
    assert cache.reused == 0 and changed.tokens == continue_prompts(model, tokenizer, [prompt], short)[0].tokens


def test_grouped_query_decoding_step_equals_repeated_keys():
    """A one-token step folds each key head's queries into one block of rows (no copied keys): the same output
    as attending with keys and values repeated per query head, with and without a padding mask."""
    model = tiny_model(**GQA)
    attn, cfg = model.h[0].attn, model.config
    x, past = torch.randn(2, 7, cfg.n_embd), torch.randn(2, 1, cfg.n_embd)
    pad = torch.ones(2, 8, dtype=torch.bool)
    pad[1, :3] = False
    rope = model.rope(torch.tensor([7]))
    with torch.inference_mode():
        for pad_mask in (None, pad):
            cache = model.make_cache(2, 8)[0]
            attn(x, causal=True, cache=cache, rope=model.rope(torch.arange(7)),
                 pad_mask=None if pad_mask is None else pad_mask[:, :7])
            folded = attn(past, causal=True, cache=cache, rope=rope, pad_mask=pad_mask)
            cache.length -= 1  # the same step again through the repeat_interleave path (return_weights)
            repeated, _ = attn(past, causal=True, cache=cache, rope=rope, pad_mask=pad_mask, return_weights=True)
            assert (folded - repeated).abs().max() < 1e-6


def test_packed_linears_leave_small_and_training_layers_alone(tokenizer):
    model = tiny_model("gpt", vocab_size=tokenizer.vocab_size)  # 32 wide: nothing worth packing
    with packed.packed_linears(model, 1) as count:
        assert count == 0
    wide = tiny_model("gpt", vocab_size=tokenizer.vocab_size, **WIDE)
    ids = torch.randint(0, tokenizer.vocab_size, (2, 5))
    with packed.packed_linears(wide, 2):
        wide(ids).sum().backward()  # gradients recorded: torch's own linear, so backward works
    assert wide.h[0].mlp.up.weight.grad is not None


@pytest.mark.parametrize("arch", ["gpt", "llama"])
def test_fast_greedy_batch_equals_recomputation_and_each_prompt_alone(tokenizer, arch):
    model = tiny_model(arch, vocab_size=tokenizer.vocab_size, **WIDE)
    greedy = SamplingConfig(max_new_tokens=30, temperature=0, ignore_eos=True)
    prompts = ["the cat", "a dog likes the blue", "my"]
    batch = generate(model, tokenizer, prompts, greedy)  # packed linears, KV cache, one left-padded prefill
    assert batch == generate(model, tokenizer, prompts, greedy, use_cache=False)  # the plain path
    assert batch == [generate(model, tokenizer, [p], greedy)[0] for p in prompts]
    assert all(len(text) == 30 for text in batch)


def test_end_of_text_cuts_each_row_where_it_appears(tokenizer):
    model = tiny_model("gpt", vocab_size=tokenizer.vocab_size, block_size=64)
    prompts = ["the cat", "a dog likes the blue"]
    full = generate(model, tokenizer, prompts, SamplingConfig(40, temperature=0, ignore_eos=True))
    # make a character the first row produces early the end-of-text token: rows must stop right before it
    stop_char = full[0][3]
    ending = Tokenizer(tokenizer.backend, eos_token=stop_char)
    cut = generate(model, ending, prompts, SamplingConfig(40, temperature=0))
    assert cut == [text[:text.index(stop_char)] if stop_char in text else text for text in full]
    assert cut[0] == full[0][:full[0].index(stop_char)]
    streamed = []
    assert generate(model, ending, prompts[:1], SamplingConfig(40, temperature=0),
                    on_text=lambda i, piece: streamed.append(piece)) == cut[:1]
    assert "".join(streamed) == cut[0]


def test_no_new_tokens_gives_empty_texts(tokenizer):
    model = tiny_model("gpt", vocab_size=tokenizer.vocab_size)
    assert generate(model, tokenizer, ["the", "a dog"], SamplingConfig(0, temperature=0)) == ["", ""]


def test_fast_batched_greedy_equals_transformers_generate_with_left_padding(tmp_path, tokenizer):
    pytest.importorskip("transformers")
    from transformers import GPT2LMHeadModel

    from lmforge import LM
    from lmforge.config import Config

    model = tiny_model("gpt", vocab_size=tokenizer.vocab_size, **WIDE)
    config = Config.model_validate({"model": {**WIDE, "arch": "gpt", "vocab_size": tokenizer.vocab_size},
                                    "tokenizer": {"kind": "char"}})
    lm = LM(model, tokenizer, config)
    hf = GPT2LMHeadModel.from_pretrained(lm.save_hf(tmp_path / "hf")).eval()
    prompts = ["the old man", "a", "my friend eats some bread"]
    rows = [tokenizer.encode(p) for p in prompts]
    width, pad = max(map(len, rows)), tokenizer.pad_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    with torch.inference_mode():
        out = hf.generate(ids, attention_mask=attention, max_new_tokens=25, do_sample=False, pad_token_id=pad,
                          eos_token_id=None)
    theirs = [tokenizer.decode(row[width:].tolist()) for row in out]
    assert lm.generate(prompts, max_new_tokens=25, temperature=0, ignore_eos=True) == theirs
