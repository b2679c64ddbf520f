"""The memorization table: canary exposure by number of insertions, with and without scrubbing.

A small character-level GPT (2 layers x 128) is trained for 600 steps (about 2 epochs) on Tiny Shakespeare
(../shared/data/tinyshakespeare) with canaries ("the phone number of <name> is 13xxxxxxxxx") inserted 0, 1, 4,
16 and 64 times (two canaries each); each canary's exposure is log2(candidates+1) - log2(rank of its true number
among --candidates random ones). --scrub runs lmforge's scrubber over the corpus first (data.scrub=true), which
replaces every canary's number with [PHONE]. One setting per command:

    python benchmarks/memorization_exposure.py
    python benchmarks/memorization_exposure.py --scrub
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED  # noqa: E402

from lmforge.app.workflows.memorization import memorization_audit  # noqa: E402
from lmforge.config import build_config  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrub", action="store_true")
    parser.add_argument("--corpus-chars", type=int, default=2_000_000, help="default: the whole file (1.1M)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--canaries", type=int, default=10)
    parser.add_argument("--repetitions", default="0,1,4,16,64")
    parser.add_argument("--candidates", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    source = SHARED / "tinyshakespeare" / "input.txt"
    if not source.is_file():
        print(f"skipped: {source} is not on this machine")
        return 0
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="lmforge-mem-") as scratch:
        corpus = Path(scratch) / "shakespeare.txt"
        corpus.write_text(source.read_text(encoding="utf-8")[:args.corpus_chars], encoding="utf-8")
        config = build_config({
            "model": {"arch": "gpt", "n_layer": args.layers, "n_head": 4, "n_embd": 128, "block_size": 128},
            "data": {"paths": [str(corpus)], "scrub": args.scrub},
            "train": {"max_steps": args.steps, "batch_size": 32, "lr": 2e-3, "min_lr": 2e-4, "warmup_steps": 50,
                      "eval_every": args.steps, "eval_steps": 10, "save_every": 0, "seed": args.seed}}, "benchmark")
        began = time.perf_counter()
        report = memorization_audit(config, canaries=args.canaries,
                                    repetitions=[int(r) for r in args.repetitions.split(",")],
                                    candidates=args.candidates, seed=args.seed, progress=False,
                                    work_dir=Path(scratch) / "run")
    epochs = args.steps * 32 * 128 / min(args.corpus_chars, len(source.read_text(encoding="utf-8")))
    print(json.dumps({"scrubbed": args.scrub, "exposure_by_repetitions": report["exposure_by_repetitions"],
                      "max_exposure": report["max_exposure"], "val_loss": report["final_loss"],
                      "epochs_over_corpus": round(epochs, 1), "seconds": round(time.perf_counter() - began, 1),
                      "per_canary": [(c["repetitions"], c["exposure"]) for c in report["canaries"]]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
