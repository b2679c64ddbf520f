"""benchmarks/RESULTS.md: one section per benchmark script, each replaced in place when its script runs again,
under a header naming the machine. Also the matmul peak that MFU figures are measured against."""
from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
TITLE = "# Benchmark results\n\nWritten by the scripts in benchmarks/ (`make bench` runs them all). Each section " \
        "names the script that wrote it; rerunning a script replaces its section only.\n"


def machine() -> str:
    """One line: CPU model, cores, torch version and threads, date."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"{time.strftime('%Y-%m-%d')}")


def matmul_peak(dtype=None, size: int = 2048, repeats: int = 10) -> float:
    """Measured FLOP/s of torch.mm on size x size matrices (the best of `repeats`), fp32 unless `dtype`."""
    import torch

    dtype = dtype or torch.float32
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    for _ in range(2):
        torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - began)
    return 2 * size ** 3 / best


def write_section(name: str, markdown: str) -> Path:
    """Put `markdown` into RESULTS.md as section `name` (replacing that section's previous text)."""
    text = RESULTS.read_text() if RESULTS.exists() else TITLE
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)
    return RESULTS
