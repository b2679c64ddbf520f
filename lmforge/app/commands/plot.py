"""`lmforge plot`: draw a run's curves (loss, validation loss, lr, gradient norm, tokens/s) as a PNG."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import Command

EXAMPLES = """examples:
  lmforge plot runs/gpt-tiny                                  # writes runs/gpt-tiny/curves.png
  lmforge plot runs/lr-1e-3 runs/lr-3e-4 --out compare.png    # several runs overlaid
  tensorboard --logdir runs/                                  # the same metrics, live"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `lmforge plot` command's arguments."""
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (several are overlaid)")
    p.add_argument("--out", help="PNG to write (default: RUN/curves.png for one run, curves.png for several)")


def run(args) -> int:
    """Run `lmforge plot`; returns the exit status."""
    from ...train.plots import plot_runs

    out = args.out or (Path(args.runs[0]) / "curves.png" if len(args.runs) == 1 else Path("curves.png"))
    print(f"wrote {plot_runs(args.runs, out)}")
    return 0


COMMAND = Command("plot", "Draw a run's curves (loss, validation loss, lr, gradient norm, tokens/s) as a PNG.",
                  EXAMPLES, add_arguments, run)
