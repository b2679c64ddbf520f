"""Masked-LM fine-tuning of a pretrained BERT on your text, then the predicted words of a masked sentence.

    python examples/bert_mlm.py --model path/to/bert-base-uncased --data my.txt --epochs 3

--model is a Hugging Face BERT directory (config.json + model.safetensors or pytorch_model.bin + vocab.txt or
tokenizer.json) or an lmforge model directory. Training is AdamW at 5e-5 with a 10% warmup; one epoch is one
pass over the text's tokens in [CLS] window [SEP] rows of the model's context length.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from lmforge import LM


def show(lm: LM, sentence: str, title: str) -> None:
    print(title)
    predictions = lm.fill_mask(sentence, top_k=5)
    masks = predictions if predictions and isinstance(predictions[0], list) else [predictions]
    for mask in masks:
        print("  " + ", ".join(f"{token} ({p:.2f})" for token, p in mask))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a BERT checkpoint directory")
    parser.add_argument("--data", required=True, help="a UTF-8 text file to train on")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--sentence", default="Paris is the [MASK] of France.", help="the sentence to fill in")
    parser.add_argument("--save", help="write the fine-tuned model directory here")
    args = parser.parse_args()

    lm = LM.from_pretrained(args.model)
    print(lm)
    tokens = len(lm.tokenizer.encode(Path(args.data).read_text(encoding="utf-8")))
    width = lm.config.model.block_size - 2  # each row is [CLS] + window + [SEP]
    steps = args.epochs * max(1, math.ceil(tokens / (args.batch_size * width)))
    print(f"{tokens:,} tokens: {args.epochs} epochs of {steps // args.epochs} steps at batch size {args.batch_size}")
    show(lm, args.sentence, "before:")
    lm.config.data.val_fraction = 0.0  # every token trains; the text may be short
    lm.fit(args.data, objective="mlm", max_steps=steps, batch_size=args.batch_size, lr=args.lr, min_lr=args.lr / 10,
           warmup_steps=max(1, steps // 10), weight_decay=0.01, eval_every=0)
    show(lm, args.sentence, "after:")
    if args.save:
        print(f"saved to {lm.save(args.save)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
