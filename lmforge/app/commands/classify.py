"""`lmforge classify`: label texts with a classifier model directory."""
from __future__ import annotations

import argparse
import json

from . import Command, add_device_arguments

EXAMPLES = """examples:
  lmforge classify runs/classify/final --text "a gripping, beautifully acted film"
  lmforge classify runs/classify/final --file reviews.csv --json > predictions.jsonl
  lmforge classify runs/tags/final --text "..." --threshold 0.3   # multi-label: every tag at or over 0.3
  lmforge classify runs/scores/final --file reviews.txt           # regression: one score per text"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `lmforge classify` command's arguments."""
    p.add_argument("model", help="model directory of a classifier")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", action="append", help="a text to classify (repeatable)")
    source.add_argument("--file", help="a .txt (one text a line), .csv/.tsv or .jsonl file")
    p.add_argument("--text-field", default="text", help="column/field of the text in --file (default: text)")
    p.add_argument("--threshold", type=float, default=None,
                   help="multi-label models: give every tag at this probability or more (default: saved, 0.5)")
    p.add_argument("--json", action="store_true", help="one JSON object per text")
    add_device_arguments(p)


def run(args) -> int:
    """Run `lmforge classify`; returns the exit status."""
    from ..facade import LM

    lm = LM.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    if args.file:
        from ...data.labeled import read_texts_for_prediction
        texts = read_texts_for_prediction(args.file, args.text_field)
    else:
        texts = args.text
    results = lm.classify(texts, threshold=args.threshold)
    if not results or not isinstance(results[0][0], str):  # a multi-label or a regression head
        from ...infer.text_reports import print_predictions
        print_predictions(texts, results, args.json)
        return 0
    for text, (label, probabilities) in zip(texts, results):
        if args.json:
            print(json.dumps({"text": text, "label": label, "probabilities": probabilities}, ensure_ascii=False))
        else:
            shown = ", ".join(f"{name} {p:.3f}" for name, p in sorted(probabilities.items(), key=lambda kv: -kv[1]))
            print(f"{label}\t({shown})\t{text}")
    return 0


COMMAND = Command("classify", "Label texts with a classifier model directory.", EXAMPLES, add_arguments, run)
