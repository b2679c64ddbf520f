"""The training loop. It knows no model and no task: it calls task.train_batch, task.loss, task.evaluate."""
from __future__ import annotations

import contextlib
import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_model
from torch import nn

from ..config import TrainConfig
from .checkpoint import find_resumable, optimizer_from_tensors, read_checkpoint, save_checkpoint
from .distributed import Parallel, pick_device  # noqa: F401 - pick_device is part of this module's API
from .guard import DeferredGuard, Prefetcher, deferred_guard_usable
from .health import gradient_warnings, layer_grad_norms
from .kernels import onednn_linear
from .memory import checkpoint_blocks
from .metrics import MetricsLog
from .optim import learning_rate, make_optimizer
from .penalty import l1_parameters, l1_penalty
from .plots import plot_metrics
from ..progress import Progress

Export = Callable[[nn.Module, Path], None]
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


class TrainingDiverged(FloatingPointError, ValueError):
    """Loss or gradients stayed NaN/Inf (or the weights became so): the run stops, its last good checkpoint kept."""


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
    skipped_steps: int = 0
    rank: int = 0
    model: nn.Module | None = None  # a plain module with the final weights (None on FSDP ranks other than 0)


def _better(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value < best if mode == "min" else value > best)


def _clone_weights(state: dict) -> dict:
    return {k: v.detach().clone() for k, v in state.items()}


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _weights_finite(model: nn.Module, parallel: Parallel) -> bool:
    bad = any(not bool(torch.isfinite(p.to_local() if hasattr(p, "to_local") else p).all())
              for p in model.parameters())
    return not parallel.any(bad)


def train(model: nn.Module, task, cfg: TrainConfig, run: RunDir | None = None, *, resume: bool | Path = False,
          progress: bool = True, hooks: list[Callable[[int, dict], None]] = ()) -> TrainResult:
    """Train `model` on `task` for cfg.max_steps optimizer steps; checkpoint and log into `run`.

    With resume=True the newest good checkpoint in the run is restored (resume may also name a checkpoint)
    and training continues exactly as if it had not stopped (same batches, same RNG), so the losses match.
    Under torchrun (train.parallel ddp/fsdp) every rank calls this; rank 0 alone logs and writes files.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    parallel = Parallel(cfg.parallel, cfg.device)
    # FSDP's sharded weights and torch.compile's graphs keep torch's own linear
    fast = cfg.onednn_linear and parallel.device.type == "cpu" and cfg.parallel != "fsdp" and not cfg.compile
    try:
        if cfg.checkpoint_activations and cfg.parallel == "fsdp":
            raise ValueError("train.checkpoint_activations is not available with train.parallel=fsdp in this "
                             "version; use train.parallel=ddp or train.checkpoint_activations=false")
        with onednn_linear(model, fast), checkpoint_blocks(model, cfg.checkpoint_activations):
            return _train(model, task, cfg, run, resume, progress, hooks, parallel)
    finally:
        parallel.close()


def _train(model, task, cfg: TrainConfig, run: RunDir | None, resume, progress: bool, hooks, parallel: Parallel):
    device, main = parallel.device, parallel.main
    if device.type == "cuda":  # float32 matrix products on tensor cores (TF32, 10-bit mantissa), as nanoGPT does
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.seed + parallel.rank)  # each rank its own dropout stream; rank 0 as one process
    model.to(device)
    monitor, mode = getattr(task, "monitor", ("val_loss", "min"))
    state = {"best": None, "bad_evals": 0, "tokens": 0, "skipped_steps": 0}
    bar = Progress(cfg.max_steps, 0, enabled=progress and main)
    source = None
    if resume:
        if run is None:
            raise ValueError("resume needs a run directory")
        source = Path(resume) if isinstance(resume, (str, Path)) else find_resumable(run.checkpoints)
        if source is None:
            bar.note(f"no complete checkpoint in '{run.checkpoints}' yet: starting from step 0")
    start, tensors, best_weights = 0, None, None
    if source is not None:
        tensors, saved = read_checkpoint(source)  # verified: sizes and checksums
        load_model(model, str(source / "model.safetensors"), strict=True)
        start, optimizer_meta = saved.pop("step"), saved.pop("optimizer")
        state.update(saved)
        best_file = run.path / "best" / "model.safetensors"
        if cfg.patience and best_file.is_file():
            current = _clone_weights(model.state_dict())
            load_model(model, str(best_file))
            best_weights = _clone_weights(model.state_dict())
            model.load_state_dict(current)
    if hasattr(task, "grad_accum"):  # a task that numbers its rows by micro-step counts them over all ranks
        task.grad_accum = cfg.grad_accum * parallel.world
    # after the task made its head, so a new classifier is covered too (see penalty.py for which parameters)
    penalized = [p for _, p in l1_parameters(model)] if cfg.l1 else []
    if penalized and cfg.parallel == "fsdp":
        raise ValueError("train.l1 is not available with train.parallel=fsdp (the penalty needs whole weights); "
                         "use train.parallel=ddp or train.l1=0")

    def objective(module, batch):
        loss, extra = task.loss(module, batch)
        if not cfg.l1:
            return loss, extra
        # minimized with the loss; "loss" stays comparable to val_loss, the penalty is reported apart as l1_penalty
        penalty = cfg.l1 * l1_penalty(penalized)
        return loss + penalty, {**extra, "l1_penalty": penalty, "_loss": loss}

    parallel.wrap(model, objective)
    scaled = task.parameter_groups(model, cfg) if hasattr(task, "parameter_groups") else None
    optimizer = make_optimizer(model, cfg, scaled, fused=cfg.parallel != "fsdp")
    if source is not None:
        parallel.load_optimizer_state(optimizer, optimizer_from_tensors(tensors, optimizer_meta))
        parallel.load_rng_state(tensors)
    last_good = source
    autocast = (torch.autocast(device.type, dtype=DTYPES[cfg.dtype]) if cfg.dtype in DTYPES
                else contextlib.nullcontext())
    scaler = torch.amp.GradScaler(device.type) if cfg.dtype == "float16" else None
    params = [p for p in model.parameters() if p.requires_grad]
    frozen = sum(p.numel() for p in {id(p): p for p in model.parameters() if not p.requires_grad}.values())
    if frozen and main:  # LoRA and other partial fine-tuning: say how much of the model learns
        trainable = sum(p.numel() for p in {id(p): p for p in params}.values())
        bar.note(f"training {trainable:,} of {trainable + frozen:,} parameters ({trainable / (trainable + frozen):.2%}); "
                 "the rest are frozen")
    bar.start = start
    result = TrainResult(step=start, train_loss=None, best=state["best"], rank=parallel.rank)
    metrics = MetricsLog(run.path, start, cfg.tensorboard) if run is not None and main else None
    forward = _make_forward(task, parallel, cfg, bar)
    began, window_tokens, window_start = time.perf_counter(), 0, time.perf_counter()
    # sums over the good steps since the last log line (kept on the device: no sync per step beyond the guard)
    window_loss, window_extra, window_steps = torch.zeros((), device=device), {}, 0
    bad_in_a_row = 0
    guard = DeferredGuard() if deferred_guard_usable(cfg, device, optimizer, scaler) else None
    batches = Prefetcher(task, cfg, parallel.world, parallel.rank, device)

    def write(record: dict) -> None:  # metrics.jsonl and TensorBoard only: hooks see training and eval records
        if metrics is not None:
            metrics.log(record)

    def log(record: dict) -> None:
        write(record)
        for hook in hooks:
            hook(record["step"], record)

    def diverged(reason: str, step: int) -> TrainingDiverged:
        where = (f"the last good checkpoint is '{last_good}'; after changing the config continue with "
                 f"--resume {run.path}") if last_good is not None else "no checkpoint was written before it"
        return TrainingDiverged(f"training diverged: {reason} at step {step}; lower train.lr, raise "
                                f"train.warmup_steps or keep train.grad_clip on. {where}")

    def export(path: Path) -> None:
        module = parallel.export_module()  # collective under FSDP
        if main:
            run.export(module, path)

    def checkpoint(step: int) -> None:
        nonlocal last_good
        if not _weights_finite(model, parallel):  # a diverged model must never become "the last good checkpoint"
            raise diverged("the weights became NaN/Inf", step)
        if run is None:
            return
        module = parallel.export_module()
        optimizer_state = parallel.optimizer_state(optimizer)
        rng = parallel.rng_state()
        if main:
            save_checkpoint(run.checkpoints, step, lambda temp: run.export(module, temp), optimizer_state, rng,
                            {k: v for k, v in state.items()}, cfg.keep_last)
        last_good = run.checkpoints / f"step-{step}"
        parallel.barrier()

    def skipped(at: int, loss_ok: bool) -> None:  # a NaN/Inf step whose update was skipped: count, say, maybe stop
        nonlocal bad_in_a_row
        bad_in_a_row += 1
        state["skipped_steps"] += 1
        what = "loss" if not loss_ok else "gradient norm"
        write({"step": at, "skipped_step": 1, "skipped_steps": state["skipped_steps"]})
        bar.note(f"warning: step {at}: NaN/Inf {what}; update skipped "
                 f"({bad_in_a_row} in a row, {state['skipped_steps']} in all)")
        if bad_in_a_row >= cfg.max_bad_steps:
            raise diverged(f"{bad_in_a_row} steps in a row had NaN/Inf loss or gradients", at)

    def settle(steps: int, tokens: int) -> tuple[int, int]:  # the deferred guard's verdicts, in step order
        nonlocal bad_in_a_row
        for verdict in guard.resolve():
            if verdict.ok:
                bad_in_a_row, steps, tokens = 0, steps + 1, tokens + verdict.tokens
            else:
                skipped(verdict.step, verdict.loss_ok)
        return steps, tokens

    step = start
    try:
        model.train()
        while step < cfg.max_steps:
            lr = learning_rate(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            step_loss, step_extra, step_tokens = torch.zeros((), device=device), {}, 0
            for k in range(cfg.grad_accum):
                batch = batches.get(step, k)
                with parallel.sync(final=k == cfg.grad_accum - 1):
                    with autocast:
                        total, extra = forward(batch)
                    loss = extra.pop("_loss", total)
                    part = total / cfg.grad_accum
                    (scaler.scale(part) if scaler is not None else part).backward()
                step_loss += loss.detach().float() / cfg.grad_accum
                for key, value in extra.items():
                    step_extra[key] = step_extra.get(key, 0) + value.detach().float() / cfg.grad_accum
                step_tokens += task.count_tokens(batch)
            if scaler is not None:
                scaler.unscale_(optimizer)
            if cfg.grad_norms_every and (step + 1) % cfg.grad_norms_every == 0:
                norms = layer_grad_norms(model, parallel)
                write({"step": step + 1, **{f"grad_norm/{name}": value for name, value in norms.items()}})
                for warning in gradient_warnings(norms, cfg.grad_clip, step + 1):
                    bar.note("warning: " + warning)
            grad_norm = _local(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf))
            if guard is not None:  # decided on the device; warnings and the abort at the next boundary (guard.py)
                ok = guard.step(optimizer, step_loss, grad_norm, step + 1, step_tokens)
                window_loss += torch.where(ok, step_loss, 0.0)
                for key, value in step_extra.items():
                    window_extra[key] = window_extra.get(key, 0) + torch.where(ok, value, 0.0)
                loss_ok = grad_ok = True
            else:
                # the guard: one sync per step, agreed by all ranks, so a bad batch never reaches the weights
                loss_ok, grad_ok = torch.stack([step_loss, grad_norm.float().to(device)]).isfinite().tolist()
            bad = parallel.any(not (loss_ok and grad_ok))
            overflow = bad and scaler is not None and not parallel.any(not loss_ok)
            if guard is not None:
                pass
            elif not bad:
                bad_in_a_row = 0
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                window_loss += step_loss
                for key, value in step_extra.items():
                    window_extra[key] = window_extra.get(key, 0) + value
                window_steps += 1
                window_tokens += step_tokens
            elif overflow:  # float16 gradients overflowed: the scaler lowers its scale and skips, as designed
                scaler.update()
            else:
                skipped(step + 1, loss_ok)
            optimizer.zero_grad(set_to_none=True)
            step += 1
            last = step == cfg.max_steps
            if guard is not None and (last or step == start + 1 or any(
                    every and step % every == 0 for every in (cfg.log_every, cfg.eval_every, cfg.save_every))):
                window_steps, window_tokens = settle(window_steps, window_tokens)
            if (step % cfg.log_every == 0 or last or step == start + 1) and window_steps:
                keys = list(window_extra)
                totals = parallel.sum(torch.stack([window_loss, *[window_extra[k] for k in keys],
                                                   torch.tensor(float(window_tokens), device=device)]))
                totals = totals.tolist()
                now = time.perf_counter()  # after the read-back: the window's queued GPU work is done
                loss_value = totals[0] / window_steps / parallel.world
                extra = {k: v / window_steps / parallel.world for k, v in zip(keys, totals[1:-1])}
                tokens = int(totals[-1])
                speed = tokens / max(now - window_start, 1e-9)
                state["tokens"] += tokens
                window_tokens, window_start, window_steps, window_extra = 0, now, 0, {}
                window_loss = torch.zeros((), device=device)
                record = {"step": step, "loss": loss_value, "lr": lr, "grad_norm": float(grad_norm),
                          "tokens_per_s": speed, "elapsed": now - began, **extra}
                log(record)
                result.train_loss, result.tokens_per_s = loss_value, speed
                bar.total = cfg.max_steps  # a hook may re-fit max_steps mid-run (bench-arch's budget clock)
                bar.update(step, loss=loss_value, lr=lr, tokens_per_s=speed)
            paused = time.perf_counter()  # evaluation and saving do not count against tokens/s
            if cfg.eval_every and (step % cfg.eval_every == 0 or last) and task.can_evaluate:
                evaluation = parallel.evaluate(lambda m: task.evaluate(m, cfg.eval_steps, cfg.batch_size, device))
                model.train()
                result.eval = evaluation
                log({"step": step, **evaluation})
                value = evaluation[monitor]
                if _better(value, state["best"], mode):
                    state["best"], state["bad_evals"] = value, 0
                    if cfg.patience:
                        best_weights = _clone_weights(parallel.model_state())
                        if run is not None:
                            export(run.path / "best")
                else:
                    state["bad_evals"] += 1
                bar.note("  eval @ step {}: {}".format(step, ", ".join(f"{k} {v:.4g}" for k, v in evaluation.items())))
                stop = bool(cfg.patience and state["bad_evals"] >= cfg.patience and not last)
                if parallel.any(stop):  # every rank stops at the same step
                    bar.note(f"  early stop: {monitor} has not improved for {cfg.patience} evaluations "
                             f"(best {state['best']:.4g})")
                    result.stopped_early = True
                    break
            if cfg.save_every and step % cfg.save_every == 0 and not last:
                if bad_in_a_row:  # weights that just gave NaN/Inf are no checkpoint to come back to
                    bar.note(f"warning: no checkpoint at step {step}: its step was skipped as NaN/Inf")
                else:
                    checkpoint(step)
            window_start += time.perf_counter() - paused
        if guard is not None:
            window_steps, window_tokens = settle(window_steps, window_tokens)
        if bad_in_a_row and not result.stopped_early:
            raise diverged(f"the last {bad_in_a_row} step(s) had NaN/Inf loss or gradients", step)
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
        if metrics is not None:
            metrics.close()
    if best_weights is not None and cfg.patience and not result.interrupted:
        parallel.load_model_state(best_weights)
    result.step, result.best, result.skipped_steps = step, state["best"], state["skipped_steps"]
    result.seconds = time.perf_counter() - began
    result.model = parallel.export_module() if cfg.parallel == "fsdp" else model
    if run is not None and not result.interrupted:
        if main:
            run.export(result.model, run.path / "final")
            plot_metrics(run.metrics)
        result.final_dir = run.path / "final"
    if not main and cfg.parallel == "fsdp":
        result.model = None
    return result


def _make_forward(task, parallel: Parallel, cfg: TrainConfig, bar: Progress):
    """The micro-step's (loss, metrics); with train.compile through torch.compile, falling back plainly.
    Compiled is the whole objective, the model's forward and the task's loss in one graph (the compiler fuses
    the loss's float32 upcast into its kernels, so the task keeps the plain loss there; see tasks/lm.py)."""
    compiled = None
    if cfg.compile:
        if parallel.mode == "fsdp":
            bar.note("train.compile: not applied with train.parallel=fsdp in this version; training runs eagerly")
        elif parallel.engine is not None:
            compiled = torch.compile(parallel.engine)
        else:
            compiled = torch.compile(functools.partial(parallel.loss_fn, parallel.model))

    def forward(batch: dict):
        nonlocal compiled
        if compiled is not None:
            try:
                return compiled(batch)
            except Exception as error:  # noqa: BLE001 - any compiler failure (no C++ compiler, an unsupported op)
                compiled = None
                reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
                bar.note(f"train.compile: torch.compile failed ({type(error).__name__}: {reason}); "
                         "training continues without it")
        return parallel.loss(batch)

    return forward
