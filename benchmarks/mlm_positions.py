"""Masked-LM from scratch on natural English: BERT's learned position table vs rotary positions.

Two encoders that differ only in model.position are pretrained on the same text, with the same tokenizer,
seed, batches, masks and schedule; prints validation loss and masked-token accuracy of each as training goes.
The text is SST's training sentences (labels dropped), four Gutenberg novels and WikiText-2 valid from the
shared data folder, as benchmarks/encoder_quality.py pretrains on.

    python benchmarks/mlm_positions.py [--steps 1200] [--layers 2] [--n-embd 128] [--dtype bfloat16]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from common import shared_file
from encoder_quality import unlabeled_text
from lmforge import LM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = parser.parse_args()
    torch.set_num_threads(2)

    scratch = Path(tempfile.mkdtemp(prefix="mlm-positions-"))
    shared_file("sst2-sentence")  # exits with a clear message where the shared data is absent
    sst, sources = unlabeled_text(scratch)
    # one tokenizer for both (trained once)
    tokenizer_path = scratch / "tokenizer.json"
    LM.new("bert", tokenizer="wordpiece", vocab_size=8000, lowercase=True, corpus=sst).tokenizer.save(tokenizer_path)

    curves, seconds = {}, {}
    for position in ("learned", "rope"):
        lm = LM.new("bert", n_layer=args.layers, n_head=4, n_embd=args.n_embd, block_size=args.block_size,
                    dropout=0.1, position=position, tokenizer="wordpiece", tokenizer_path=str(tokenizer_path))
        curve = curves[position] = []

        def record(step: int, rec: dict, curve=curve) -> None:
            if "val_mlm_accuracy" in rec:
                curve.append((step, rec["val_loss"], rec["val_mlm_accuracy"]))

        began = time.perf_counter()
        lm.fit(sources, objective="mlm", max_steps=args.steps, batch_size=args.batch_size, lr=args.lr,
               min_lr=args.lr / 10, warmup_steps=300, weight_decay=0.01, dtype=args.dtype,
               eval_every=max(1, args.steps // 6), eval_steps=10, seed=0, progress=False, hooks=[record])
        seconds[position] = time.perf_counter() - began
        print(f"{position}: {args.steps} steps in {seconds[position]:.0f}s", flush=True)

    print("\n| step | learned: val loss | learned: masked acc | rope: val loss | rope: masked acc |")
    print("|---|---|---|---|---|")
    for (step, l_loss, l_acc), (_, r_loss, r_acc) in zip(curves["learned"], curves["rope"]):
        print(f"| {step} | {l_loss:.3f} | {l_acc:.3f} | {r_loss:.3f} | {r_acc:.3f} |")
    (_, l_loss, l_acc), (_, r_loss, r_acc) = curves["learned"][-1], curves["rope"][-1]
    print(f"\nafter {args.steps} steps: masked-token accuracy rope/learned = {r_acc / l_acc:.2f}x, "
          f"val loss {r_loss:.3f} vs {l_loss:.3f}")


if __name__ == "__main__":
    main()
