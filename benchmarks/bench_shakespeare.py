"""Char-level Tiny Shakespeare: wall time until validation loss <= 1.89, lmforge against nanoGPT's own train.py.

lmforge trains configs/shakespeare-char.toml; nanoGPT runs its CPU recipe from its README
(config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 --log_interval=1 --block_size=64
--batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0).
Both evaluate 20 batches every 250 steps; each run's clock starts when its process is launched and stops at the
first evaluation reporting val loss <= 1.89 (the process is then ended). The runs alternate lmforge, nanoGPT,
lmforge, ... in one invocation. nanoGPT's data step (its prepare.py downloads) is replaced by writing the same
train.bin / val.bin / meta.pkl from the local input.txt into a temporary copy of the checkout, outside the clock.
Writes the "shakespeare" section of benchmarks/RESULTS.md.

    git clone https://github.com/karpathy/nanoGPT /tmp/nanoGPT
    python benchmarks/bench_shakespeare.py --nanogpt /tmp/nanoGPT            # one alternation, about 4 minutes
    python benchmarks/bench_shakespeare.py --nanogpt /tmp/nanoGPT --rounds 2
    python benchmarks/bench_shakespeare.py                                    # lmforge only
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import machine, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
INPUT = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
TARGET = 1.89
EVAL_BATCHES = 20
NANOGPT_ARGS = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", f"--eval_iters={EVAL_BATCHES}",
                "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
                "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0"]
NANOGPT_VAL = re.compile(r"^step (\d+): train loss [\d.]+, val loss ([\d.]+)")


def prepare_nanogpt(source: Path, into: Path, text: str) -> Path:
    """A copy of nanoGPT's training code with data/shakespeare_char/{train,val}.bin and meta.pkl made from `text`
    the way its prepare.py makes them (sorted characters, first 90% train, uint16)."""
    into.mkdir(parents=True)
    for name in ("train.py", "model.py", "configurator.py"):
        shutil.copy(source / name, into / name)
    shutil.copytree(source / "config", into / "config")
    data = into / "data" / "shakespeare_char"
    data.mkdir(parents=True)
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    split = int(len(text) * 0.9)
    for name, part in (("train", text[:split]), ("val", text[split:])):
        np.array([stoi[c] for c in part], dtype=np.uint16).tofile(data / f"{name}.bin")
    # nanoGPT reads its vocabulary size from this pickle; written here for its own train.py, never loaded by lmforge
    with open(data / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}, f)
    return into


def run_until(command: list[str], cwd: Path, read_val, limit: float) -> dict:
    """Launch `command`; `read_val(process)` yields (step, val loss) as evaluations appear. Returns the seconds
    from launch to the first val loss <= TARGET (None if never), every evaluation seen, and the process's end."""
    began = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen, reached, tail = [], None, []
    timer = threading.Timer(limit, process.kill)
    timer.start()
    try:
        for step, val in read_val(process, tail):
            seen.append((step, round(val, 4), round(time.perf_counter() - began, 1)))
            if val <= TARGET:
                reached = time.perf_counter() - began
                break
    finally:
        timer.cancel()
        if process.poll() is None:
            process.terminate()
        process.wait()
        process.stdout.close()
    if reached is None and not seen:
        print("".join(tail[-20:]), file=sys.stderr)
    return {"seconds": reached, "evals": seen}


def _nanogpt_vals(process, tail):
    for line in process.stdout:
        tail.append(line)
        match = NANOGPT_VAL.match(line)
        if match:
            yield int(match.group(1)), float(match.group(2))


def _lmforge_vals(metrics: Path):
    def read(process, tail):
        done = 0
        while True:
            finished = process.poll() is not None
            # whole lines only: the last one may be half written
            lines = metrics.read_text().split("\n")[:-1] if metrics.exists() else []
            for line in lines[done:]:
                record = json.loads(line)
                if "val_loss" in record:
                    yield record["step"], record["val_loss"]
            done = len(lines)
            if finished:
                tail.append(process.stdout.read())
                return
            time.sleep(0.2)
    return read


def run_lmforge(workdir: Path, overrides: list[str], limit: float) -> dict:
    run_dir = workdir / f"lmforge-{time.monotonic_ns()}"
    command = [sys.executable, "-m", "lmforge", "train", str(ROOT / "configs" / "shakespeare-char.toml"), "--quiet",
               f"data.paths={json.dumps([str(INPUT)])}", f"run.dir={json.dumps(str(run_dir))}",
               f"train.eval_steps={EVAL_BATCHES}", "train.eval_every=250", *overrides]
    result = run_until(command, ROOT, _lmforge_vals(run_dir / "metrics.jsonl"), limit)
    shutil.rmtree(run_dir, ignore_errors=True)
    return result


def run_nanogpt(copy: Path, limit: float) -> dict:
    shutil.rmtree(copy / "out-shakespeare-char", ignore_errors=True)
    return run_until([sys.executable, "train.py", *NANOGPT_ARGS], copy, _nanogpt_vals, limit)


def _fmt(seconds: float | None) -> str:
    return f"{seconds:.1f} s" if seconds is not None else "not reached"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout (git clone https://github.com/karpathy/nanoGPT)")
    parser.add_argument("--rounds", type=int, default=1, help="alternations of lmforge then nanoGPT (default 1)")
    parser.add_argument("--limit", type=float, default=300, help="seconds before a run is stopped (default 300)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--bf16", action="store_true", help="also run lmforge with train.dtype=bfloat16 each round")
    parser.add_argument("overrides", nargs="*", help="lmforge section.key=value settings for its runs")
    args = parser.parse_args()
    if not INPUT.exists():
        print(f"skipped: needs Tiny Shakespeare at {INPUT} (the project's shared data folder)")
        return
    nanogpt = args.nanogpt
    if nanogpt is not None and not (nanogpt / "train.py").exists():
        sys.exit(f"error: --nanogpt {nanogpt} has no train.py; get it with: git clone https://github.com/karpathy/nanoGPT")
    if nanogpt is None:
        print("nanoGPT row skipped: pass --nanogpt DIR after `git clone https://github.com/karpathy/nanoGPT DIR`")
    recipes = [args.overrides] + ([[*args.overrides, 'train.dtype="bfloat16"']] if args.bf16 else [])
    ours, theirs = [[] for _ in recipes], []
    with tempfile.TemporaryDirectory() as tmp:
        copy = prepare_nanogpt(nanogpt, Path(tmp) / "nanogpt", INPUT.read_text()) if nanogpt else None
        for round_ in range(args.rounds):
            for runs, overrides in zip(ours, recipes):
                runs.append(run_lmforge(Path(tmp), overrides, args.limit))
                print(f"round {round_ + 1}: lmforge {' '.join(overrides)} {_fmt(runs[-1]['seconds'])}  "
                      f"evals {runs[-1]['evals']}", flush=True)
            if copy is not None:
                theirs.append(run_nanogpt(copy, args.limit))
                print(f"round {round_ + 1}: nanoGPT {_fmt(theirs[-1]['seconds'])}  evals {theirs[-1]['evals']}",
                      flush=True)
    nano = [r["seconds"] for r in theirs]
    lines = ["## Char Tiny Shakespeare, time to val loss <= 1.89 (`benchmarks/bench_shakespeare.py`)", "",
             machine(), "",
             f"Wall time from launching the process to the first evaluation with val loss <= {TARGET} (evaluations "
             f"of {EVAL_BATCHES} batches every 250 steps, both), runs alternating lmforge / nanoGPT.", "",
             "| trainer | recipe | seconds per run | vs nanoGPT (medians; target <= 0.8x) | evaluations (step, "
             "val loss, s) of the last run |", "|---|---|---|---|---|"]
    for runs, overrides in zip(ours, recipes):
        mine = [r["seconds"] for r in runs]
        ratio = "-"
        if nano and all(t is not None for t in mine + nano):
            value = statistics.median(mine) / statistics.median(nano)
            ratio = f"**{value:.2f}x** ({'met' if value <= 0.8 else 'missed'})"
        recipe = " ".join(["configs/shakespeare-char.toml", *overrides])
        lines.append(f"| lmforge | `{recipe}` | {', '.join(map(_fmt, mine))} | {ratio} | {runs[-1]['evals']} |")
    if theirs:
        lines.append(f"| nanoGPT train.py | its README's CPU recipe | {', '.join(map(_fmt, nano))} | 1 | "
                     f"{theirs[-1]['evals']} |")
    markdown = "\n".join(lines)
    print(markdown)
    if not args.no_write:
        print(f"wrote {write_section('shakespeare', markdown)}")


if __name__ == "__main__":
    main()
