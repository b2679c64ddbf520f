"""`lmforge compare DIR...`: size, parameters, speed and quality of model directories side by side."""
from __future__ import annotations

import argparse

from . import Command


def _compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", metavar="DIR", help="model directories (plain, LoRA, pruned, quantized, ...)")
    p.add_argument("--data", required=True, help="held-out text (language models) or labeled .csv/.tsv/.jsonl "
                                                 "(classifiers), the same for every model")
    p.add_argument("--out", default="compare.png", help="the PNG of quality against speed (default compare.png)")
    p.add_argument("--json", action="store_true", help="print the numbers as one JSON list instead of the table")
    p.add_argument("--batch-size", type=int, default=16, help="rows of block_size tokens per scoring pass")
    p.add_argument("--rounds", type=int, default=5, help="timing rounds; the median is reported (default 5)")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens generated per generation timing (decoders)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def _compare(args) -> int:
    from ..workflows.compare import run_compare

    return run_compare(args)


COMMAND = Command(
    "compare",
    "Compare model directories: size on disk, parameters, nonzero parameters, speed and quality, with a plot.",
    """examples:
  lmforge compare runs/x/final pruned q8 merged --data held_out.txt --out compare.png
  lmforge compare runs/cls/final runs/cls-q8 --data test.csv --json

Quality is perplexity for language models and accuracy for classifiers, from the same evaluation as
`lmforge eval`. Speeds are medians of interleaved rounds: scoring is a forward pass over batch-size x
block_size tokens, generation greedy decoding of --new-tokens tokens (decoders only).""",
    _compare_arguments, _compare)
