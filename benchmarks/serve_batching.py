"""Serving under load: 50 concurrent streaming clients against `lmforge serve`, batching on vs off.

Each configuration starts a real server process on 127.0.0.1 (a free port) with a GPT of the given size
(random weights: speed does not depend on them, and ignore_eos keeps every answer max_tokens long), then
50 openai.AsyncOpenAI clients stream a completion each at the same time. Prints per-request latency
(p50/p95, arrival to last token), time to first token, generated tokens/s over the whole run, errors,
and the ratios of batching on (--max-batch 8) to off (--max-batch 1).
    python benchmarks/serve_batching.py [--clients 50] [--max-tokens 64] [--batches 1 8] [--model runs/x/final]
"""
from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import ROOT


def make_model(directory: Path, args) -> Path:
    from lmforge.api import LM
    from lmforge.config import Config, ModelConfig
    from lmforge.models import build_model
    from lmforge.tokenizer import Tokenizer

    tok = Tokenizer.train("char", ["abcdefghijklmnopqrstuvwxyz ,.\nABCDEFGHIJKLMNOPQRSTUVWXYZ!?;:'"])
    cfg = ModelConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, block_size=256,
                      vocab_size=tok.vocab_size)
    torch.manual_seed(0)
    LM(build_model(cfg).eval(), tok, Config(model=cfg)).save(directory / "bench")
    return directory / "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(url: str, clients: int, max_tokens: int) -> tuple[list[float], list[float], int, int, float]:
    import openai

    async def one(c, i):
        began = time.perf_counter()
        first, tokens = None, 0
        stream = await c.completions.create(model="bench", prompt=f"Request {i}: once upon a time", stream=True,
                                            max_tokens=max_tokens, temperature=0.8, seed=i,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].text and first is None:
                first = time.perf_counter() - began
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
        return time.perf_counter() - began, first, tokens

    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600) as c:
        began = time.perf_counter()
        results = await asyncio.gather(*(one(c, i) for i in range(clients)), return_exceptions=True)
        wall = time.perf_counter() - began
    ok = [r for r in results if not isinstance(r, BaseException)]
    errors = len(results) - len(ok)
    return [r[0] for r in ok], [r[1] for r in ok if r[1] is not None], sum(r[2] for r in ok), errors, wall


def run(model_dir: Path, max_batch: int, args) -> dict:
    import httpx

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "lmforge", "serve", str(model_dir), "--host", "127.0.0.1",
                               "--port", str(port), "--model-name", "bench", "--max-batch", str(max_batch),
                               "--max-queue", str(args.clients)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the server did not start")
            time.sleep(0.1)
        latencies, firsts, tokens, errors, wall = asyncio.run(load(url, args.clients, args.max_tokens))
    finally:
        server.terminate()
        server.wait(60)
    return {"max_batch": max_batch, "p50": np.percentile(latencies, 50), "p95": np.percentile(latencies, 95),
            "ttft50": np.percentile(firsts, 50), "tokens_s": tokens / wall, "errors": errors, "wall": wall,
            "tokens": tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="--max-batch values to compare")
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--model", help="serve this model directory instead of a random GPT")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lmforge-serve-bench-") as scratch:
        model_dir = Path(args.model) if args.model else make_model(Path(scratch), args)
        rows = [run(model_dir, b, args) for b in args.batches]
    print(f"{args.clients} concurrent streaming clients, {args.max_tokens} tokens each, "
          f"{args.model or f'GPT {args.n_layer}x{args.n_embd}'} on {torch.get_num_threads()} threads")
    print(f"{'max_batch':>9} {'p50 s':>7} {'p95 s':>7} {'TTFT p50':>9} {'tokens/s':>9} {'errors':>6}")
    for r in rows:
        print(f"{r['max_batch']:>9} {r['p50']:7.2f} {r['p95']:7.2f} {r['ttft50']:9.2f} {r['tokens_s']:9.0f} "
              f"{r['errors']:>6}")
    if len(rows) > 1:
        base, best = rows[0], rows[-1]
        print(f"batching {best['max_batch']} vs {base['max_batch']}: tokens/s x{best['tokens_s'] / base['tokens_s']:.2f}, "
              f"p50 latency x{base['p50'] / best['p50']:.2f} lower, p95 x{base['p95'] / best['p95']:.2f} lower")


if __name__ == "__main__":
    main()
