"""`lmforge fill-mask`: predict the [MASK] tokens of a text with an encoder."""
from __future__ import annotations

import argparse
import json

from . import Command, add_device_arguments

EXAMPLES = """examples:
  lmforge fill-mask runs/bert-tiny/final "The [MASK] of the function is returned." --top-k 5
  lmforge fill-mask runs/bert-tiny/final "A [MASK] is a [MASK]." --json"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `lmforge fill-mask` command's arguments."""
    p.add_argument("model", help="model directory of a BERT-style model")
    p.add_argument("text", help="text with one or more [MASK]")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true")
    add_device_arguments(p)


def run(args) -> int:
    """Run `lmforge fill-mask`; returns the exit status."""
    from ..facade import LM

    lm = LM.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    predictions = lm.fill_mask(args.text, top_k=args.top_k)
    masks = predictions if predictions and isinstance(predictions[0], list) else [predictions]
    if args.json:
        print(json.dumps([[{"token": t, "probability": p} for t, p in mask] for mask in masks], ensure_ascii=False))
        return 0
    for number, mask in enumerate(masks, 1):
        if len(masks) > 1:
            print(f"[MASK] #{number}:")
        for token, probability in mask:
            print(f"  {probability:6.3f}  {token}")
    return 0


COMMAND = Command("fill-mask", "Predict the [MASK] tokens of a text with an encoder.", EXAMPLES, add_arguments, run)
