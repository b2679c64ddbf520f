"""`lmforge eval`: evaluate a model on held-out data."""
from __future__ import annotations

import argparse
import json

from . import Command, add_device_arguments

EXAMPLES = """examples:
  lmforge eval runs/gpt-tiny/final --data held_out.txt            # loss, perplexity, tokens
  lmforge eval runs/gpt-tiny/final --data held_out.txt --json     # one JSON object on the last line
  lmforge eval runs/classify/final --data test.csv --json         # accuracy, macro_f1, per_class, confusion
  lmforge eval runs/scores/final --data test.csv                  # regression: mse, mae, pearson, spearman
  lmforge eval runs/tags/final --data test.csv --threshold 0.4    # multi-label: micro/macro F1, subset accuracy"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `lmforge eval` command's arguments."""
    p.add_argument("model", help="model directory")
    p.add_argument("--data", required=True, help="text file/folder/glob (LM) or labeled .csv/.tsv/.jsonl (classifier)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threshold", type=float, default=None,
                   help="multi-label models: a tag is predicted at this probability or more (default: saved, 0.5)")
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    add_device_arguments(p)


def run(args) -> int:
    """Run `lmforge eval`; returns the exit status."""
    from ..facade import LM

    lm = LM.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    result = lm.evaluate(args.data, batch_size=args.batch_size, threshold=args.threshold)
    if args.json:
        print(json.dumps(result))
    elif "per_label" in result:  # multi-label
        from ...infer.text_reports import print_multilabel_report
        print_multilabel_report(result)
    elif "per_class" in result:  # a classifier: headline numbers, a per-class table, the confusion matrix
        print(f"accuracy: {result['accuracy']:.4f}\nmacro_f1: {result['macro_f1']:.4f}\nexamples: {result['examples']}")
        width = max(len("label"), *map(len, result["labels"]))
        print(f"\n{'label':<{width}}  precision  recall      f1  support")
        for name, row in result["per_class"].items():
            print(f"{name:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1']:6.4f}  {row['support']:7d}")
        print("\nconfusion (rows: true label, columns: predicted, in the order above):")
        for row in result["confusion"]:
            print("  " + " ".join(f"{count:6d}" for count in row))
    else:
        for key, value in result.items():
            print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    return 0


COMMAND = Command("eval", "Evaluate a model on held-out data.", EXAMPLES, add_arguments, run)
