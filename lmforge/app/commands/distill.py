"""`lmforge distill`: train a student recipe against a teacher model directory (the task is tasks/distill.py).

It is `lmforge train STUDENT.toml train.distill_teacher=TEACHER data...=DATA` with the data put where the
student's objective reads it and a run name of its own."""
from __future__ import annotations

import json
from pathlib import Path

from . import Command

HELP = "Distill a teacher model into a smaller student recipe (KL to softened logits + the hard-label loss)."
EXAMPLES = """examples:
  lmforge distill --teacher runs/shakespeare-char/final --student configs/gpt-tiny.toml --data input.txt
  lmforge distill --teacher runs/big/final --student small.toml --data corpus/ --temperature 4 --alpha 0.9 \\
      train.max_steps=2000 model.n_layer=2 run.name=small-distilled
  lmforge distill --teacher runs/bert/final --student configs/bert-tiny.toml --data notes/     # masked LM
  lmforge distill --teacher runs/classify/final --student configs/classify.toml --data train.csv
  lmforge distill --teacher runs/minilm-sst2/final --student configs/textcnn-sst2.toml --data train.tsv \
      train.distill_tokenizer=own data.test=dev.tsv      # a BERT classifier taught to a TextCNN (its own words)
  lmforge distill --teacher runs/big/final --student small.toml --data corpus/ --resume runs/small-distill

The student trains on its recipe's objective (clm for decoders, mlm for bert, classify with labeled data) with
loss = alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * that objective's loss, over the positions the
objective scores. A new student takes the teacher's tokenizer; a classifier may keep its recipe's
(train.distill_tokenizer=own): the teacher then scores each training text once, with its own tokens, before the
first step (train.distill_cache=DIR keeps those scores for the next student). The same run as a recipe key:
  lmforge train small.toml train.distill_teacher=runs/big/final train.distill_temperature=2 train.distill_alpha=0.5
The run goes to runs/<student recipe name>-distill unless run.name or run.dir says otherwise; its model card
records the teacher, T and alpha."""


def add_arguments(parser) -> None:
    """The distill command's arguments."""
    parser.add_argument("--teacher", required=True, help="the teacher's model directory (e.g. runs/big/final)")
    parser.add_argument("--student", required=True, help="the student's TOML recipe (e.g. configs/gpt-tiny.toml)")
    parser.add_argument("--data", required=True, help="text file/folder/glob (clm, mlm) or a labeled "
                                                      ".csv/.tsv/.jsonl (classify)")
    parser.add_argument("--temperature", type=float, default=None, help="softmax temperature T (default 2)")
    parser.add_argument("--alpha", type=float, default=None, help="weight of the KL term in [0, 1] (default 0.5)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the distillation run in RUN_DIR")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="settings that replace the recipe's")


def distill_overrides(args, objective: str) -> list[str]:
    """The overrides that make the student recipe a distillation run (the user's own come last and win)."""
    from ...config import LABELED_OBJECTIVES

    data = (f"data.train={json.dumps(args.data)}" if objective in LABELED_OBJECTIVES
            else f"data.paths={json.dumps([args.data])}")
    items = [data, f"train.distill_teacher={json.dumps(args.teacher)}",
             f"run.name={json.dumps(Path(args.student).stem + '-distill')}"]
    if args.temperature is not None:
        items.append(f"train.distill_temperature={args.temperature!r}")
    if args.alpha is not None:
        items.append(f"train.distill_alpha={args.alpha!r}")
    return items + list(args.overrides)


def run_distill(args) -> int:
    """Check the teacher, then train the student against it (what `lmforge distill` does)."""
    from ..training import train_from_config
    from ...config import load_config

    if not Path(args.teacher).exists():
        raise FileNotFoundError(f"--teacher '{args.teacher}' does not exist; give the teacher's model directory "
                                "(a run's final/ or checkpoints/step-N/)")
    objective = load_config(args.student, args.overrides).train.objective
    config = load_config(args.student, distill_overrides(args, objective))
    if args.resume:
        config.run.dir = args.resume
    lm, result = train_from_config(config, resume=bool(args.resume), progress=not args.quiet)
    if result.interrupted:
        return 130
    if result.rank:
        return 0
    print(f"distilled {result.step} steps from {args.teacher} (T={config.train.distill_temperature:g}, "
          f"alpha={config.train.distill_alpha:g}) in {result.seconds:.1f}s")
    if result.eval:
        print("final evaluation of the student: " + ", ".join(f"{k} {v:.4f}" for k, v in result.eval.items()))
    print(f"model saved to {result.final_dir}")
    return 0


COMMAND = Command("distill", HELP, EXAMPLES, add_arguments, run_distill, overrides=True)
