"""`lmforge demo`: pretrain small models on the built-in corpus (CPython's documentation) and show them."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from ..training import train_from_config
from ...config import build_config
from ...preflight import check_run_dir


def _section(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def demo_gpt(run_dir: Path, steps: int) -> Path:
    """A character-level GPT on the built-in corpus; prints a sample and returns its model directory."""
    _section(f"GPT: causal-LM pretraining on the built-in corpus ({steps} steps)")
    config = build_config({
        "model": {"arch": "gpt", "n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 128, "dropout": 0.0},
        "tokenizer": {"kind": "char"},
        "train": {"max_steps": steps, "batch_size": 16, "lr": 2e-3, "min_lr": 2e-4, "warmup_steps": 50,
                  "eval_every": max(1, steps // 4), "eval_steps": 10, "save_every": 0, "log_every": 25},
        "run": {"name": "gpt", "dir": str(run_dir)},
    }, "demo")
    lm, result = train_from_config(config)
    print(f"\nval loss {result.eval.get('val_loss', float('nan')):.3f} after {result.step} steps "
          f"({result.seconds:.0f}s, {result.tokens_per_s:,.0f} tokens/s)")
    prompt = "The "
    print(f"\nsample (temperature 0.8), prompt {prompt!r}:\n")
    print(prompt, end="")
    lm.generate(prompt, max_new_tokens=300, temperature=0.8, top_k=40, seed=0, stream=True)
    print(f"\n\nmodel saved to {result.final_dir}")
    print(f"try: lmforge generate {result.final_dir} --prompt \"The \" --max-new-tokens 200 --temperature 0.8")
    return result.final_dir


FILL_MASK_EXAMPLES = [
    "The [MASK] of the function is returned.",
    "This module provides access to the [MASK] system.",
    "If the key is not found, a [MASK] is raised.",
    "The for statement is used to iterate over the elements of a [MASK].",
]


def demo_bert(run_dir: Path, steps: int) -> Path:
    """A small WordPiece BERT pretrained with masked-LM on the built-in corpus; fills a few masks."""
    _section(f"BERT: masked-LM pretraining on the built-in corpus ({steps} steps)")
    config = build_config({
        # short windows and few layers: on 2 CPU cores this learns the most per second
        "model": {"arch": "bert", "n_layer": 2, "n_head": 4, "n_embd": 128, "block_size": 32, "dropout": 0.0,
                  "position": "rope"},
        "tokenizer": {"kind": "wordpiece", "vocab_size": 4000, "lowercase": True},
        "data": {"val_fraction": 0.05},
        "train": {"objective": "mlm", "max_steps": steps, "batch_size": 64, "lr": 3e-3, "min_lr": 3e-4,
                  "warmup_steps": 100, "weight_decay": 0.01, "eval_every": max(1, steps // 3), "eval_steps": 10,
                  "save_every": 0, "log_every": 25},
        "run": {"name": "bert", "dir": str(run_dir)},
    }, "demo")
    lm, result = train_from_config(config)
    print(f"\nval loss {result.eval.get('val_loss', float('nan')):.3f}, masked-token accuracy "
          f"{result.eval.get('val_mlm_accuracy', float('nan')):.3f} after {result.step} steps ({result.seconds:.0f}s)")
    for text in FILL_MASK_EXAMPLES:
        shown = ", ".join(f"{token} {p:.2f}" for token, p in lm.fill_mask(text, top_k=5))
        print(f"\n  {text}\n    -> {shown}")
    print(f"\nmodel saved to {result.final_dir}")
    print(f"try: lmforge fill-mask {result.final_dir} \"The [MASK] of the function is returned.\" --top-k 5")
    return result.final_dir


def run_demo(run_dir: Path, steps: int | None = None) -> None:
    """Everything `make demo` shows. The demo's own run directories are replaced each time."""
    if steps is not None and steps < 1:
        raise ValueError(f"--steps must be at least 1, got {steps} (leave it out for the full demo)")
    check_run_dir(run_dir, "--run-dir")
    began = time.perf_counter()
    for sub in ("gpt", "bert"):
        shutil.rmtree(run_dir / sub, ignore_errors=True)
    demo_gpt(run_dir / "gpt", steps or 1000)
    demo_bert(run_dir / "bert", steps or 1200)
    print(f"\ndemo finished in {time.perf_counter() - began:.0f}s")
