"""Quality bar of the TextCNN baseline: SST-2 (sentence level) test accuracy against Kim (2014)'s CNN-rand, 82.7%.

Trains configs/textcnn.toml on the 6,920 training sentences (Kim also trained on the treebank's phrases, which
../shared/data does not hold), stops early on the 872 dev sentences (best-on-dev weights) and scores the 1,821
test sentences. One seed per call, so each call stays short; the results accumulate in --results and
--summary prints the mean per setting:
    python benchmarks/textcnn_sst2.py --seed 1 --batch-norm on
    python benchmarks/textcnn_sst2.py --seed 1 --batch-norm off
    python benchmarks/textcnn_sst2.py --summary
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from encoder_quality import DATA, read_labeled_lines, write_csv
from lmforge.app.training import train_from_config
from lmforge.config import load_config

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "textcnn.toml"
KIM_CNN_RAND = 0.827


def run(seed: int, batch_norm: bool, overrides: list[str]) -> dict:
    """Train one TextCNN on SST-2 train (early stopping on dev) and score it on test."""
    with tempfile.TemporaryDirectory(prefix="lmforge-textcnn-") as scratch:
        scratch = Path(scratch)
        files = {split: write_csv(read_labeled_lines(DATA / f"stsa.binary.{split}"), scratch / f"{split}.csv")
                 for split in ("train", "dev", "test")}
        config = load_config(RECIPE, [f'data.train="{files["train"]}"', f'data.test="{files["dev"]}"',
                                      f"train.seed={seed}", f"model.batch_norm={str(batch_norm).lower()}",
                                      f'run.dir="{scratch / "run"}"', *overrides])
        began = time.perf_counter()
        lm, result = train_from_config(config, progress=False)
        report = lm.evaluate(files["test"])
        return {"seed": seed, "batch_norm": batch_norm, "overrides": overrides, "test_accuracy": report["accuracy"],
                "dev_accuracy": result.best, "steps": result.step, "seconds": time.perf_counter() - began}


def summary(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    groups: dict[tuple, list] = {}
    for row in rows:
        groups.setdefault((row["batch_norm"], " ".join(row["overrides"])), []).append(row)
    print(f"| batch norm | overrides | seeds | test accuracy (mean ± sd) | dev accuracy | vs Kim CNN-rand {KIM_CNN_RAND:.1%} |")
    print("|---|---|---|---|---|---|")
    for (bn, extra), group in sorted(groups.items()):
        tests = [r["test_accuracy"] for r in group]
        sd = statistics.stdev(tests) if len(tests) > 1 else 0.0
        mean = statistics.mean(tests)
        print(f"| {'on' if bn else 'off'} | {extra or '-'} | {', '.join(str(r['seed']) for r in group)} | "
              f"{mean:.4f} ± {sd:.4f} | {statistics.mean(r['dev_accuracy'] for r in group):.4f} | "
              f"{mean - KIM_CNN_RAND:+.4f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch-norm", choices=["on", "off"], default="on")
    parser.add_argument("--results", type=Path, default=Path("runs/textcnn-sst2.jsonl"))
    parser.add_argument("--summary", action="store_true", help="print the table of the results so far and stop")
    parser.add_argument("overrides", nargs="*", help="config overrides for the recipe, e.g. model.n_embd=300")
    args = parser.parse_args()
    if args.summary:
        summary(args.results)
        return 0
    if not DATA.is_dir():
        print(f"skipped: {DATA} is absent (see ../shared/data/SOURCES.md)")
        return 0
    torch.set_num_threads(2)
    row = run(args.seed, args.batch_norm == "on", args.overrides)
    print(json.dumps(row), flush=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
