"""Quality bar of the regression and multi-label heads on real data, next to the simple baselines.

  --task sst-fine  regression: SST's fine-grained sentiment (stsa.fine.*, ../shared/data/sst2-sentence), the
                   rating 0 (very negative) .. 4 (very positive) as a number; 8,544 train / 1,101 dev / 2,210 test.
                   Baseline: predict the training mean for every sentence.
  --task debtags   multi-label: Debian's package index (the apt lists on a Debian machine; or --packages FILE,
                   an uncompressed Packages file), each package's one-line description tagged with its debtags
                   (the tags Debian's maintainers assign). The 12 most frequent tags of the facets use, works-with,
                   interface, network, game and field; packages carrying at least one, one row per distinct
                   description (descriptions shared by packages with different tags are dropped); a fixed shuffle
                   gives 1,500 test / 700 dev / the rest train. Baseline: the most frequent label set for every row.

A small BERT (2 layers x 128, rotary positions) is trained from scratch on the training split (WordPiece
tokenizer from it too), early-stopped on dev, and scored on test. One seed per run; print a summary of the
runs appended to --results with --summary.

    python benchmarks/losses_quality.py --task sst-fine --seed 1 --results /tmp/losses.jsonl
    python benchmarks/losses_quality.py --task debtags --seed 1 --results /tmp/losses.jsonl
    python benchmarks/losses_quality.py --summary /tmp/losses.jsonl
"""
from __future__ import annotations

import argparse
import collections
import csv
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lmforge.api import LM
from lmforge.infer.multilabel import multilabel_report
from lmforge.infer.regress import regression_report

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MODEL = dict(n_layer=2, n_head=4, n_embd=128, block_size=64, dropout=0.1, position="rope")
FACETS = ("use", "works-with", "interface", "network", "game", "field")
N_TAGS = 12


def write_rows(path: Path, rows: list[tuple[str, str]], label: str) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", label])
        writer.writerows(rows)
    return path


def sst_fine() -> tuple[list, list, list]:
    """(train, dev, test) rows of (sentence, rating as text)."""
    folder = SHARED / "sst2-sentence"
    if not folder.is_dir():
        sys.exit(f"--task sst-fine needs {folder} (the project's shared data); it is not on this machine")

    def read(split):
        rows = []
        for line in (folder / f"stsa.fine.{split}").read_text(encoding="utf-8").splitlines():
            label, _, text = line.partition(" ")
            if text:
                rows.append((text, label))
        return rows

    return read("train"), read("dev"), read("test")


def packages_text(path: str | None) -> str:
    """The text of a Packages file: --packages, else the apt list of Debian main (lz4 lists via apt-helper)."""
    if path:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    lists = sorted(Path("/var/lib/apt/lists").glob("*_main_binary-*_Packages*"))
    lists = [p for p in lists if "security" not in p.name and "updates" not in p.name]
    if not lists:
        sys.exit("--task debtags needs Debian's package index: run `apt-get update` on a Debian machine, "
                 "or pass --packages FILE")
    return subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", str(lists[0])], check=True,
                          capture_output=True, text=True).stdout


def debtags(path: str | None) -> tuple[list, list, list, list[str]]:
    """(train, dev, test) rows of (description, 'tag;tag'), and the tags."""
    seen: dict[str, set] = {}
    for record in packages_text(path).split("\n\n"):
        fields, current = {}, None
        for line in record.split("\n"):
            if line.startswith(" ") and current:
                fields[current] += " " + line.strip()
            elif ":" in line:
                current, _, value = line.partition(":")
                fields[current] = value.strip()
        if "Tag" in fields and fields.get("Description"):
            seen.setdefault(fields["Description"], set()).add(
                frozenset(t.strip() for t in fields["Tag"].split(",") if t.strip()))
    unique = {text: next(iter(tags)) for text, tags in seen.items() if len(tags) == 1}
    counts = collections.Counter(t for tags in unique.values() for t in tags if t.split("::")[0] in FACETS)
    chosen = {t for t, _ in counts.most_common(N_TAGS)}
    rows = sorted((text, ";".join(sorted(tags & chosen))) for text, tags in unique.items() if tags & chosen)
    random.Random(0).shuffle(rows)
    return rows[2200:], rows[1500:2200], rows[:1500], sorted(chosen)


def run(args) -> dict:
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="lmforge-losses-") as scratch:
        folder = Path(scratch)
        if args.task == "sst-fine":
            train, dev, test = sst_fine()
            field, objective = "rating", "regress"
        else:
            train, dev, test, _ = debtags(args.packages)
            field, objective = "tags", "multilabel"
        paths = {name: write_rows(folder / f"{name}.csv", rows, field)
                 for name, rows in (("train", train), ("dev", dev), ("test", test))}
        began = time.process_time()
        lm = LM.new("bert", tokenizer="wordpiece", vocab_size=args.vocab, lowercase=True, corpus=paths["train"],
                    **MODEL)
        lm.config.data.label_field, lm.config.data.test = field, str(paths["dev"])
        lm.fit(paths["train"], objective=objective, max_steps=args.steps, batch_size=32, lr=args.lr,
               min_lr=args.lr / 10, warmup_steps=50, weight_decay=0.01, eval_every=args.steps // 5,
               patience=3, seed=args.seed, class_weights=args.class_weights,
               regression_loss="huber" if args.huber else "mse", progress=False)
        cpu = time.process_time() - began
        metrics = lm.evaluate(paths["test"], batch_size=64)
    if objective == "regress":
        train_mean = float(np.mean([float(label) for _, label in train]))
        truth = [float(label) for _, label in test]
        baseline = regression_report(truth, [train_mean] * len(truth))
        keep = ("mse", "mae", "pearson", "spearman")
    else:
        names = lm.config.model.labels
        hot = lambda rows: np.array([[name in label.split(";") for name in names] for _, label in rows])  # noqa: E731
        common = collections.Counter(label for _, label in train).most_common(1)[0][0]
        baseline = multilabel_report(hot(test), hot([("", common)] * len(test)), names)
        baseline["label_set"] = common
        keep = ("micro_f1", "macro_f1", "subset_accuracy")
    variant = ("+class_weights" if args.class_weights else "") + ("+huber" if args.huber else "")
    return {"task": args.task + variant, "seed": args.seed,
            "steps": args.steps, "cpu_s": round(cpu, 1),
            "model": {k: metrics[k] for k in keep}, "baseline": {k: baseline[k] for k in keep}}


def summary(path: Path) -> None:
    """Mean and standard deviation over seeds, per task, model beside baseline."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for task in sorted({r["task"] for r in records}):
        runs = [r for r in records if r["task"] == task]
        print(f"{task}: {len(runs)} seeds ({', '.join(str(r['seed']) for r in runs)}), "
              f"{np.mean([r['cpu_s'] for r in runs]):.0f} CPU-s each")
        for key in runs[0]["model"]:
            model = np.array([r["model"][key] for r in runs])
            print(f"  {key:<16} model {model.mean():.3f} ± {model.std(ddof=1) if len(runs) > 1 else 0:.3f}   "
                  f"baseline {runs[0]['baseline'][key]:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=["sst-fine", "debtags"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--vocab", type=int, default=6000)
    parser.add_argument("--class-weights", action="store_true",
                        help="debtags: weight each tag's positives by its negatives/positives (train.class_weights)")
    parser.add_argument("--huber", action="store_true", help="sst-fine: Huber loss instead of MSE")
    parser.add_argument("--packages", help="an uncompressed Debian Packages file (default: the apt lists)")
    parser.add_argument("--results", type=Path, help="append this run's JSON line here")
    parser.add_argument("--summary", type=Path, help="print the summary of a --results file and exit")
    args = parser.parse_args()
    if args.summary:
        summary(args.summary)
        return 0
    if not args.task:
        parser.error("--task is required (or --summary)")
    torch.set_num_threads(2)
    record = run(args)
    print(json.dumps(record))
    if args.results:
        with open(args.results, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
