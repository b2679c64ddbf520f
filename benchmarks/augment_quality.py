"""Does EDA-style augmentation (lmforge data augment) help a small classifier trained on few labels?

TREC question type (6 classes) from ../shared/data/trec: 500 labeled training questions (a random sample fixed
by --seed), 500 held-out training questions as dev (early stopping), the 500-question test set. A small BERT
(2 layers x 128, rotary positions, WordPiece trained on the 500 questions) is fine-tuned from scratch
  (a) on the 500 questions, and
  (b) on the 500 questions plus --n augmented copies of each (synonym, insert, swap, delete; alpha 0.1),
with the same recipe and the same number of steps; prints test accuracy of both and the difference.
One seed per command (each well under 5 minutes on 2 cores):

    python benchmarks/augment_quality.py --seed 1
    python benchmarks/augment_quality.py --seed 2 --n 4
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from encoder_quality import SHARED, task_splits, write_csv  # noqa: E402

from lmforge.api import LM  # noqa: E402
from lmforge.data.augment import augment_file  # noqa: E402

MODEL = dict(n_layer=2, n_head=4, n_embd=128, block_size=48, dropout=0.1, position="rope", norm_position="pre")


def run(train: Path, dev: Path, test: Path, tokenizer: Path, steps: int, seed: int) -> dict:
    """Fine-tune a fresh small BERT on `train` (best-on-dev weights) and report test accuracy."""
    began = time.perf_counter()
    lm = LM.new("bert", tokenizer_path=str(tokenizer), **MODEL)
    lm.config.data.test = str(dev)
    result = lm.fit(train, objective="classify", max_steps=steps, batch_size=32, lr=1e-3, min_lr=1e-4,
                    warmup_steps=steps // 10, weight_decay=0.01, eval_every=max(1, steps // 10), patience=4,
                    seed=seed, progress=False)
    report = lm.evaluate(test)
    return {"test_accuracy": report["accuracy"], "dev_accuracy": result.best, "steps": result.step,
            "seconds": round(time.perf_counter() - began, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1, help="picks the 500 labels, the augmentation and the init")
    parser.add_argument("--labels", type=int, default=500)
    parser.add_argument("--n", type=int, default=4, help="augmented copies per question")
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args()
    if not (SHARED / "trec").is_dir():
        print(f"skipped: {SHARED / 'trec'} is not on this machine")
        return 0
    torch.set_num_threads(2)
    train_rows, dev_rows, test_rows = task_splits("trec")
    labeled = random.Random(args.seed).sample(train_rows, args.labels)
    with tempfile.TemporaryDirectory(prefix="lmforge-aug-") as scratch:
        scratch = Path(scratch)
        train, dev, test = (write_csv(rows, scratch / f"{name}.csv")
                            for rows, name in ((labeled, "train"), (dev_rows, "dev"), (test_rows, "test")))
        augmented = scratch / "augmented.csv"
        counts = augment_file(train, augmented, n=args.n, seed=args.seed)
        with open(augmented, encoding="utf-8") as handle:
            assert sum(1 for _ in csv.DictReader(handle)) == counts["rows_out"]
        texts = scratch / "questions.txt"
        texts.write_text("\n".join(text for _, text in labeled) + "\n", encoding="utf-8")
        tokenizer = scratch / "tokenizer.json"
        LM.new("bert", corpus=texts, tokenizer="wordpiece", vocab_size=2000, **MODEL).tokenizer.save(tokenizer)
        plain = run(train, dev, test, tokenizer, args.steps, args.seed)
        print(json.dumps({"setup": "a (500 labels)", **plain}), flush=True)
        more = run(augmented, dev, test, tokenizer, args.steps, args.seed)
        print(json.dumps({"setup": f"b (+{counts['augmented']} augmented)", **more}), flush=True)
    print(json.dumps({"seed": args.seed, "labels": args.labels, "n": args.n, "plain": plain["test_accuracy"],
                      "augmented": more["test_accuracy"],
                      "difference": round(more["test_accuracy"] - plain["test_accuracy"], 4)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
