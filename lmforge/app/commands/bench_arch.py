"""`lmforge bench-arch`: train several architectures for the same time each and compare their curves."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import Command

EXAMPLES = """examples:
  lmforge bench-arch --data input.txt --minutes 5 --archs lstm,gpt,llama --out arch.png
  lmforge bench-arch --data notes/ --minutes 2 --archs gru,gpt --set lstm:model.n_embd=512 --set train.batch_size=16

Each arch trains alone for the same wall-clock budget (evaluation not counted), with its learning-rate schedule
fitted to that budget; then a table (parameters, tokens/s, best val loss) and a PNG of val loss against time.
Finished archs are kept in --run-dir/<arch>/bench.json and reused by a later call with the same settings."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `lmforge bench-arch` command's arguments."""
    p.add_argument("--data", required=True, help="text file, folder or glob (a character tokenizer is trained on it)")
    p.add_argument("--minutes", type=float, default=5.0, help="training time per arch (default 5)")
    p.add_argument("--archs", default="lstm,gpt,llama", help="comma-separated: gpt, llama, lstm, gru, rnn")
    p.add_argument("--out", default="arch.png", help="the curves' PNG; the numbers go beside it as .json")
    p.add_argument("--run-dir", default="runs/bench-arch", help="one run directory per arch goes here")
    p.add_argument("--block-size", type=int, default=64, help="training window, every arch (default 64)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--set", action="append", default=[], metavar="[ARCH:]section.key=value",
                   help="a config override for every arch, or for one with an ARCH: prefix (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def run(args) -> int:
    """Run `lmforge bench-arch`; returns the exit status."""
    from ..workflows.bench_arch import bench_arch

    archs = [name.strip() for name in args.archs.split(",") if name.strip()]
    bench_arch(args.data, args.minutes, archs, Path(args.out), Path(args.run_dir), args.block_size, args.batch_size,
               args.set, progress=not args.quiet)
    return 0


COMMAND = Command("bench-arch", "Train several architectures for the same time each and compare their curves.",
                  EXAMPLES, add_arguments, run)
