"""The training loop. It knows no model and no task: it calls task.train_batch, task.loss, task.evaluate."""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_model
from torch import nn

from ..config import TrainConfig
from .checkpoint import list_checkpoints, load_checkpoint, save_checkpoint, truncate_metrics
from .optim import learning_rate, make_optimizer
from .penalty import l1_parameters, l1_penalty
from .plots import plot_metrics
from .progress import Progress

Export = Callable[[nn.Module, Path], None]


@dataclass
class RunDir:
    """Where a run writes: metrics.jsonl, checkpoints/step-N/, best/ and final/ (model directories)."""

    path: Path
    export: Export  # writes a model directory (weights, config, tokenizer, card) for a model

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"


@dataclass
class TrainResult:
    step: int
    train_loss: float | None
    eval: dict[str, float] = field(default_factory=dict)
    best: float | None = None
    stopped_early: bool = False
    interrupted: bool = False
    seconds: float = 0.0
    tokens_per_s: float = 0.0
    final_dir: Path | None = None


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"train.device '{name}' is not a device name (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device is '{name}' but no CUDA GPU is available; use train.device=cpu")
    return device


def _to(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def _better(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value < best if mode == "min" else value > best)


def train(model: nn.Module, task, cfg: TrainConfig, run: RunDir | None = None, *, resume: bool = False,
          progress: bool = True, hooks: list[Callable[[int, dict], None]] = ()) -> TrainResult:
    """Train `model` on `task` for cfg.max_steps optimizer steps; checkpoint and log into `run`.

    With resume=True the newest complete checkpoint in the run is restored and training continues
    exactly as if it had not stopped (same batches, same RNG), so the losses match.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    model.to(device)
    scaled = task.parameter_groups(model, cfg) if hasattr(task, "parameter_groups") else None
    optimizer = make_optimizer(model, cfg, scaled)
    monitor, mode = getattr(task, "monitor", ("val_loss", "min"))
    state = {"best": None, "bad_evals": 0, "tokens": 0}
    start = 0
    best_weights: dict | None = None
    if resume:
        if run is None:
            raise ValueError("resume needs a run directory")
        found = list_checkpoints(run.checkpoints)
        if not found:
            raise FileNotFoundError(f"nothing to resume: '{run.checkpoints}' holds no complete checkpoint")
        state.update(load_checkpoint(found[-1], model, optimizer))
        start = state.pop("step")
        truncate_metrics(run.metrics, start)
        best_file = run.path / "best" / "model.safetensors"
        if cfg.patience and best_file.is_file():
            current = _clone_weights(model)
            load_model(model, str(best_file))
            best_weights = _clone_weights(model)
            model.load_state_dict(current)
    if run is not None:
        run.path.mkdir(parents=True, exist_ok=True)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if cfg.dtype == "bfloat16"
                else contextlib.nullcontext())
    params = [p for p in model.parameters() if p.requires_grad]
    # after the task made its head, so a new classifier is covered too (see penalty.py for which parameters)
    penalized = [p for _, p in l1_parameters(model)] if cfg.l1 else []
    bar = Progress(cfg.max_steps, start, enabled=progress)
    result = TrainResult(step=start, train_loss=None, best=state["best"])
    began, window_tokens, window_start = time.perf_counter(), 0, time.perf_counter()
    # sums over the steps since the last log line (kept on the device: no sync per step)
    window_loss, window_extra, window_steps = torch.zeros((), device=device), {}, 0
    metrics_file = open(run.metrics, "a", encoding="utf-8") if run is not None else None

    def log(record: dict) -> None:
        if metrics_file is not None:
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()

    def checkpoint(step: int) -> None:
        if run is not None:
            save_checkpoint(run.checkpoints, step, model, optimizer, state, run.export, cfg.keep_last)

    step = start
    try:
        model.train()
        while step < cfg.max_steps:
            lr = learning_rate(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            for micro in range(cfg.grad_accum):
                batch = _to(task.train_batch(step, micro, cfg.batch_size), device)
                with autocast:
                    loss, metrics = task.loss(model, batch)
                objective = loss
                if cfg.l1:
                    # minimized with the loss; logged apart as l1_penalty, so "loss" stays comparable to val_loss
                    penalty = cfg.l1 * l1_penalty(penalized)
                    objective = loss + penalty
                    metrics = {**metrics, "l1_penalty": penalty}
                (objective / cfg.grad_accum).backward()
                window_loss += loss.detach() / cfg.grad_accum
                for key, value in metrics.items():
                    window_extra[key] = window_extra.get(key, 0) + value.detach() / cfg.grad_accum
                window_tokens += task.count_tokens(batch)
            window_steps += 1
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            last = step == cfg.max_steps
            if step % cfg.log_every == 0 or last or step == start + 1:
                now = time.perf_counter()
                speed = window_tokens / max(now - window_start, 1e-9)
                state["tokens"] += window_tokens
                loss_value = window_loss.item() / window_steps
                extra = {k: float(v) / window_steps for k, v in window_extra.items()}
                window_tokens, window_start, window_steps, window_extra = 0, now, 0, {}
                window_loss.zero_()
                if not math.isfinite(loss_value):
                    raise FloatingPointError(f"training loss became {loss_value} at step {step}; "
                                             "lower train.lr, raise train.warmup_steps or keep train.grad_clip on")
                record = {"step": step, "loss": loss_value, "lr": lr, "grad_norm": float(grad_norm),
                          "tokens_per_s": speed, "elapsed": now - began,
                          **extra}
                log(record)
                result.train_loss, result.tokens_per_s = loss_value, speed
                bar.update(step, loss=loss_value, lr=lr, tokens_per_s=speed)
                for hook in hooks:
                    hook(step, record)
            paused = time.perf_counter()  # evaluation and saving do not count against tokens/s
            if cfg.eval_every and (step % cfg.eval_every == 0 or last) and task.can_evaluate:
                evaluation = task.evaluate(model, cfg.eval_steps, cfg.batch_size, device)
                model.train()
                result.eval = evaluation
                log({"step": step, **evaluation})
                for hook in hooks:
                    hook(step, {"step": step, **evaluation})
                value = evaluation[monitor]
                if _better(value, state["best"], mode):
                    state["best"], state["bad_evals"] = value, 0
                    if cfg.patience:
                        best_weights = _clone_weights(model)
                        if run is not None:
                            run.export(model, run.path / "best")
                else:
                    state["bad_evals"] += 1
                bar.note("  eval @ step {}: {}".format(step, ", ".join(f"{k} {v:.4g}" for k, v in evaluation.items())))
                if cfg.patience and state["bad_evals"] >= cfg.patience and not last:
                    bar.note(f"  early stop: {monitor} has not improved for {cfg.patience} evaluations "
                             f"(best {state['best']:.4g})")
                    result.stopped_early = True
                    break
            if cfg.save_every and step % cfg.save_every == 0 and not last:
                checkpoint(step)
            window_start += time.perf_counter() - paused
        if step > start:
            checkpoint(step)
    except KeyboardInterrupt:
        bar.close()
        checkpoint(step)
        result.interrupted = True
        if run is not None:
            bar.note(f"interrupted at step {step}; checkpoint saved; continue with --resume {run.path}")
    finally:
        bar.close()
        if metrics_file is not None:
            metrics_file.close()
    if best_weights is not None and cfg.patience and not result.interrupted:
        model.load_state_dict(best_weights)
    result.step, result.best = step, state["best"]
    result.seconds = time.perf_counter() - began
    if run is not None and not result.interrupted:
        run.export(model, run.path / "final")
        result.final_dir = run.path / "final"
        plot_metrics(run.metrics)
    return result


def _clone_weights(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}

