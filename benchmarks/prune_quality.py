"""What pruning costs in perplexity and buys in size and scoring speed, on the char-level Shakespeare GPT.

The model is the one `lmforge train configs/shakespeare-char.toml` writes (4 layers x 4 heads x 128, context 64).
Held out: the last 10% of tinyshakespeare/input.txt (the split it was validated on); fine-tuning and importance
scores use only the first 90%. Perplexity is `lmforge eval`'s (every held-out token scored once).

  --part magnitude: dense; 50% global magnitude sparsity before and after a short fine-tune; file sizes.
  --part structured: 25% of the heads (gradient importance), and 50% of the MLP neurons, each before and after
                     the same fine-tune; scoring tokens/s of the dense and pruned models, measured side by side.

One part per command (each well under 5 minutes on 2 cores); both write benchmarks/prune_quality.json and the
prune_quality section of RESULTS.md:

    python benchmarks/prune_quality.py --model runs/shakespeare-char/final --part magnitude
    python benchmarks/prune_quality.py --model runs/shakespeare-char/final --part structured
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import shared_file  # noqa: E402
from results import machine, write_section  # noqa: E402

from lmforge.api import LM  # noqa: E402
from lmforge.app.workflows.prune import prune  # noqa: E402

OUT = Path(__file__).resolve().parent / "prune_quality.json"


def split(scratch: Path) -> tuple[Path, Path]:
    """The first 90% of the text (fine-tuning, importance) and the last 10% (held-out perplexity)."""
    text = shared_file("tinyshakespeare", "input.txt").read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    train, held_out = scratch / "train.txt", scratch / "held_out.txt"
    train.write_text(text[:cut], encoding="utf-8")
    held_out.write_text(text[cut:], encoding="utf-8")
    return train, held_out


def perplexity(lm: LM, held_out: Path) -> float:
    return round(lm.evaluate(held_out)["perplexity"], 4)


def scoring_speed(models: dict[str, torch.nn.Module], rounds: int = 7, reps: int = 20, batch: int = 16) -> dict:
    """Scoring tokens/s of each model (forward over batch x context tokens), the median of `rounds`, the
    models interleaved in every round so drift hits all alike."""
    context = next(iter(models.values())).config.block_size
    ids = torch.randint(0, 60, (batch, context))
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            model.eval()
            for _ in range(3):
                model(ids)
        for _ in range(rounds):
            for name, model in models.items():
                began = time.perf_counter()
                for _ in range(reps):
                    model(ids)
                times[name].append(time.perf_counter() - began)
    return {name: round(batch * context * reps / statistics.median(values)) for name, values in times.items()}


def finetune_args(args) -> dict:
    return {"finetune_steps": args.steps, "batch_size": 12, "lr": args.lr, "progress": False, "log": lambda *a: None}


def magnitude(args, train: Path, held_out: Path, scratch: Path) -> dict:
    dense = LM.from_pretrained(args.model)
    result = {"dense_perplexity": perplexity(dense, held_out)}
    lm, _ = prune(LM.from_pretrained(args.model), "magnitude", sparsity=0.5, progress=False, log=lambda *a: None)
    result["pruned_perplexity"] = perplexity(lm, held_out)
    path = lm.save(scratch / "pruned")
    lm, report = prune(LM.from_pretrained(args.model), "magnitude", sparsity=0.5, data=train, **finetune_args(args))
    result["finetuned_perplexity"] = perplexity(lm, held_out)
    result["sparsity"] = report["spec"]["zeros"] / report["spec"]["weights"]
    result["file_bytes_dense"] = (Path(args.model) / "model.safetensors").stat().st_size
    result["file_bytes_pruned"] = (path / "model.safetensors").stat().st_size
    result["finetuned_vs_dense"] = round(result["finetuned_perplexity"] / result["dense_perplexity"] - 1, 4)
    return result


def structured(args, train: Path, held_out: Path, scratch: Path) -> dict:
    dense = LM.from_pretrained(args.model)
    result: dict = {"dense_perplexity": perplexity(dense, held_out)}
    models = {"dense": dense.model}
    for method, amount in (("heads", 0.25), ("neurons", 0.5)):
        lm, report = prune(LM.from_pretrained(args.model), method, amount=amount, data=train,
                           progress=False, log=lambda *a: None)
        before = perplexity(lm, held_out)
        spec = report["spec"]
        speed_model = lm.model
        lm, _ = prune(LM.from_pretrained(args.model), method, amount=amount, data=train, **finetune_args(args))
        result[method] = {"amount": amount, "sizes": spec.get("layer_heads") or spec.get("layer_intermediate"),
                          "parameters": [spec["parameters_before"], spec["parameters_after"]],
                          "pruned_perplexity": before, "finetuned_perplexity": perplexity(lm, held_out)}
        models[method] = speed_model
    speeds = scoring_speed(models)
    result["scoring_tokens_per_s"] = speeds
    for method in ("heads", "neurons"):
        result[method]["speedup"] = round(speeds[method] / speeds["dense"], 3)
    return result


def markdown(results: dict) -> str:
    lines = ["## Pruning the char-level Shakespeare GPT (benchmarks/prune_quality.py)", "",
             f"{machine()}. Held-out perplexity on the last 10% of tinyshakespeare (dense model: "
             f"{next(iter(results.values()))['dense_perplexity']}); fine-tunes: {results.get('steps')} steps, "
             "batch 12, on the first 90%.", ""]
    m = results.get("magnitude")
    if m:
        lines += ["| 50% global magnitude sparsity | perplexity |", "|---|---|",
                  f"| dense | {m['dense_perplexity']} |", f"| pruned, no fine-tune | {m['pruned_perplexity']} |",
                  f"| pruned + fine-tune | {m['finetuned_perplexity']} ({m['finetuned_vs_dense']:+.2%} vs dense) |",
                  "", f"model.safetensors: {m['file_bytes_dense']:,} bytes dense, {m['file_bytes_pruned']:,} "
                  "pruned (values + bitmask).", ""]
    s = results.get("structured")
    if s:
        lines += ["| removed | per-layer sizes | parameters | perplexity (pruned / + fine-tune) | scoring speed-up |",
                  "|---|---|---|---|---|"]
        for method in ("heads", "neurons"):
            r = s[method]
            lines.append(f"| {r['amount']:.0%} of the {'heads' if method == 'heads' else 'MLP neurons'} | "
                         f"{r['sizes']} | {r['parameters'][0]:,} -> {r['parameters'][1]:,} | "
                         f"{r['pruned_perplexity']} / {r['finetuned_perplexity']} | {r['speedup']:.2f}x |")
        lines += ["", f"Scoring tokens/s (batch 16 x 64, median of 7): {s['scoring_tokens_per_s']}."]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/shakespeare-char/final", help="the trained model directory")
    parser.add_argument("--part", choices=["magnitude", "structured"], required=True)
    parser.add_argument("--steps", type=int, default=300, help="fine-tuning steps after pruning")
    parser.add_argument("--lr", type=float, default=3e-4)
    args = parser.parse_args()
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    with tempfile.TemporaryDirectory() as scratch:
        train, held_out = split(Path(scratch))
        began = time.perf_counter()
        part = (magnitude if args.part == "magnitude" else structured)(args, train, held_out, Path(scratch))
    part["seconds"] = round(time.perf_counter() - began, 1)
    results[args.part], results["steps"] = part, args.steps
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(part, indent=2))
    write_section("prune_quality", markdown({k: v for k, v in results.items() if k != "steps"} | {"steps": args.steps}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
