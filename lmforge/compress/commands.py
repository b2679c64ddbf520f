"""The compression commands (`lmforge lora merge`, `prune`, `quantize`, `distill`, `compare`) on the top-level
command line. Each module of this package that has a command contributes one entry to COMMANDS:
name -> (help, examples, add_arguments(parser), handler(args) -> exit code)."""
from __future__ import annotations

import argparse

COMMANDS: dict[str, tuple] = {}

from .distill import COMMAND as DISTILL  # noqa: E402 - each module's entry after the registry it joins

COMMANDS["distill"] = DISTILL

from .lora_cli import COMMAND as LORA  # noqa: E402

COMMANDS["lora"] = LORA

from .prune_command import COMMAND as PRUNE  # noqa: E402

COMMANDS["prune"] = PRUNE


def add_compress_commands(commands) -> None:
    """Register every entry of COMMANDS on the top-level subparsers."""
    for name, (help_text, examples, add_arguments, handler) in COMMANDS.items():
        p = commands.add_parser(name, help=help_text, description=help_text, epilog=examples,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
        add_arguments(p)
        p.set_defaults(handler=handler)


def _quantize_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="model directory to quantize (floating point; merge LoRA adapters first)")
    p.add_argument("destination", help="the quantized model directory to write (must not exist unless --force)")
    p.add_argument("--method", default="dynamic-int8", choices=["dynamic-int8", "weight-int8"],
                   help="dynamic-int8: int8 weights and activations, fastest on CPU (CPU only); weight-int8: int8 "
                        "weights dequantized per matmul, any device (default: dynamic-int8)")
    p.add_argument("--force", action="store_true", help="replace DESTINATION if it exists")


def _quantize(args) -> int:
    from .quantize import quantize_dir

    summary = quantize_dir(args.source, args.destination, args.method, force=args.force)
    kept = f"; kept in floating point (shared with the embedding): {', '.join(summary['kept'])}" if summary["kept"] else ""
    before, after = summary["bytes_before"], summary["bytes_after"]
    print(f"quantized {len(summary['quantized'])} Linear layers ({args.method}){kept}")
    print(f"weights: {before / 1e6:.2f} MB -> {after / 1e6:.2f} MB ({after / max(before, 1):.2f}x); "
          f"wrote {args.destination}")
    return 0


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
    from ..compare.models import run_compare

    return run_compare(args)


COMMANDS["quantize"] = (
    "Quantize a model directory's Linear layers to int8 (dynamic or weight-only), saved as safetensors.",
    """examples:
  lmforge quantize runs/x/final q8 --method dynamic-int8     # int8 weights + int8 activations (CPU)
  lmforge quantize runs/x/final w8 --method weight-int8      # int8 weights only; any device
  lmforge compare runs/x/final q8 w8 --data held_out.txt     # what it cost and bought

The result is a model directory like any other: generate, eval, classify, fill-mask and serve take it.
Embeddings and norms stay in floating point, as does an output head tied to the embedding.""",
    _quantize_arguments, _quantize)

COMMANDS["compare"] = (
    "Compare model directories: size on disk, parameters, nonzero parameters, speed and quality, with a plot.",
    """examples:
  lmforge compare runs/x/final pruned q8 merged --data held_out.txt --out compare.png
  lmforge compare runs/cls/final runs/cls-q8 --data test.csv --json

Quality is perplexity for language models and accuracy for classifiers, from the same evaluation as
`lmforge eval`. Speeds are medians of interleaved rounds: scoring is a forward pass over batch-size x
block_size tokens, generation greedy decoding of --new-tokens tokens (decoders only).""",
    _compare_arguments, _compare)
