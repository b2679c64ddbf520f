"""int8 quantization, measured side by side: weights on disk, scoring and generation speed, perplexity.

    python benchmarks/quantize_quality.py --model /path/to/shakespeare-char/final     # a trained char GPT
    python benchmarks/quantize_quality.py --shape 6x384                               # random init, speed only
    python benchmarks/quantize_quality.py --kernels                                   # the int8 matmul candidates

The models are timed interleaved (one pass of each per round, medians) through `lmforge compare`'s own code.
Targets (issue 11): dynamic int8 >= 1.5x scoring speed at <= 2% perplexity loss, weights file <= 0.3x fp32.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import shared_file  # noqa: E402
from benchmarks.results import machine, write_section  # noqa: E402


def held_out(folder: Path, chars: int | None) -> Path:
    """The last 10% of Tiny Shakespeare (the recipe's validation split), optionally cut to `chars`."""
    text = shared_file("tinyshakespeare", "input.txt").read_text(encoding="utf-8")
    val = text[int(len(text) * 0.9):]
    path = folder / "val.txt"
    path.write_text(val[:chars] if chars else val, encoding="utf-8")
    return path


def compare(paths: list[Path], data: Path, rounds: int, batch_size: int) -> tuple[list[dict], str]:
    from lmforge.app.workflows.compare import compare_dirs, format_table

    rows = compare_dirs([str(p) for p in paths], str(data), batch_size=batch_size, rounds=rounds, new_tokens=64)
    for row, path in zip(rows, paths):  # short names in the table, not temporary paths
        row["model"] = "fp32" if row["compression"] == "-" else path.name
    return rows, format_table(rows)


def quantized_copies(source: Path, folder: Path) -> list[Path]:
    from lmforge.app.workflows.quantize import quantize_dir

    paths = [source]
    for method in ("dynamic-int8", "weight-int8"):
        quantize_dir(source, folder / method, method)
        paths.append(folder / method)
    return paths


def summary(rows: list[dict]) -> str:
    plain, dynamic = rows[0], rows[1]
    loss = dynamic["quality"] / plain["quality"] - 1
    return (f"dynamic-int8 against fp32: scoring {dynamic['scoring_tokens_per_s'] / plain['scoring_tokens_per_s']:.2f}x "
            f"(target >= 1.5x), generation {dynamic['generation_tokens_per_s'] / plain['generation_tokens_per_s']:.2f}x, "
            f"weights {dynamic['weights_bytes'] / plain['weights_bytes']:.2f}x (target <= 0.3x), "
            f"{plain['quality_metric']} {100 * loss:+.2f}% (target <= +2%)")


def trained(args) -> str:
    with tempfile.TemporaryDirectory(prefix="lmforge-quantize-bench-") as scratch:
        folder = Path(scratch)
        data = held_out(folder, args.chars)
        rows, table = compare(quantized_copies(Path(args.model), folder), data, args.rounds, args.batch_size)
        chars = len(data.read_text(encoding="utf-8"))
    return (f"Trained char GPT `{args.model}` on the Tiny Shakespeare validation split ({chars:,} "
            f"chars), batch {args.batch_size} x block_size, {args.rounds} interleaved rounds:\n\n{table}\n\n"
            f"{summary(rows)}\n")


def random_shape(args) -> str:
    import torch

    from lmforge.api import LM

    layers, width = (int(x) for x in args.shape.split("x"))
    with tempfile.TemporaryDirectory(prefix="lmforge-quantize-bench-") as scratch:
        folder = Path(scratch)
        data = held_out(folder, args.chars or 20000)
        torch.manual_seed(0)
        lm = LM.new("gpt", tokenizer="char", corpus=data, n_layer=layers, n_head=width // 64, n_embd=width,
                    block_size=args.block_size, dropout=0.0)
        lm.save(folder / "fp32")
        rows, table = compare(quantized_copies(folder / "fp32", folder), data, args.rounds, args.batch_size)
    return (f"Random-init char GPT {layers} layers x {width} (block {args.block_size}), batch {args.batch_size}, "
            f"{args.rounds} interleaved rounds (perplexity of an untrained model: only its change matters):\n\n"
            f"{table}\n\n{summary(rows)}\n")


def kernels(args) -> str:
    """One Linear shape through each int8 candidate: why dynamic-int8 uses torch.ops.quantized."""
    import warnings

    import torch
    import torch.nn.functional as F

    from lmforge.compress.quantize import Int8Linear

    def median_us(function, repeats=30):
        for _ in range(3):
            function()
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            function()
            times.append(time.perf_counter() - began)
        return 1e6 * statistics.median(times)

    lines = ["| M x K x N | fp32 F.linear | dynamic-int8 (torch.ops.quantized) | torch._int_mm + per-row scales | "
             "weight-int8 (dequantize + F.linear) | torchao int8 dynamic |", "|---|---|---|---|---|---|"]
    torch.manual_seed(0)
    with torch.no_grad():
        for m, k, n in [(1024, 384, 1536), (1024, 1536, 384), (1, 384, 1536)]:
            linear, x = torch.nn.Linear(k, n), torch.randn(m, k)
            dynamic, weight_only = Int8Linear.from_linear(linear, True), Int8Linear.from_linear(linear, False)
            q = dynamic.weight_int8.t().contiguous()

            def int_mm():
                scale = x.abs().amax(1, keepdim=True).clamp(min=1e-8) / 127
                return torch._int_mm(torch.round(x / scale).to(torch.int8), q) * scale * dynamic.weight_scale

            cells = [median_us(lambda: F.linear(x, linear.weight, linear.bias)), median_us(lambda: dynamic(x)),
                     median_us(int_mm), median_us(lambda: weight_only(x))]
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    import copy

                    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
                    ao = torch.nn.Sequential(copy.deepcopy(linear))
                    quantize_(ao, Int8DynamicActivationInt8WeightConfig())
                    cells.append(median_us(lambda: ao(x)))
            except ImportError:
                cells.append(None)
            shown = [f"{c:,.0f} us ({cells[0] / c:.2f}x)" if c else "not installed" for c in cells]
            lines.append(f"| {m} x {k} x {n} | " + " | ".join(shown) + " |")
    return "One Linear, median of 30 calls (speed-up against fp32 in brackets):\n\n" + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a trained fp32 model directory (char-level Tiny Shakespeare GPT)")
    parser.add_argument("--shape", help="LAYERSxWIDTH of a random-init GPT to time, e.g. 6x384")
    parser.add_argument("--kernels", action="store_true", help="time the int8 matmul candidates on one Linear")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--block-size", type=int, default=256, help="context of the --shape model")
    parser.add_argument("--chars", type=int, default=None, help="score only this many validation characters")
    args = parser.parse_args()
    parts = [(name, run) for name, wanted, run in [("trained", args.model, trained), (args.shape, args.shape, random_shape),
                                                   ("kernels", args.kernels, kernels)] if wanted]
    if not parts:
        parser.error("give --model DIR, --shape LxW and/or --kernels")
    for name, run in parts:  # one RESULTS.md section each, so the parts can be measured in separate runs
        text = run(args)
        print(text)
        write_section(f"quantize_quality {name}", f"## quantize_quality: {name} ({machine()})\n\n"
                                                  f"`python benchmarks/quantize_quality.py {' '.join(sys.argv[1:])}`"
                                                  f"\n\n{text}")


if __name__ == "__main__":
    main()
