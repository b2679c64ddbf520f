"""`lmforge convert`: a model between lmforge's directory format, Hugging Face directories and GGUF files."""
from __future__ import annotations

import argparse

from . import Command

EXAMPLES = """examples:
  lmforge convert path/to/gpt2 my-gpt2                   # a Hugging Face directory -> an lmforge model directory
  lmforge convert runs/gpt-tiny/final hf-out --to hf     # lmforge -> Hugging Face (AutoModelFor*.from_pretrained)
  lmforge convert path/to/all-MiniLM-L6-v2 minilm        # sentence-transformers layouts work too
  lmforge convert SmolLM2-135M-Instruct.Q4_1.gguf smollm # a GGUF file -> an lmforge model directory (dequantized)
  lmforge convert runs/sft/final model.gguf --gguf-type q8_0   # -> one GGUF file that llama.cpp runs
  lmforge convert smol4 smol4.gguf --gguf-type q4_1      # a weight-int4 directory -> its own 4-bit blocks

Hugging Face gpt2, bert and llama checkpoints (and their sequence classifiers) and GGUF llama/gpt2 files are
read; any command that takes a model directory also takes such a checkpoint or file directly, converting it in
memory. A destination ending in .gguf (or --to gguf) writes GGUF: f32 keeps every weight, f16 (the default)
halves the matrices, q8_0 stores them in 8-bit blocks, q4_1 in 4-bit ones (the embedding in 8-bit); the
tokenizer must be byte-level BPE. A weight-int4 directory (lmforge quantize --method weight-int4) writes its 4-bit
weights as they are into q4_1's blocks."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's arguments."""
    p.add_argument("source", help="an lmforge model directory, a Hugging Face gpt2/bert/llama checkpoint directory, "
                                  "or a GGUF file")
    p.add_argument("destination", help="the directory (or .gguf file) to write; must not exist unless --force")
    p.add_argument("--to", choices=["lmforge", "hf", "gguf"], default=None,
                   help="output format (default: gguf for a destination ending in .gguf, else lmforge)")
    p.add_argument("--gguf-type", choices=["f32", "f16", "q8_0", "q4_1"], default=None,
                   help="GGUF tensor type of the weight matrices (default f16, q4_1 for a weight-int4 model; norms "
                        "always stay f32)")
    p.add_argument("--force", action="store_true", help="replace DESTINATION if it exists")


def run(args: argparse.Namespace) -> int:
    """Load SOURCE (converted in memory) and write it in the chosen format; nothing is written on an error."""
    from ...compress import find_step
    from ...files import check_destination
    from ...interop import save_gguf, save_hf_dir
    from ...interop.gguf_blocks import FOUR_BIT_TYPES
    from ...modeldir import load_model_dir, save_model_dir

    target = args.to or ("gguf" if str(args.destination).lower().endswith(".gguf") else "lmforge")
    if args.gguf_type and target != "gguf":
        raise ValueError(f"--gguf-type applies to GGUF output only; the destination is written as {target} "
                         "(name it *.gguf or pass --to gguf)")
    destination = check_destination(args.destination, args.force)
    bundle = load_model_dir(args.source)
    if target == "gguf":
        step = find_step(bundle.meta, "quantize") or {}
        gguf_type = args.gguf_type or ("q4_1" if step.get("method") == "weight-int4" else "f16")
        save_gguf(destination, bundle.model, bundle.tokenizer, bundle.config, bundle.meta, gguf_type)
        what = f"GGUF {gguf_type}, {destination.stat().st_size / 1e6:.1f} MB"
    elif target == "hf":
        save_hf_dir(destination, bundle.model, bundle.tokenizer, bundle.config)
        what = "Hugging Face format"
    else:
        save_model_dir(destination, bundle)
        what = "lmforge format"
    print(f"wrote {destination} ({what}): {bundle.config.arch}, {bundle.config.n_layer} layers, "
          f"vocabulary {bundle.tokenizer.vocab_size}")
    types = set((bundle.meta.get("source") or {}).get("tensor_types") or [])
    if target == "lmforge" and types & set(FOUR_BIT_TYPES):
        print(f"(its 4-bit blocks are now float32; `lmforge quantize {args.source} DIR --method weight-int4` keeps "
              "them as stored: a quarter of the size and the fastest decoding on a CPU)")
    return 0


COMMAND = Command("convert", "Convert a model between lmforge's, Hugging Face's and GGUF formats.", EXAMPLES,
                  add_arguments, run)
