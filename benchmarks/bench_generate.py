"""Generation speed: lmforge's public `LM.generate` against transformers' `generate`, same weights, same run.

Each case builds one lmforge GPT (random weights: speed does not depend on them), exports it with
`LM.save_hf` and loads that into transformers' GPT2LMHeadModel, so both hold identical weights. Both generate
greedily with a KV cache, interleaved A B A B ...; the table gives median tokens/s and the ratio, and whether
the two produced the same tokens. Writes the "generate" section of benchmarks/RESULTS.md.

    python benchmarks/bench_generate.py                  # all cases (about 2 minutes on 2 cores)
    python benchmarks/bench_generate.py --rounds 3 --new 200 --no-write
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import machine, write_section  # noqa: E402

from lmforge import LM  # noqa: E402
from lmforge.config import Config  # noqa: E402
from lmforge.models import build_model  # noqa: E402
from lmforge.tokenizer import Tokenizer  # noqa: E402

# 63 characters + the char tokenizer's two specials = vocab 65, as char Tiny Shakespeare
CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ \n,.!?;:'-&"
PROMPT = "First Citizen:\nBefore we proceed any further, hear me speak."
PROMPTS = ["ROMEO:", "Speak, speak.", "First Citizen:\nYou are all resolved rather to die than to famish?",
           "All:\nResolved.", "MENENIUS:\nWhat work's, my countrymen, in hand? Where go you",
           "O", "KING RICHARD II:\nOld John of Gaunt, time-honour'd Lancaster,", "Nay, but speak not maliciously."]


def make_pair(n_layer: int, n_head: int, n_embd: int, block: int, workdir: Path):
    """An lmforge LM and a transformers GPT2LMHeadModel per attention implementation, all with the same weights."""
    from transformers import GPT2LMHeadModel

    tokenizer = Tokenizer.train("char", [CHARS])
    config = Config.model_validate({"model": {"arch": "gpt", "n_layer": n_layer, "n_head": n_head, "n_embd": n_embd,
                                              "block_size": block, "vocab_size": tokenizer.vocab_size, "dropout": 0.0},
                                    "tokenizer": {"kind": "char"}})
    torch.manual_seed(0)
    lm = LM(build_model(config.model).eval(), tokenizer, config)
    path = lm.save_hf(workdir / f"gpt-{n_layer}x{n_embd}")
    hf = {impl: GPT2LMHeadModel.from_pretrained(path, attn_implementation=impl).eval() for impl in ("eager", "sdpa")}
    return lm, hf


def hf_generate(model, lm: LM, prompts: list[str], new: int) -> list[str]:
    """transformers' greedy generate on left-padded prompts, `new` tokens each; the continuations as text."""
    rows = [lm.tokenizer.encode(p) for p in prompts]
    width = max(map(len, rows))
    pad = lm.tokenizer.pad_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=pad,
                             eos_token_id=None, use_cache=True)
    return [lm.tokenizer.decode(row[width:].tolist()) for row in out]


def lm_generate(lm: LM, prompts: list[str], new: int) -> list[str]:
    return lm.generate(prompts, max_new_tokens=new, temperature=0, ignore_eos=True)


def timed(fn) -> tuple[float, list[str]]:
    began = time.perf_counter()
    out = fn()
    return time.perf_counter() - began, out


def run_case(name: str, shape: tuple[int, int, int], prompts: list[str], new: int, rounds: int, workdir: Path) -> dict:
    lm, hf_models = make_pair(*shape, block=1024, workdir=workdir)
    # warm both up, and let transformers use whichever attention is faster at this shape
    lm_generate(lm, prompts, 16)
    impl_time = {}
    for impl, model in hf_models.items():
        hf_generate(model, lm, prompts, 16)
        impl_time[impl] = min(timed(lambda: hf_generate(model, lm, prompts, 32))[0] for _ in range(2))
    impl = min(impl_time, key=impl_time.get)
    hf = hf_models[impl]
    ours, theirs = [], []
    for _ in range(rounds):  # interleaved, so drifts in machine load hit both alike
        seconds, lm_out = timed(lambda: lm_generate(lm, prompts, new))
        ours.append(seconds)
        seconds, hf_out = timed(lambda: hf_generate(hf, lm, prompts, new))
        theirs.append(seconds)
    floor = _products_alone(lm.model, len(prompts)) if len(prompts) == 1 else None
    tokens = new * len(prompts)
    same = sum(a == b for a, b in zip(lm_out, hf_out))
    agree = [_common_prefix(a, b) for a, b in zip(lm_out, hf_out)]
    result = dict(name=name, shape=shape, batch=len(prompts), new=new, impl=impl,
                  lm=tokens / statistics.median(ours), hf=tokens / statistics.median(theirs),
                  same=same, agree=min(agree), floor=floor)
    result["ratio"] = result["lm"] / result["hf"]
    print(f"{name}: lmforge {result['lm']:,.0f} tokens/s, transformers ({impl}) {result['hf']:,.0f} tokens/s, "
          f"{result['ratio']:.2f}x; identical outputs {same}/{len(prompts)} (shortest common prefix "
          f"{min(agree)} characters)" + (f"; matrix products alone {floor:,.0f} tokens/s" if floor else ""), flush=True)
    return result


def _products_alone(model, rows: int, repeats: int = 50) -> float:
    """Steps/s of one decoding step's matrix products alone (every linear layer on `rows` x 1 inputs, weights
    packed as generation packs them): the speed no implementation of this loop on these kernels can pass."""
    from lmforge.infer.packed import packed_linears

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = [torch.randn(rows, 1, m.in_features) for m in linears]
    with torch.inference_mode(), packed_linears(model, rows):
        for _ in range(3):
            for m, x in zip(linears, inputs):
                m(x)
        began = time.perf_counter()
        for _ in range(repeats):
            for m, x in zip(linears, inputs):
                m(x)
    return repeats / (time.perf_counter() - began)


def _common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new", type=int, default=500, help="new tokens per prompt (default 500)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of each, interleaved (default 5)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    cases = [("batch 1, small", (4, 4, 128), [PROMPT], 3.0), ("batch 1, 6x384", (6, 6, 384), [PROMPT], 3.0),
             ("batch 8, 6x384, prompts of 1-62 tokens", (6, 6, 384), PROMPTS, 2.0)]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, shape, prompts, target in cases:
            results.append({**run_case(name, shape, prompts, args.new, args.rounds, Path(tmp)), "target": target})
    lines = ["## Generation (`benchmarks/bench_generate.py`)", "", machine(), "",
             f"Greedy, KV cache, {args.new} new tokens per prompt, lmforge `LM.generate(..., temperature=0, "
             "ignore_eos=True)` vs transformers `GPT2LMHeadModel.generate(do_sample=False)` on the same weights "
             f"(exported with `LM.save_hf`), interleaved, median of {args.rounds}; vocab 65, block 1024. "
             "transformers uses the faster of its eager and sdpa attention at each shape. *Products alone*: one "
             "step's matrix products by themselves, as lmforge runs them (no attention, no Python around them), "
             "the ceiling for batch 1.", "",
             "| case | layers x heads x dims | lmforge tokens/s | transformers tokens/s | ratio | target | "
             "identical outputs | products alone (tokens/s, max ratio) |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        n_layer, n_head, n_embd = r["shape"]
        met = "met" if r["ratio"] >= r["target"] else "**missed**"
        lines.append(f"| {r['name']} | {n_layer} x {n_head} x {n_embd} | {r['lm']:,.0f} | {r['hf']:,.0f} ({r['impl']}) "
                     f"| **{r['ratio']:.2f}x** | >= {r['target']:g}x ({met}) | {r['same']}/{r['batch']} | "
                     + (f"{r['floor']:,.0f}, {r['floor'] / r['hf']:.1f}x |" if r["floor"] else "- |"))
    markdown = "\n".join(lines)
    print(markdown)
    if not args.no_write:
        print(f"wrote {write_section('generate', markdown)}")


if __name__ == "__main__":
    main()
