"""`lmforge prune SRC DST`: the command line of compress/prune.py (argparse only; torch loads in the handler)."""
from __future__ import annotations

import json

from . import Command

HELP = "Prune a model directory: zero the smallest weights, or remove attention heads or MLP neurons."
EXAMPLES = """examples:
  lmforge prune runs/x/final pruned --sparsity 0.5                      # global magnitude pruning, 50% zeros
  lmforge prune runs/x/final pruned --sparsity 0.5 --finetune-steps 300 --data input.txt
  lmforge prune runs/x/final small --method heads --amount 0.25 --data input.txt   # a quarter of the heads
  lmforge prune runs/x/final small --method neurons --amount 0.5        # half the MLP neurons (weight-norm score)

Magnitude pruning keeps the matrices' shapes; the file stores the nonzero values and a bitmask, and fine-tuning
(here or later with `lmforge train ... model.init=DST`) keeps the zeros at zero. Heads and neurons are really
removed: the matrices shrink and config.json gives each layer's new size (model.layer_heads,
model.layer_intermediate). With --data, units are ranked by gradient importance (Michel et al. 2019) on it, and
the validation metrics before and after are printed; without it, by a weight-norm proxy."""


def add_arguments(p) -> None:
    """The prune command's arguments."""
    p.add_argument("source", help="model directory to prune (a run's final/ or checkpoints/step-N/)")
    p.add_argument("destination", help="model directory to write (must not exist unless --force)")
    p.add_argument("--method", default="magnitude", choices=["magnitude", "heads", "neurons"],
                   help="magnitude: zero the smallest weights (default); heads / neurons: remove whole units")
    p.add_argument("--sparsity", type=float, default=None, help="magnitude: share of block weights set to zero, "
                                                                "in [0, 1) (default 0.5)")
    p.add_argument("--amount", type=float, default=None, help="heads / neurons: share to remove (e.g. 0.25) or a "
                                                              "count (e.g. 3)")
    p.add_argument("--importance", choices=["gradient", "weight"], default=None,
                   help="heads / neurons: rank by gradient importance on --data (default when --data is given) "
                        "or by a weight-norm proxy")
    p.add_argument("--data", default=None, help="text file/folder (LM) or labeled .csv/.tsv/.jsonl (classifier): "
                                                "importance scores, fine-tuning and before/after metrics")
    p.add_argument("--finetune-steps", type=int, default=0, help="fine-tune on --data after pruning (default 0)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-4, help="fine-tuning learning rate (default 3e-4)")
    p.add_argument("--score-batches", type=int, default=8, help="batches the gradient importance sums over")
    p.add_argument("--force", action="store_true", help="replace DESTINATION if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object on the last line")


def handler(args) -> int:
    """Load, prune, (fine-tune,) save; every argument is checked before the work starts."""
    from ..facade import LM
    from ..workflows.prune import prune

    from ...files import check_destination

    destination = check_destination(args.destination, args.force)
    if args.score_batches < 1 or args.batch_size < 1 or not args.lr > 0:
        raise ValueError(f"--score-batches and --batch-size must be >= 1 and --lr > 0; got {args.score_batches}, "
                         f"{args.batch_size} and {args.lr}")
    amount = args.amount
    if amount is not None and amount >= 1 and amount.is_integer():
        amount = int(amount)  # a count of units, not a share
    sparsity = 0.5 if args.sparsity is None and args.method == "magnitude" else args.sparsity
    lm = LM.from_pretrained(args.source)
    log = (lambda *a, **k: None) if args.json else print
    lm, report = prune(lm, args.method, sparsity=sparsity, amount=amount, data=args.data,
                       finetune_steps=args.finetune_steps, importance=args.importance, batch_size=args.batch_size,
                       lr=args.lr, score_batches=args.score_batches, progress=not args.quiet and not args.json,
                       log=log)
    lm.save(destination)
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "spec"} | {"destination": str(destination)}))
        return 0
    for stage in ("dense", "pruned", "finetuned"):
        if report.get(stage):
            print(f"{stage:>9}: " + ", ".join(f"{k} {v:.4g}" for k, v in report[stage].items()))
    spec = report["spec"]
    print(f"wrote {destination}: {spec['parameters_after']:,} parameters (from {spec['parameters_before']:,})")
    return 0


COMMAND = Command("prune", HELP, EXAMPLES, add_arguments, handler)
