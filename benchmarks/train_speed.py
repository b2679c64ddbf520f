"""Training speed side by side: lmforge's GPT vs Hugging Face transformers' GPT2LMHeadModel.

Same shapes (nanoGPT's Tiny Shakespeare CPU recipe: 4 layers, 4 heads, 128 dims, block 64, batch 12),
same batches, same AdamW settings; prints ms/step of each and the ratio. Needs `pip install transformers`.
    python benchmarks/train_speed.py [--steps 200] [--dtype float32|bfloat16]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from common import Timer, shared_file
from lmforge.config import ModelConfig, TrainConfig
from lmforge.data.tokens import TokenWindows
from lmforge.models import build_model
from lmforge.tokenizer import Tokenizer
from lmforge.train.optim import make_optimizer


def batches(steps: int, batch_size: int, block: int):
    text = shared_file("tinyshakespeare", "input.txt").read_text()
    tok = Tokenizer.train("char", [text])
    windows = TokenWindows(np.asarray(tok.encode(text), dtype=np.uint16), block, 0.1)
    return tok.vocab_size, [windows.sample("train", batch_size, np.random.default_rng([0, s])) for s in range(steps)]


def run(model, forward, data, cfg: TrainConfig, dtype: str) -> float:
    optimizer = make_optimizer(model, cfg)
    model.train()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    warm = 10
    for i, (x, y) in enumerate(data):
        if i == warm:
            timer = Timer().__enter__()
        with autocast:
            logits = forward(model, x)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    timer.__exit__()
    return timer.seconds / (len(data) - warm) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    from transformers import GPT2Config, GPT2LMHeadModel

    vocab, data = batches(args.steps, 12, 64)
    cfg = TrainConfig(lr=1e-3, beta2=0.99, weight_decay=0.1)
    torch.manual_seed(0)
    ours = build_model(ModelConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=vocab))
    theirs = GPT2LMHeadModel(GPT2Config(n_layer=4, n_head=4, n_embd=128, n_positions=64, vocab_size=vocab,
                                        resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, attn_implementation="sdpa"))
    ms_ours = run(ours, lambda m, x: m(x), data, cfg, args.dtype)
    ms_theirs = run(theirs, lambda m, x: m(input_ids=x).logits, data, cfg, args.dtype)
    tokens = 12 * 64
    print(f"threads {torch.get_num_threads()}, dtype {args.dtype}, {args.steps} steps (first 10 not timed)")
    print(f"lmforge       {ms_ours:7.2f} ms/step  {tokens / ms_ours * 1000:9,.0f} tokens/s")
    print(f"transformers  {ms_theirs:7.2f} ms/step  {tokens / ms_theirs * 1000:9,.0f} tokens/s")
    print(f"speed ratio (transformers time / lmforge time): {ms_theirs / ms_ours:.2f}x")


if __name__ == "__main__":
    main()
