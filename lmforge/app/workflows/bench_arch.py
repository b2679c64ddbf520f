"""`lmforge bench-arch`: train several architectures on the same data for the same wall-clock budget, one after
another, then one table (parameters, tokens/s, best validation loss) and one PNG of validation loss against time.

A few timed steps of each model give a first step count; during the run a budget clock re-fits train.max_steps
(and with it the learning-rate schedule) to the speed measured so far, so every run trains for its whole budget
and ends its schedule when the time is up; evaluation time is not counted. Each finished arch leaves
<run-dir>/<arch>/bench.json, and a later call with the same data, budget and settings reuses it instead of
training again (so a long comparison can be run one arch per call).
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from ...config import apply_overrides, build_config
from ...figures import pyplot
from ...models import ARCHS, DECODER, archs_of, count_parameters

# every decoder of the registry, at about one million parameters for a character vocabulary; the learning rates
# are the recipes' (gated recurrent cells take a higher one)
MODELS = {arch: {"arch": arch, **({"n_layer": 4, "n_head": 4, "n_embd": 128} if ARCHS[arch].transformer
                                  else {"n_layer": 2, "n_embd": 256})} for arch in archs_of(DECODER)}
LEARNING_RATES = {arch: 3e-3 if arch in ("lstm", "gru") else 1e-3 for arch in MODELS}
CALIBRATION_STEPS = 20


def arch_config(arch: str, data: str, block_size: int, batch_size: int, run_dir: Path, overrides: list[str]):
    """The full config of one arch's run: its model, the shared data and training settings, then `overrides`
    (plain 'section.key=value' for every arch, 'arch:section.key=value' for one)."""
    if arch not in MODELS:
        raise ValueError(f"bench-arch: unknown arch '{arch}' in --archs; choose from {', '.join(MODELS)}")
    lr = LEARNING_RATES[arch]
    raw = {"model": {**MODELS[arch], "block_size": block_size, "dropout": 0.0},
           "tokenizer": {"kind": "char"}, "data": {"paths": [data], "val_fraction": 0.1},
           "train": {"batch_size": batch_size, "lr": lr, "min_lr": lr / 10, "warmup_steps": 50, "weight_decay": 0.01,
                     "grad_clip": 1.0, "eval_steps": 20, "save_every": 0, "log_every": 1, "seed": 1337},
           "run": {"dir": str(run_dir / arch)}}
    mine = []
    for item in overrides:
        target, _, setting = item.rpartition(":")
        if target and target not in MODELS:
            raise ValueError(f"bench-arch: --set '{item}' names arch '{target}'; known: {', '.join(MODELS)}")
        if not target or target == arch:
            mine.append(setting)
    return build_config(apply_overrides(raw, mine), f"bench-arch {arch}")


def _seconds_per_step(config) -> float:
    """Time a few training steps of a throwaway copy of the model (the first two are warm-up)."""
    import tempfile

    from ..facade import LM

    marks = []
    calibration = config.model_copy(update={"train": config.train.model_copy(update={
        "max_steps": CALIBRATION_STEPS, "eval_every": 0, "warmup_steps": 1})})
    with tempfile.TemporaryDirectory(prefix="lmforge-calibrate-") as scratch:
        lm = LM.from_config(calibration)
        lm.fit(run_dir=Path(scratch), progress=False, hooks=[lambda step, record: marks.append(time.perf_counter())])
    intervals = sorted(b - a for a, b in zip(marks[2:], marks[3:]))  # the first steps warm up
    return intervals[len(intervals) // 2]  # the median: one slow step (another process) does not skew it


class BudgetClock:
    """A trainer hook that counts training time (evaluation excluded) and, after every step, re-fits the run's
    train.max_steps to the steps that still fit in `budget_s` at the mean step time so far. The trainer reads
    max_steps and eval_every afresh each step, so the cosine schedule stretches or shrinks to end on time."""

    EVALUATIONS = 12  # about this many points on each curve

    def __init__(self, train_cfg, budget_s: float):
        self.cfg, self.budget = train_cfg, budget_s
        self.train_seconds, self.mark, self.first_step, self.ending = 0.0, None, None, False
        self.curve: list[tuple[float, float, int]] = []
        self.planned_for = train_cfg.max_steps  # the step count eval_every was last set for

    def __call__(self, step: int, record: dict) -> None:
        now = time.perf_counter()
        if "lr" in record:  # a training step: count the time since the last mark
            if self.mark is None:
                self.first_step = step  # step 1 opens the clock; its own time (start-up) is not counted
            else:
                self.train_seconds += now - self.mark
            self.mark = now
            self._refit(step)
        elif "val_loss" in record:  # an evaluation just ran: its time is not training time
            self.mark = now
            self.curve.append((self.train_seconds, record["val_loss"], step))

    def _refit(self, step: int) -> None:
        done = step - self.first_step
        # a step at max_steps is already the trainer's last (its final evaluation follows): never extend it
        if self.ending or done < 3 or step >= self.cfg.max_steps:
            return
        per_step = self.train_seconds / done
        left = int((self.budget - self.train_seconds) / per_step)
        if left <= 0:  # time is up: one more step, the last, so the run ends with its final evaluation
            self.ending = True
        target = step + max(1, left)
        if target != self.cfg.max_steps:
            self.cfg.max_steps = target
        if abs(target - self.planned_for) > 0.2 * self.planned_for:  # keep about EVALUATIONS points per curve
            self.cfg.eval_every = max(1, target // self.EVALUATIONS)
            self.planned_for = target


def run_arch(config, minutes: float, progress: bool = True) -> dict:
    """Train one arch for `minutes` of training time; its curve (seconds, val loss), speed and best loss."""
    from ..facade import LM

    per_step = _seconds_per_step(config)
    steps = max(10, int(minutes * 60 / per_step))
    train_cfg = config.train.model_copy(update={"max_steps": steps,
                                                "eval_every": max(1, steps // BudgetClock.EVALUATIONS)})
    config = config.model_copy(update={"train": train_cfg})
    lm = LM.from_config(config)
    clock = None

    def hook(step: int, record: dict) -> None:
        nonlocal clock
        if clock is None:  # fit() builds the TrainConfig the trainer reads: the clock steers that one
            clock = BudgetClock(lm.config.train, minutes * 60)
        clock(step, record)

    result = lm.fit(run_dir=config.run.path, progress=progress, hooks=[hook])
    tokens = (result.step - clock.first_step) * train_cfg.batch_size * config.model.block_size
    return {"arch": config.model.arch, "parameters": count_parameters(lm.model), "steps": result.step,
            "train_seconds": clock.train_seconds, "budget_seconds": minutes * 60,
            "tokens_per_s": tokens / max(clock.train_seconds, 1e-9),
            "best_val_loss": min(loss for _, loss, _ in clock.curve), "final_val_loss": clock.curve[-1][1],
            "curve": clock.curve, "calibrated_seconds_per_step": per_step}


def bench_arch(data: str, minutes: float, archs: list[str], out: Path, run_dir: Path, block_size: int = 64,
               batch_size: int = 32, overrides: list[str] = (), progress: bool = True) -> list[dict]:
    """Run (or reuse) each arch in turn, then write the table (printed and out.json) and the PNG `out`."""
    if minutes <= 0:
        raise ValueError(f"bench-arch: --minutes must be > 0, got {minutes}")
    if not archs:
        raise ValueError("bench-arch: --archs is empty; give a comma-separated list such as lstm,gpt,llama")
    if not Path(data).exists():
        raise FileNotFoundError(f"bench-arch: --data '{data}' does not exist")
    configs = [arch_config(arch, data, block_size, batch_size, run_dir, list(overrides)) for arch in archs]
    results = []
    for config in configs:
        arch = config.model.arch
        record_path = config.run.path / "bench.json"
        settings = {"data": str(Path(data).resolve()), "minutes": minutes, "model": config.model.model_dump(),
                    "train": config.train.model_dump(exclude={"max_steps", "eval_every"})}
        if record_path.is_file():
            saved = json.loads(record_path.read_text())
            if saved.get("settings") == settings:
                print(f"{arch}: reusing {record_path} (delete it to measure again)", file=sys.stderr)
                results.append(saved)
                continue
            raise FileExistsError(f"bench-arch: {config.run.path} holds a run with other settings; "
                                  "delete it or pass another --run-dir")
        if config.run.path.exists():  # an unfinished earlier attempt: start it over
            import shutil
            shutil.rmtree(config.run.path)
        print(f"\n=== {arch}: {minutes:g} minutes of training ===", file=sys.stderr, flush=True)
        result = {**run_arch(config, minutes, progress), "settings": settings}
        record_path.write_text(json.dumps(result, indent=1))
        results.append(result)
    print(format_table(results))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    plot_curves(results, out, minutes)
    print(f"curves: {out}; numbers: {out.with_suffix('.json')}")
    return results


def format_table(results: list[dict]) -> str:
    """A markdown table, one row per arch."""
    lines = ["| arch | parameters | steps | training s | tokens/s | best val loss | final val loss |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['arch']} | {r['parameters']:,} | {r['steps']} | {r['train_seconds']:.0f} | "
                     f"{r['tokens_per_s']:,.0f} | {r['best_val_loss']:.4f} | {r['final_val_loss']:.4f} |")
    return "\n".join(lines)


def plot_curves(results: list[dict], out: Path, minutes: float) -> Path:
    """Validation loss against training minutes, one line per arch."""
    plt = pyplot()

    figure, axis = plt.subplots(figsize=(7, 4.2), dpi=110)
    for r in results:
        seconds, losses = zip(*[(t, loss) for t, loss, _ in r["curve"]])
        axis.plot([s / 60 for s in seconds], losses, "o-", markersize=3, linewidth=1.5,
                  label=f"{r['arch']} ({r['parameters'] / 1e6:.2f}M params, best {r['best_val_loss']:.3f})")
    axis.set_xlabel("training time (minutes; evaluation not counted)")
    axis.set_ylabel("validation loss (nats/token)")
    axis.set_title(f"equal budget: {minutes:g} minutes each")
    finite = [loss for r in results for _, loss, _ in r["curve"] if math.isfinite(loss)]
    if finite:  # the first evaluations are far above the rest: keep the interesting part readable
        axis.set_ylim(min(finite) - 0.05, min(max(finite), sorted(finite)[len(finite) // 2] + 1.0))
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    temp = out.with_name(f".{out.name}.tmp.png")
    figure.savefig(temp)
    plt.close(figure)
    temp.replace(out)
    return out
