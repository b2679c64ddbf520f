"""`lmforge compare DIR... --data FILE`: model directories side by side (plain, LoRA, pruned, quantized, distilled:
anything load_model_dir loads): weights on disk, parameters and nonzero parameters, scoring and generation speed,
and quality on the same held-out data; one table and one PNG of quality against speed.

Speeds are timed interleaved (every model once per round, the median of the rounds), so a slow moment of the
machine hurts all models alike. Scoring speed is a forward pass over a fixed batch of batch_size x block_size
token ids (the classification head for classifiers); generation speed is greedy decoding of one sequence with
the KV cache.
"""
from __future__ import annotations

import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from ...compress.int4 import Int4Linear
from ...figures import pyplot
from ...models.contract import is_decoder

# the metric each kind of model is judged by, and whether more is better
QUALITY = (("accuracy", True), ("perplexity", False), ("micro_f1", True), ("mse", False))


def weights_bytes(path: Path) -> int:
    """Bytes of the weight files a model directory ships (*.safetensors, and *.bin of a Hugging Face one)."""
    files = [f for pattern in ("*.safetensors", "*.bin") for f in Path(path).glob(pattern)]
    return sum(f.stat().st_size for f in files if f.name != "optimizer.safetensors")


def count_weights(model: torch.nn.Module) -> tuple[int, int]:
    """(parameters, nonzero parameters), each shared tensor counted once; int8 weights count like any other, a
    4-bit layer's two codes a byte as the weights they stand for."""
    stand_ins = {id(m.weight_int4): m.dequantized_weight() for m in model.modules() if isinstance(m, Int4Linear)}
    unique = {id(p): stand_ins.get(id(p), p) for p in model.parameters()}.values()
    return sum(p.numel() for p in unique), sum(int(torch.count_nonzero(p.detach())) for p in unique)


def _kind(lm) -> str:
    if lm.config.model.labels:
        return "classifier"
    return "decoder" if is_decoder(lm.model) else "encoder"


def _steps(meta: dict) -> str:
    """The compression steps of a directory, e.g. 'prune, quantize:dynamic-int8' ('-' for a plain model)."""
    names = []
    for step in meta.get("compression") or []:
        kind = step.get("kind", "?") if isinstance(step, dict) else "?"
        method = step.get("method") if isinstance(step, dict) else None
        names.append(f"{kind}:{method}" if method else kind)
    return ", ".join(names) or "-"


def _prompt(data: str, tokenizer, context: int) -> str:
    """A short prompt for the generation timing: the start of the data when it is one text file."""
    path = Path(data)
    if path.is_file() and path.suffix not in (".csv", ".tsv", ".jsonl"):
        with open(path, encoding="utf-8", errors="replace") as handle:
            ids = tokenizer.encode(handle.read(256).strip())
        if ids:  # a quarter of the context at most, so every model generates from the same prompt
            return tokenizer.decode(ids[:max(1, context // 4)])
    return tokenizer.decode(list(range(min(4, tokenizer.vocab_size))))


def _megabytes(count: int) -> str:
    """Bytes as MB with three significant digits (0.0408, 3.21, 45.3)."""
    return f"{count / 1e6:.3g}"


def _timed(function) -> float:
    began = time.perf_counter()
    function()
    return time.perf_counter() - began


def compare_dirs(paths: list[str], data: str, batch_size: int = 16, rounds: int = 5, new_tokens: int = 64,
                 progress: bool = True) -> list[dict]:
    """Measure every model directory of `paths` on `data`; one dict of numbers per directory, in order."""
    from ...infer.generate import SamplingConfig, generate
    from ..facade import LM

    if not paths:
        raise ValueError("compare: give at least one model directory")
    if len(set(map(str, paths))) != len(paths):
        raise ValueError(f"compare: a model directory is listed twice in {list(map(str, paths))}")
    if rounds < 1 or batch_size < 1 or new_tokens < 1:
        raise ValueError(f"compare: --rounds, --batch-size and --new-tokens must be >= 1; got {rounds}, {batch_size} "
                         f"and {new_tokens}")
    if not Path(data).exists() and not any(ch in str(data) for ch in "*?["):
        raise FileNotFoundError(f"compare: --data '{data}' does not exist")

    def say(text: str) -> None:
        if progress:
            print(text, file=sys.stderr, flush=True)

    models = []
    for path in paths:
        say(f"loading {path}")
        lm = LM.from_pretrained(path)
        models.append((str(path), lm))
    kinds = {name: _kind(lm) for name, lm in models}
    if len({k == "classifier" for k in kinds.values()}) > 1:
        raise ValueError("compare: classifiers and language models cannot share one --data file: "
                         + ", ".join(f"{name} is a {kind}" for name, kind in kinds.items()))
    rows = []
    for name, lm in models:
        say(f"evaluating {name} on {data}")
        result = lm.evaluate(data, batch_size=batch_size)
        metric, higher = next(((key, up) for key, up in QUALITY if key in result), (None, True))
        parameters, nonzero = count_weights(lm.model)
        rows.append({"model": name, "kind": kinds[name], "compression": _steps(lm.meta),
                     "weights_bytes": weights_bytes(Path(name)), "parameters": parameters, "nonzero": nonzero,
                     "quality_metric": metric, "higher_is_better": higher,
                     "quality": result.get(metric) if metric else None, "scoring_tokens_per_s": None,
                     "generation_tokens_per_s": None})

    # the timed work of each model, on identical inputs
    generator = torch.Generator().manual_seed(0)
    scoring, generation = [], []
    for name, lm in models:
        cfg, model = lm.config.model, lm.model
        ids = torch.randint(0, min(cfg.vocab_size, lm.tokenizer.vocab_size), (batch_size, cfg.block_size),
                            generator=generator)
        forward = model.classify if cfg.labels else model
        scoring.append(lambda forward=forward, ids=ids: forward(ids))
        if kinds[name] == "decoder":
            sampling = SamplingConfig(max_new_tokens=new_tokens, temperature=0, ignore_eos=True)
            prompt = _prompt(data, lm.tokenizer, cfg.block_size)
            generation.append(lambda lm=lm, s=sampling, p=prompt: generate(lm.model, lm.tokenizer, [p], s))
        else:
            generation.append(None)
    times = [([], []) for _ in models]
    with torch.no_grad():
        for score, gen in zip(scoring, generation):  # warm-up: first calls allocate, pack weights, fill caches
            score()
            if gen:
                gen()
        for round_number in range(rounds):
            say(f"timing round {round_number + 1}/{rounds}")
            for (score_times, gen_times), score, gen in zip(times, scoring, generation):
                score_times.append(_timed(score))
                if gen:
                    gen_times.append(_timed(gen))
    for row, (name, lm), (score_times, gen_times) in zip(rows, models, times):
        row["scoring_tokens_per_s"] = batch_size * lm.config.model.block_size / statistics.median(score_times)
        if gen_times:
            row["generation_tokens_per_s"] = new_tokens / statistics.median(gen_times)
    return rows


def format_table(rows: list[dict]) -> str:
    """A markdown table, one row per model directory; ratios are against the first row."""
    first = rows[0]
    metric = first["quality_metric"] or "quality"
    lines = [f"| model | compression | weights MB | size x | parameters | nonzero | scoring tokens/s | speed x | "
             f"generation tokens/s | {metric} |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        generation = f"{r['generation_tokens_per_s']:,.0f}" if r["generation_tokens_per_s"] else "-"
        quality = f"{r['quality']:.4f}" if r["quality"] is not None else "-"
        size = r["weights_bytes"] / first["weights_bytes"] if first["weights_bytes"] else math.nan
        lines.append(f"| {r['model']} | {r['compression']} | {_megabytes(r['weights_bytes'])} | {size:.2f} | "
                     f"{r['parameters']:,} | {r['nonzero']:,} | {r['scoring_tokens_per_s']:,.0f} | "
                     f"{r['scoring_tokens_per_s'] / first['scoring_tokens_per_s']:.2f} | {generation} | {quality} |")
    return "\n".join(lines)


def plot_compare(rows: list[dict], out: Path) -> Path:
    """Quality against scoring speed, one labelled point per model directory."""
    plt = pyplot()

    metric = rows[0]["quality_metric"] or "quality"
    better = "higher" if rows[0]["higher_is_better"] else "lower"
    figure, axis = plt.subplots(figsize=(7, 4.5), dpi=110)
    for r in rows:
        if r["quality"] is None:
            continue
        axis.scatter(r["scoring_tokens_per_s"], r["quality"], s=30 + 170 * math.sqrt(
            r["weights_bytes"] / max(max(x["weights_bytes"] for x in rows), 1)), alpha=0.8)
        axis.annotate(f"{Path(r['model']).name or r['model']} ({_megabytes(r['weights_bytes'])} MB)",
                      (r["scoring_tokens_per_s"], r["quality"]), textcoords="offset points", xytext=(6, 6), fontsize=8)
    axis.set_xlabel("scoring speed (tokens/s)")
    axis.set_ylabel(f"{metric} ({better} is better)")
    axis.set_title("quality against speed (marker area: weights on disk)")
    axis.ticklabel_format(useOffset=False)  # perplexities 15.2862 and 15.2866, not +1.5286e1 and offsets
    axis.grid(alpha=0.3)
    axis.margins(0.2)
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = out.with_name(f".{out.name}.tmp.png")
    figure.savefig(temp)
    plt.close(figure)
    temp.replace(out)
    return out


def run_compare(args) -> int:
    """The `lmforge compare` command: measure, print the table (or JSON), write the PNG."""
    rows = compare_dirs(args.models, args.data, batch_size=args.batch_size, rounds=args.rounds,
                        new_tokens=args.new_tokens, progress=not args.quiet)
    if args.out:
        plot_compare(rows, Path(args.out))
    if args.json:
        print(json.dumps(rows))
    else:
        print(format_table(rows))
        if args.out:
            print(f"plot: {args.out}")
    return 0
