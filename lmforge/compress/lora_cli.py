"""`lmforge lora merge SRC DST`: fold a LoRA model directory's adapters into plain weights."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..models.contract import has_classifier

HELP = "LoRA model directories: merge the adapters into the weights"
EXAMPLES = """examples:
  lmforge train configs/classify.toml model.init=runs/bert-tiny/final train.lora.rank=8
  lmforge lora merge runs/classify/final merged      # a plain model directory, outputs equal within 1e-5
  lmforge classify merged --text "a gripping, beautifully acted film"
"""


@torch.no_grad()
def _probe(model, vocab_size: int, block_size: int) -> torch.Tensor:
    """The model's outputs on a fixed random batch: compared before and after merging."""
    ids = torch.randint(0, vocab_size, (2, min(16, block_size)), generator=torch.Generator().manual_seed(0))
    if has_classifier(model):
        return model.classify(ids).float()
    return model(ids).float()


def merge_model_dir(src: str | Path, dst: str | Path) -> dict:
    """Write DST: SRC's model with its LoRA adapters folded into the weights (a plain model directory).

    Returns what was merged and the largest output difference merging made on a probe batch."""
    from ..modeldir import ModelDirError, load_model_dir, save_model_dir
    from ..bundle import Bundle
    from .lora import find_step, lora_modules, merge_lora

    src, dst = Path(src), Path(dst)
    if dst.exists():
        raise FileExistsError(f"'{dst}' already exists; choose a new destination for the merged model")
    model, tokenizer, config, meta = load_model_dir(src)
    step = find_step(meta)
    if step is None or not lora_modules(model):
        raise ModelDirError(f"'{src}' has no LoRA adapters (its config.json lists no 'lora' compression step): "
                            "nothing to merge; LoRA models come from training with train.lora.rank set")
    before = _probe(model, config.vocab_size, config.block_size)
    layers = merge_lora(model)
    difference = float((_probe(model, config.vocab_size, config.block_size) - before).abs().max())
    rest = [s for s in meta.get("compression") or [] if s is not step]
    meta = {k: v for k, v in meta.items() if k != "compression"}
    if rest:
        meta["compression"] = rest
    meta["lora_merged"] = {k: step[k] for k in ("rank", "alpha", "targets") if k in step}
    save_model_dir(dst, Bundle(model, tokenizer, config, meta))
    return {"layers": layers, "rank": step.get("rank"), "max_difference": difference, "path": str(dst)}


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
    report = merge_model_dir(args.src, args.dst)
    print(f"merged the rank-{report['rank']} adapters of {report['layers']} layers into the weights; largest output "
          f"change on a probe batch {report['max_difference']:.2e}; saved to {report['path']}")
    return 0


COMMAND = (HELP, EXAMPLES, add_arguments, run)
