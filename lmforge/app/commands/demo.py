"""`lmforge demo`: pretrain a small GPT and a small BERT on the built-in corpus and show what they do."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import Command

EXAMPLES = """examples:
  lmforge demo                  # what `make demo` runs: a small GPT and a small BERT on the built-in corpus
  lmforge demo --steps 300      # shorter"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `lmforge demo` command's arguments."""
    p.add_argument("--steps", type=int, default=None, help="training steps for each model")
    p.add_argument("--run-dir", default="runs/demo", help="where the demo's runs go (replaced each time)")


def run(args) -> int:
    """Run `lmforge demo`; returns the exit status."""
    from ..workflows.demo import run_demo

    run_demo(Path(args.run_dir), steps=args.steps)
    return 0


COMMAND = Command("demo", "Pretrain a small GPT and a small BERT on the built-in corpus and show what they do.",
                  EXAMPLES, add_arguments, run)
