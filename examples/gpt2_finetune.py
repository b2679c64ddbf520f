"""Fine-tune a pretrained GPT-2 on your text, with new tokens added to its vocabulary, then generate.

    python examples/gpt2_finetune.py --model path/to/gpt2 --data my.txt --epochs 2

--model is a Hugging Face GPT-2 directory (config.json + weights + tokenizer.json or vocab.json/merges.txt) or an
lmforge model directory. As the classic program does, tokens are added first (--add-token, repeatable; the
embeddings grow and the new rows start at the mean embedding), then the model trains with AdamW at 5e-5 on
windows of its context length; one epoch is one pass over the text's tokens.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from lmforge import LM


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a GPT-2 checkpoint directory")
    parser.add_argument("--data", required=True, help="a UTF-8 text file to train on")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--add-token", action="append", default=None,
                        help="a special token to add (repeatable; default <|user|> and <|bot|>)")
    parser.add_argument("--prompt", default="Once upon a time")
    parser.add_argument("--save", help="write the fine-tuned model here (lmforge format; --save-hf for Hugging Face)")
    parser.add_argument("--save-hf", help="write the fine-tuned model here in Hugging Face's format")
    args = parser.parse_args()

    lm = LM.from_pretrained(args.model)
    added = lm.add_tokens(args.add_token or ["<|user|>", "<|bot|>"], special=True)
    print(f"{lm}\nadded {added} tokens; vocabulary now {lm.config.model.vocab_size}")
    tokens = len(lm.tokenizer.encode(Path(args.data).read_text(encoding="utf-8")))
    block = lm.config.model.block_size
    if tokens <= block:
        sys.exit(f"error: {args.data} has {tokens} tokens; fine-tuning needs more than the context length ({block})")
    steps = args.epochs * max(1, math.ceil(tokens / (args.batch_size * block)))
    print(f"{tokens:,} tokens: {args.epochs} epochs of {steps // args.epochs} steps at batch size {args.batch_size}")
    lm.config.data.val_fraction = 0.0  # every token trains; the text may be short
    result = lm.fit(args.data, objective="clm", max_steps=steps, batch_size=args.batch_size, lr=args.lr,
                    min_lr=args.lr / 10, warmup_steps=max(1, steps // 10), weight_decay=0.01, eval_every=0)
    print(f"final training loss {result.train_loss:.3f}")
    print(args.prompt + lm.generate(args.prompt, max_new_tokens=60, temperature=0.8, top_p=0.95, seed=0))
    if args.save:
        print(f"saved to {lm.save(args.save)}")
    if args.save_hf:
        print(f"saved to {lm.save_hf(args.save_hf)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
