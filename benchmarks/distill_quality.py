"""Quality bar of distillation: a student with ~1/4 of the teacher's parameters, distilled from the teacher,
against the same student (same initial weights, same batches, same steps) trained alone.

Teacher: the char-level Tiny Shakespeare GPT of configs/shakespeare-char.toml (4 layers x 128, ~0.8M parameters),
trained beforehand (`lmforge train configs/shakespeare-char.toml`, its final/ is --teacher). Student: the same
recipe at 4 layers x 64 (~0.2M parameters). Every model is scored on the whole validation split (the last 10% of
input.txt, each token once in windows of block_size), not on sampled batches. One seed per command; --summary
prints the table and ratios of the runs appended to --results and writes benchmarks/RESULTS.md's section.

    python benchmarks/distill_quality.py --teacher runs/shakespeare-char/final --seed 1 --results /tmp/distill.jsonl
    python benchmarks/distill_quality.py --teacher runs/shakespeare-char/final --summary /tmp/distill.jsonl
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, shared_file  # noqa: E402

from lmforge.api import LM  # noqa: E402

from lmforge.app.training import train_from_config
from lmforge.config import load_config  # noqa: E402
from lmforge.data.tokens import TokenWindows, build_token_file, open_tokens  # noqa: E402
from lmforge.infer.score import score_tokens  # noqa: E402
from lmforge.models import count_parameters  # noqa: E402

RECIPE = ROOT / "configs" / "shakespeare-char.toml"


def val_tokens(lm: LM, text: Path, scratch: Path) -> np.ndarray:
    """The validation split lmforge trains against (the last val_fraction of the tokens), as an array."""
    tokens = open_tokens(build_token_file([str(text)], lm.tokenizer, scratch))
    start, end = TokenWindows(tokens, lm.config.model.block_size, 0.1).splits["val"]
    return np.asarray(tokens[start:end])


def run(args, mode: str, text: Path) -> dict:
    """Train the student alone or distilled for args.steps; its loss over the whole validation split."""
    with tempfile.TemporaryDirectory(prefix="distill-bench-") as scratch:
        overrides = [f"data.paths={json.dumps([str(text)])}", f"model.n_layer={args.layers}",
                     f"model.n_embd={args.embd}", f"model.n_head={args.heads}", f"train.seed={args.seed}",
                     f"train.max_steps={args.steps}", "train.eval_every=0", "train.save_every=0",
                     "train.tensorboard=false", f"run.dir={json.dumps(str(Path(scratch) / 'run'))}",
                     # the teacher's tokenizer for both students, so their initial weights and batches match
                     f"tokenizer.path={json.dumps(str(Path(args.teacher) / 'tokenizer.json'))}"]
        if mode == "distill":
            overrides += [f"train.distill_teacher={json.dumps(str(args.teacher))}",
                          f"train.distill_temperature={args.temperature}", f"train.distill_alpha={args.alpha}"]
        began = time.perf_counter()
        lm, result = train_from_config(load_config(RECIPE, overrides), progress=False)
        seconds = time.perf_counter() - began
        val = score_tokens(lm.model, val_tokens(lm, text, Path(scratch) / "val"), batch_size=64)
    record = {"mode": mode, "seed": args.seed, "steps": args.steps, "layers": args.layers, "embd": args.embd,
              "parameters": count_parameters(lm.model), "val_loss": val["loss"], "seconds": seconds,
              "train_loss": result.train_loss}
    if mode == "distill":
        record.update(temperature=args.temperature, alpha=args.alpha)
    print(json.dumps(record), flush=True)
    return record


def summary(args, text: Path) -> None:
    """The table of all recorded runs, the teacher's score beside them, and distilled / alone ratios."""
    records = [json.loads(line) for line in Path(args.summary).read_text().splitlines() if line.strip()]
    teacher = LM.from_pretrained(args.teacher)
    with tempfile.TemporaryDirectory(prefix="distill-bench-") as scratch:
        teacher_val = score_tokens(teacher.model, val_tokens(teacher, text, Path(scratch)), batch_size=64)["loss"]
    teacher_params = count_parameters(teacher.model)
    groups: dict[tuple, list] = {}
    for r in records:
        key = (r["mode"], r["layers"], r["embd"], r["steps"], r.get("temperature"), r.get("alpha"))
        groups.setdefault(key, []).append(r)
    lines = [f"Char-level Tiny Shakespeare (input.txt; validation = its last 10%, every token scored once). "
             f"Teacher: {teacher_params:,} parameters, val loss {teacher_val:.4f}.", "",
             "| student | parameters (x teacher) | steps | T | alpha | seeds | val loss (mean) | per seed | s/run |",
             "|---|---|---|---|---|---|---|---|---|"]
    alone = {}
    for (mode, layers, embd, steps, temperature, alpha), rows in sorted(groups.items(), key=str):
        rows.sort(key=lambda r: r["seed"])
        mean = statistics.mean(r["val_loss"] for r in rows)
        if mode == "alone":
            alone[(layers, embd, steps)] = {r["seed"]: r["val_loss"] for r in rows}
        lines.append(f"| {mode} {layers}x{embd} | {rows[0]['parameters']:,} ({rows[0]['parameters'] / teacher_params:.2f}) "
                     f"| {steps} | {temperature if temperature is not None else '-'} | "
                     f"{alpha if alpha is not None else '-'} | {', '.join(str(r['seed']) for r in rows)} | "
                     f"{mean:.4f} | {', '.join(format(r['val_loss'], '.4f') for r in rows)} | "
                     f"{statistics.mean(r['seconds'] for r in rows):.0f} |")
    lines.append("")
    for (mode, layers, embd, steps, temperature, alpha), rows in sorted(groups.items(), key=str):
        base = alone.get((layers, embd, steps), {})
        paired = [(r["val_loss"], base[r["seed"]]) for r in rows if mode == "distill" and r["seed"] in base]
        if paired:
            gains = [b - d for d, b in paired]
            lines.append(f"- distilled (T={temperature}, alpha={alpha}) minus alone, same seeds: val loss "
                         f"{-statistics.mean(gains):+.4f} on average ({sum(g > 0 for g in gains)} of {len(gains)} "
                         f"seeds better); the gap to the teacher closes by "
                         f"{statistics.mean(gains) / (statistics.mean(b for _, b in paired) - teacher_val):.0%}")
    text_out = "\n".join(lines)
    print(text_out)
    from results import machine, write_section
    write_section("distill_quality", f"## Distillation (benchmarks/distill_quality.py)\n\n{machine()}\n\n{text_out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="the trained teacher's model directory")
    parser.add_argument("--mode", choices=["alone", "distill", "both"], default="both")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2000, help="the teacher recipe's own 2000 by default")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--embd", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--results", default="distill_quality.jsonl", help="JSON lines, one per run, appended")
    parser.add_argument("--summary", metavar="RESULTS", help="print the table of RESULTS instead of training")
    args = parser.parse_args()
    text = shared_file("tinyshakespeare", "input.txt")
    if not (Path(args.teacher) / "config.json").is_file():
        sys.exit(f"--teacher '{args.teacher}' is not a model directory; train one first: "
                 "lmforge train configs/shakespeare-char.toml (its final/)")
    if args.summary:
        summary(args, text)
        return
    for mode in (["alone", "distill"] if args.mode == "both" else [args.mode]):
        record = run(args, mode, text)
        with open(args.results, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
