"""`lmforge quantize SRC DST`: int8 or int4 Linear layers (compress/quantize.py, int4.py) from the command line."""
from __future__ import annotations

import argparse

from . import Command


def _quantize_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="model directory to quantize (floating point; merge LoRA adapters first)")
    p.add_argument("destination", help="the quantized model directory to write (must not exist unless --force)")
    p.add_argument("--method", default="dynamic-int8", choices=["dynamic-int8", "weight-int8", "weight-int4"],
                   help="dynamic-int8: int8 weights and activations, fastest scoring on CPU (CPU only); weight-int8: "
                        "int8 weights, floating-point activations, any device; weight-int4: 4-bit weights in groups "
                        "of 32 inputs, saved in bfloat16, the fastest decoding on a CPU (default: dynamic-int8)")
    p.add_argument("--force", action="store_true", help="replace DESTINATION if it exists")


def _quantize(args) -> int:
    from ..workflows.quantize import quantize_dir

    summary = quantize_dir(args.source, args.destination, args.method, force=args.force)
    why = "shared with the embedding" + (", or inputs not a multiple of 32" if args.method == "weight-int4" else "")
    kept = f"; kept in floating point ({why}): {', '.join(summary['kept'])}" if summary["kept"] else ""
    before, after = summary["bytes_before"], summary["bytes_after"]
    print(f"quantized {len(summary['quantized'])} Linear layers ({args.method}){kept}")
    if summary["from_file"]:
        print(f"{len(summary['from_file'])} of them keep the GGUF file's own 4-bit blocks exactly (all their rows the "
              "file stores in Q4_0, Q4_1 or Q4_K)")
    print(f"weights: {before / 1e6:.2f} MB -> {after / 1e6:.2f} MB ({after / max(before, 1):.2f}x); "
          f"wrote {args.destination}")
    return 0


COMMAND = Command(
    "quantize",
    "Quantize a model directory's Linear layers to int8 (dynamic or weight-only) or 4-bit weights, saved as "
    "safetensors.",
    """examples:
  lmforge quantize runs/x/final q8 --method dynamic-int8     # int8 weights + int8 activations (CPU)
  lmforge quantize runs/x/final w8 --method weight-int8      # int8 weights only; any device
  lmforge quantize SmolLM2-135M-Instruct.Q4_1.gguf smol4 --method weight-int4   # the file's 4-bit blocks, kept
  lmforge chat smol4                                          # decodes on torch's int4 kernel (bf16)
  lmforge compare runs/x/final q8 w8 --data held_out.txt     # what it cost and bought

The result is a model directory like any other: generate, eval, classify, fill-mask and serve take it.
Embeddings and norms stay in floating point, as does an output head tied to the embedding.""",
    _quantize_arguments, _quantize)
