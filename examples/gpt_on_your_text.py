"""Pretrain a small GPT on your own text files, then sample from it.

    python examples/gpt_on_your_text.py notes/            # a folder, a file or a glob
"""
import sys

from lmforge import LM

corpus = sys.argv[1] if len(sys.argv) > 1 else None  # None: the built-in corpus
lm = LM.new("gpt", n_layer=4, n_head=4, n_embd=128, block_size=128, tokenizer="char", corpus=corpus)
print(lm)
result = lm.fit(corpus, max_steps=500, batch_size=16, lr=2e-3, eval_every=100, run_dir="runs/example-gpt")
print(f"validation loss {result.eval.get('val_loss', float('nan')):.3f}")
print(lm.generate("The ", max_new_tokens=200, temperature=0.8, top_k=40))
lm.save("runs/example-gpt/my-model")
