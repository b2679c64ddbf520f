"""`lmforge train`: train a model from a TOML config (pretraining or fine-tuning)."""
from __future__ import annotations

import argparse

from . import Command

EXAMPLES = """examples:
  lmforge train configs/gpt-tiny.toml
  lmforge train configs/gpt-tiny.toml data.paths='["notes/*.txt"]' train.max_steps=2000
  lmforge train configs/shakespeare-char.toml train.dtype=bfloat16 run.name=shakespeare-bf16
  lmforge train configs/gpt-tiny.toml --resume runs/gpt-tiny        # continue after a stop or a kill
  lmforge train configs/gpt-tiny.toml --resume runs/gpt-tiny train.max_steps=3000   # extend a finished run
  lmforge train configs/classify.toml model.init=runs/bert-tiny/final data.train=train.csv data.test=test.csv
  lmforge train configs/classify.toml train.objective=regress data.train=scores.csv data.label_field=score
  lmforge train configs/classify.toml train.objective=multilabel data.train=tags.csv data.label_field=tags
  lmforge train configs/gpt-tiny.toml train.label_smoothing=0.1 train.l1=1e-6

Overrides are section.key=value with TOML values (numbers, true/false, "strings", [lists]).
Sections: model, tokenizer, data, train, run. The run directory gets config.toml, metrics.jsonl,
checkpoints/step-N/ and final/ (a model directory for generate, eval, fill-mask, classify)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `lmforge train` command's arguments."""
    p.add_argument("config", help="TOML recipe, e.g. configs/gpt-tiny.toml")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="settings that replace the file's")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its newest checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def run(args) -> int:
    """Run `lmforge train`; returns the exit status."""
    from ..training import train_from_config
    from ...config import load_config

    config = load_config(args.config, args.overrides)
    if args.resume:
        config.run.dir = args.resume
    lm, result = train_from_config(config, resume=bool(args.resume), progress=not args.quiet)
    if result.interrupted:
        return 130
    if result.rank:  # under torchrun only rank 0 reports
        return 0
    print(f"trained {result.step} steps in {result.seconds:.1f}s ({result.tokens_per_s:,.0f} tokens/s at the end)")
    if result.eval:
        print("final evaluation: " + ", ".join(f"{k} {v:.4f}" for k, v in result.eval.items()))
    if result.stopped_early:
        print(f"stopped early; final/ holds the best weights ({result.best:.4f})")
    print(f"model saved to {result.final_dir}")
    return 0


COMMAND = Command("train", "Train a model from a TOML config (pretraining or fine-tuning).",
                  EXAMPLES, add_arguments, run, overrides=True)
