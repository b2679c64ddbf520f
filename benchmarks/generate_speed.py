"""Generation speed: lmforge with and without the KV cache, and transformers' generate, side by side.

A GPT of the given size (random weights: speed does not depend on them) produces 500 new tokens
greedily from a short prompt. Prints tokens/s of each, whether cached and uncached tokens agree,
and the ratios.
    python benchmarks/generate_speed.py [--new 500] [--n-layer 4 --n-embd 128] [--model runs/x/final]
"""
from __future__ import annotations

import argparse

import torch

from common import Timer
from lmforge.config import ModelConfig
from lmforge.infer.generate import SamplingConfig, generate
from lmforge.models import build_model
from lmforge.tokenizer import Tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new", type=int, default=500)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--model", help="a trained model directory instead of random weights")
    parser.add_argument("--no-transformers", action="store_true")
    args = parser.parse_args()
    if args.model:
        from lmforge import LM
        lm = LM.from_pretrained(args.model)
        model, tok = lm.model, lm.tokenizer
    else:
        tok = Tokenizer.train("char", ["abcdefghijklmnopqrstuvwxyz ,.\nABCDEFGHIJKLMNOPQRSTUVWXYZ!?;:'"])
        torch.manual_seed(0)
        model = build_model(ModelConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                                        block_size=args.new + 64, vocab_size=tok.vocab_size)).eval()
    greedy = SamplingConfig(max_new_tokens=args.new, temperature=0, ignore_eos=True)
    prompt = "First Citizen:\nBefore we proceed any further, hear me speak."
    results = {}
    for name, cache in [("lmforge, KV cache", True), ("lmforge, no cache", False)]:
        generate(model, tok, [prompt], SamplingConfig(max_new_tokens=8, temperature=0), use_cache=cache)  # warm up
        with Timer() as t:
            out = generate(model, tok, [prompt], greedy, use_cache=cache)[0]
        results[name] = (args.new / t.seconds, out)
    same = results["lmforge, KV cache"][1] == results["lmforge, no cache"][1]
    if not args.no_transformers and not args.model:
        from transformers import GPT2Config, GPT2LMHeadModel
        hf = GPT2LMHeadModel(GPT2Config(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                                        n_positions=args.new + 64, vocab_size=tok.vocab_size)).eval()
        ids = torch.tensor([tok.encode(prompt)])
        options = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
        hf.generate(ids, max_new_tokens=8, min_new_tokens=8, **options)
        with Timer() as t:
            hf.generate(ids, max_new_tokens=args.new, min_new_tokens=args.new, **options)
        results["transformers generate"] = (args.new / t.seconds, None)
    print(f"{args.new} new tokens, greedy, threads {torch.get_num_threads()}")
    for name, (speed, _) in results.items():
        print(f"  {name:22s} {speed:8.1f} tokens/s")
    base = results["lmforge, KV cache"][0]
    print(f"KV cache speed-up over recompute: {base / results['lmforge, no cache'][0]:.2f}x; identical tokens: {same}")
    if "transformers generate" in results:
        print(f"lmforge (cache) / transformers generate: {base / results['transformers generate'][0]:.2f}x")


if __name__ == "__main__":
    main()
