"""`lmforge generate`: generate text from a decoder model directory."""
from __future__ import annotations

import argparse
import json
import sys

from . import Command, add_device_arguments

EXAMPLES = """examples:
  lmforge generate runs/gpt-tiny/final --prompt "Once upon a time" --max-new-tokens 200 --temperature 0.8 --top-p 0.95
  lmforge generate runs/gpt-tiny/final --prompt "def " --temperature 0 --stop "\\n\\n"
  lmforge generate runs/gpt-tiny/final --prompt "A" --prompt "B" --json      # a batch, one JSON line each
  lmforge generate runs/gpt-tiny/final --prompt "The" --num-beams 4 --length-penalty 1.0   # beam search"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `lmforge generate` command's arguments."""
    p.add_argument("model", help="model directory (a run's final/ or checkpoints/step-N/)")
    p.add_argument("--prompt", action="append", default=None, help="prompt text (repeat for a batch); default: empty")
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0)")
    p.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: smallest set with this probability")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help=">1 discourages repeating tokens")
    p.add_argument("--stop", action="append", default=[], help="stop when this text appears (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="make sampling repeatable")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole context each step (slower)")
    p.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams (sampling options unused)")
    p.add_argument("--length-penalty", type=float, default=1.0, help="beam scores are divided by length ** this")
    p.add_argument("--json", action="store_true", help="print one JSON object per prompt instead of streaming")
    add_device_arguments(p)


def run(args) -> int:
    """Run `lmforge generate`; returns the exit status."""
    from ..facade import LM
    from ...infer.generate import SamplingConfig

    SamplingConfig(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.repetition_penalty,
                   seed=args.seed).check()  # before the prompt is echoed: a refusal prints nothing else
    lm = LM.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    prompts = args.prompt or [""]
    options = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, repetition_penalty=args.repetition_penalty, stop=args.stop, seed=args.seed,
                   use_cache=not args.no_cache, num_beams=args.num_beams, length_penalty=args.length_penalty)
    if args.json or len(prompts) > 1:
        outputs = lm.generate(prompts, **options)
        for prompt, text in zip(prompts, outputs):
            print(json.dumps({"prompt": prompt, "text": text}, ensure_ascii=False) if args.json else prompt + text)
    else:
        sys.stdout.write(prompts[0])
        lm.generate(prompts[0], stream=True, **options)
        sys.stdout.write("\n")
    return 0


COMMAND = Command("generate", "Generate text from a decoder model directory.", EXAMPLES, add_arguments, run)
