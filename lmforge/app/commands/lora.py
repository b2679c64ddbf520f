"""`lmforge lora merge SRC DST`: fold a LoRA model directory's adapters into plain weights."""
from __future__ import annotations

import argparse
from . import Command

HELP = "LoRA model directories: merge the adapters into the weights"
EXAMPLES = """examples:
  lmforge train configs/classify.toml model.init=runs/bert-tiny/final train.lora.rank=8
  lmforge lora merge runs/classify/final merged      # a plain model directory, outputs equal within 1e-5
  lmforge classify merged --text "a gripping, beautifully acted film"
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`lora merge SRC DST`."""
    actions = parser.add_subparsers(dest="lora_action", metavar="ACTION", required=True)
    merge = actions.add_parser("merge", help="fold the adapters into plain weights (a model directory without LoRA)",
                               description="Fold a LoRA model directory's adapters into its weights and write a "
                                           "plain model directory; outputs stay equal within 1e-5.",
                               epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    merge.add_argument("src", help="a LoRA model directory (a run's final/ or checkpoints/step-N/)")
    merge.add_argument("dst", help="where to write the merged model directory (must not exist)")


def run(args) -> int:
    """Handler of `lmforge lora ...`."""
    from ..workflows.merge import merge_model_dir

    report = merge_model_dir(args.src, args.dst)
    print(f"merged the rank-{report['rank']} adapters of {report['layers']} layers into the weights; largest output "
          f"change on a probe batch {report['max_difference']:.2e}; saved to {report['path']}")
    return 0


COMMAND = Command("lora", HELP, EXAMPLES, add_arguments, run)
