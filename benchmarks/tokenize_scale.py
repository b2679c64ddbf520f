"""Tokenizing a generated corpus with `lmforge data tokenize`'s engine: tokens/s, MB/s and the peak memory
(resident set) of the whole process tree, sampled from /proc. The corpus is made once (--mb megabytes of
English-like sentences from a 5,000-word vocabulary) and reused.

    python benchmarks/tokenize_scale.py --mb 1000 --workers 2
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import threading
import time
from pathlib import Path

from lmforge.data.tokenize import tokenize_corpus
from lmforge.tokenizer import Tokenizer


def make_corpus(path: Path, megabytes: int, seed: int = 0) -> None:
    """Write `megabytes` of generated sentences (documents of 20-200 lines) to path, if it is not there yet."""
    if path.is_file() and path.stat().st_size >= megabytes * 1_000_000:
        return
    rng = random.Random(seed)
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    words = ["".join(rng.choices(letters, weights=range(26, 0, -1), k=rng.randint(2, 9))) for _ in range(5000)]
    lines = [" ".join(rng.choices(words, k=rng.randint(5, 20))).capitalize() + "." for _ in range(20000)]
    block = "\n".join(lines) + "\n"
    temp = path.with_suffix(".tmp")
    with open(temp, "w") as out:
        written = 0
        while written < megabytes * 1_000_000:
            rng.shuffle(lines)
            block = "\n".join(lines) + "\n"
            out.write(block)
            written += len(block)
    temp.replace(path)


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            with open(f"/proc/{current}/task/{current}/children") as children:
                stack += [int(c) for c in children.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=1000, help="corpus size in MB")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--dir", default="/tmp/lmforge-tokenize-bench")
    parser.add_argument("--vocab", type=int, default=8192)
    args = parser.parse_args()
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    corpus = root / f"corpus-{args.mb}mb.txt"
    make_corpus(corpus, args.mb)
    tok_path = root / f"bpe-{args.vocab}.json"
    if not tok_path.is_file():
        with open(corpus) as handle:
            sample = [handle.read(20_000_000)]
        Tokenizer.train("bpe", sample, args.vocab).save(tok_path)
    tokenizer = Tokenizer.load(tok_path)
    out = root / "out"
    shutil.rmtree(out, ignore_errors=True)
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], tree_rss(os.getpid()))
            time.sleep(0.1)

    baseline = tree_rss(os.getpid())
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    began = time.perf_counter()
    info = tokenize_corpus([str(corpus)], tokenizer, out, workers=args.workers, progress=True)
    seconds = time.perf_counter() - began
    stop.set()
    watcher.join()
    size = corpus.stat().st_size
    print(f"corpus {size / 1e6:,.0f} MB, {info['n_tokens']:,} tokens (bpe {args.vocab}), "
          f"{args.workers or os.cpu_count()} workers: {seconds:.1f}s, {info['n_tokens'] / seconds:,.0f} tokens/s, "
          f"{size / 1e6 / seconds:.1f} MB/s; peak RSS of the process tree {peak[0] / 2**20:,.0f} MiB "
          f"(the parent alone before: {baseline / 2**20:,.0f} MiB)")


if __name__ == "__main__":
    main()
