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
from ..errors import first_line
from .average import WeightAverage
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
    """Every weight finite on every rank (one read-back from the device, not one per tensor)."""
    flags = [torch.isfinite(p.to_local() if hasattr(p, "to_local") else p).all() for p in model.parameters()]
    bad = bool(flags) and not bool(torch.stack(flags).all())
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
    loop = _Loop(model, task, cfg, run, progress, hooks, parallel)
    loop.build(*loop.restore(resume))
    return loop.run_steps()


def _objective(task, cfg: TrainConfig, penalized: list):
    """The micro-step's (loss, metrics): the task's loss, plus train.l1's penalty over `penalized` when set."""

    def objective(module, batch):
        loss, extra = task.loss(module, batch)
        if not cfg.l1:
            return loss, extra
        # minimized with the loss; "loss" stays comparable to val_loss, the penalty is reported apart as l1_penalty
        penalty = cfg.l1 * l1_penalty(penalized)
        return loss + penalty, {**extra, "l1_penalty": penalty, "_loss": loss}

    return objective


class _Loop:
    """One run's state and its parts: set-up and restore, one optimizer step, logging, evaluation with early
    stopping, checkpoints and the end. The hot path keeps its sums on the device and reads them back only at
    log steps (and once a step for the per-step NaN guard)."""

    def __init__(self, model, task, cfg: TrainConfig, run: RunDir | None, progress: bool, hooks, parallel: Parallel):
        self.model, self.task, self.cfg, self.run, self.hooks, self.parallel = model, task, cfg, run, hooks, parallel
        self.device, self.main = parallel.device, parallel.main
        if self.device.type == "cuda":  # float32 matrix products on tensor cores (TF32, 10-bit mantissa), as nanoGPT
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.manual_seed(cfg.seed + parallel.rank)  # each rank its own dropout stream; rank 0 as one process
        model.to(self.device)
        self.monitor, self.mode = getattr(task, "monitor", ("val_loss", "min"))
        self.state = {"best": None, "bad_evals": 0, "tokens": 0, "skipped_steps": 0}
        self.bar = Progress(cfg.max_steps, 0, enabled=progress and self.main)
        self.start, self.best_weights, self.last_good, self.bad_in_a_row = 0, None, None, 0

    def restore(self, resume) -> tuple[dict | None, dict | None]:
        """With `resume`, load the newest good checkpoint (or the one named): weights, step, counters, best weights.
        Returns the checkpoint's tensors and optimizer description for build (None, None when starting afresh)."""
        run, source = self.run, None
        if resume:
            if run is None:
                raise ValueError("resume needs a run directory")
            source = Path(resume) if isinstance(resume, (str, Path)) else find_resumable(run.checkpoints)
            if source is None:
                self.bar.note(f"no complete checkpoint in '{run.checkpoints}' yet: starting from step 0")
        self.last_good = source
        if source is None:
            return None, None
        tensors, saved = read_checkpoint(source)  # verified: sizes and checksums
        load_model(self.model, str(source / "model.safetensors"), strict=True)
        self.start, optimizer_meta = saved.pop("step"), saved.pop("optimizer")
        self.state.update(saved)
        best_file = run.path / "best" / "model.safetensors"
        if self.cfg.patience and best_file.is_file():
            current = _clone_weights(self.model.state_dict())
            load_model(self.model, str(best_file))
            self.best_weights = _clone_weights(self.model.state_dict())
            self.model.load_state_dict(current)
        return tensors, optimizer_meta

    def build(self, tensors: dict | None, optimizer_meta: dict | None) -> None:
        """Wrap the model for the parallel mode, make the optimizer (restored from `tensors` when resuming), the
        autocast and scaler, the metrics log, the forward (compiled or not), the NaN guard and the batch source."""
        model, task, cfg, parallel, device = self.model, self.task, self.cfg, self.parallel, self.device
        if hasattr(task, "grad_accum"):  # a task that numbers its rows by micro-step counts them over all ranks
            task.grad_accum = cfg.grad_accum * parallel.world
        # after the task made its head, so a new classifier is covered too (see penalty.py for which parameters)
        penalized = [p for _, p in l1_parameters(model)] if cfg.l1 else []
        if penalized and cfg.parallel == "fsdp":
            raise ValueError("train.l1 is not available with train.parallel=fsdp (the penalty needs whole weights); "
                             "use train.parallel=ddp or train.l1=0")
        parallel.wrap(model, _objective(task, cfg, penalized))
        scaled = task.parameter_groups(model, cfg) if hasattr(task, "parameter_groups") else None
        self.optimizer = make_optimizer(model, cfg, scaled, fused=cfg.parallel != "fsdp")
        if tensors is not None:
            parallel.load_optimizer_state(self.optimizer, optimizer_from_tensors(tensors, optimizer_meta))
            parallel.load_rng_state(tensors)
        self.autocast = (torch.autocast(device.type, dtype=DTYPES[cfg.dtype]) if cfg.dtype in DTYPES
                         else contextlib.nullcontext())
        self.scaler = torch.amp.GradScaler(device.type) if cfg.dtype == "float16" else None
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.average = WeightAverage(model, cfg.ema) if cfg.ema else None  # train.ema
        if self.average is not None and tensors is not None:
            self.average.load_tensors(tensors)
        self._note_frozen()
        self.bar.start = self.start
        self.result = TrainResult(step=self.start, train_loss=None, best=self.state["best"], rank=parallel.rank)
        self.metrics = MetricsLog(self.run.path, self.start, cfg.tensorboard) if self.run is not None and self.main \
            else None
        self.forward = _make_forward(task, parallel, cfg, self.bar)
        self.began, self.window_tokens, self.window_start = time.perf_counter(), 0, time.perf_counter()
        # sums over the good steps since the last log line (kept on the device: no sync per step beyond the guard)
        self.window_loss, self.window_extra, self.window_steps = torch.zeros((), device=device), {}, 0
        self.guard = DeferredGuard() if deferred_guard_usable(cfg, device, self.optimizer, self.scaler) else None
        self.batches = Prefetcher(task, cfg, parallel.world, parallel.rank, device)

    def _note_frozen(self) -> None:
        """LoRA and other partial fine-tuning: say how much of the model learns."""
        frozen = sum(p.numel() for p in {id(p): p for p in self.model.parameters() if not p.requires_grad}.values())
        if frozen and self.main:
            trainable = sum(p.numel() for p in {id(p): p for p in self.params}.values())
            self.bar.note(f"training {trainable:,} of {trainable + frozen:,} parameters "
                          f"({trainable / (trainable + frozen):.2%}); the rest are frozen")

    def write(self, record: dict) -> None:
        """metrics.jsonl and TensorBoard only: hooks see training and eval records."""
        if self.metrics is not None:
            self.metrics.log(record)

    def log(self, record: dict) -> None:
        self.write(record)
        for hook in self.hooks:
            hook(record["step"], record)

    def diverged(self, reason: str, step: int) -> TrainingDiverged:
        where = (f"the last good checkpoint is '{self.last_good}'; after changing the config continue with "
                 f"--resume {self.run.path}") if self.last_good is not None else "no checkpoint was written before it"
        return TrainingDiverged(f"training diverged: {reason} at step {step}; lower train.lr, raise "
                                f"train.warmup_steps or keep train.grad_clip on. {where}")

    def export(self, path: Path) -> None:
        module = self.parallel.export_module()  # collective under FSDP
        if self.main:
            self.run.export(module, path)

    def checkpoint(self, step: int) -> None:
        parallel, run = self.parallel, self.run
        if not _weights_finite(self.model, parallel):  # a diverged model must never become "the last good checkpoint"
            raise self.diverged("the weights became NaN/Inf", step)
        if run is None:
            return
        module = parallel.export_module()
        optimizer_state = parallel.optimizer_state(self.optimizer)
        extra = {**parallel.rng_state(), **(self.average.to_tensors() if self.average is not None else {})}
        if self.main:
            save_checkpoint(run.checkpoints, step, lambda temp: run.export(module, temp), optimizer_state, extra,
                            {k: v for k, v in self.state.items()}, self.cfg.keep_last)
        self.last_good = run.checkpoints / f"step-{step}"
        parallel.barrier()

    def skipped(self, at: int, loss_ok: bool) -> None:
        """A NaN/Inf step whose update was skipped: count it, say so, stop after train.max_bad_steps in a row."""
        self.bad_in_a_row += 1
        self.state["skipped_steps"] += 1
        what = "loss" if not loss_ok else "gradient norm"
        self.write({"step": at, "skipped_step": 1, "skipped_steps": self.state["skipped_steps"]})
        self.bar.note(f"warning: step {at}: NaN/Inf {what}; update skipped "
                      f"({self.bad_in_a_row} in a row, {self.state['skipped_steps']} in all)")
        if self.bad_in_a_row >= self.cfg.max_bad_steps:
            raise self.diverged(f"{self.bad_in_a_row} steps in a row had NaN/Inf loss or gradients", at)

    def settle(self) -> None:
        """The deferred guard's verdicts, in step order: good steps join the window, bad ones are skipped()."""
        for verdict in self.guard.resolve():
            if verdict.ok:
                self.bad_in_a_row, self.window_steps = 0, self.window_steps + 1
                self.window_tokens += verdict.tokens
            else:
                self.skipped(verdict.step, verdict.loss_ok)

    def run_steps(self) -> TrainResult:
        """Optimizer steps up to train.max_steps (or an early stop), then the last checkpoint and final/."""
        cfg, step = self.cfg, self.start
        try:
            self.model.train()
            while step < cfg.max_steps:
                lr, grad_norm = self.step(step)
                step += 1
                if self.after_step(step, lr, grad_norm):
                    break
            if self.guard is not None:
                self.settle()
            if self.bad_in_a_row and not self.result.stopped_early:
                raise self.diverged(f"the last {self.bad_in_a_row} step(s) had NaN/Inf loss or gradients", step)
            if step > self.start:
                self.checkpoint(step)
        except KeyboardInterrupt:
            self.bar.close()
            self.checkpoint(step)
            self.result.interrupted = True
            if self.run is not None:
                self.bar.note(f"interrupted at step {step}; checkpoint saved; continue with --resume {self.run.path}")
        finally:
            self.bar.close()
            if self.metrics is not None:
                self.metrics.close()
        return self.finish(step)

    def step(self, step: int) -> tuple[float, torch.Tensor]:
        """One optimizer step (0-based `step`): its micro-steps, gradient clipping, the NaN guard, the update."""
        cfg, optimizer = self.cfg, self.optimizer
        lr = learning_rate(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        step_loss, step_extra, step_tokens = self.micro_steps(step)
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        if cfg.grad_norms_every and (step + 1) % cfg.grad_norms_every == 0:
            norms = layer_grad_norms(self.model, self.parallel)
            self.write({"step": step + 1, **{f"grad_norm/{name}": value for name, value in norms.items()}})
            for warning in gradient_warnings(norms, cfg.grad_clip, step + 1):
                self.bar.note("warning: " + warning)
        grad_clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        grad_norm = _local(torch.nn.utils.clip_grad_norm_(self.params, grad_clip))
        self.update(step, step_loss, step_extra, step_tokens, grad_norm)
        optimizer.zero_grad(set_to_none=True)
        return lr, grad_norm

    def micro_steps(self, step: int) -> tuple[torch.Tensor, dict, int]:
        """train.grad_accum forward/backward passes; their mean loss and metrics (on the device) and token count."""
        cfg, parallel, scaler = self.cfg, self.parallel, self.scaler
        step_loss, step_extra, step_tokens = torch.zeros((), device=self.device), {}, 0
        for k in range(cfg.grad_accum):
            batch, tokens = self.batches.get(step, k)
            with parallel.sync(final=k == cfg.grad_accum - 1):
                with self.autocast:
                    total, extra = self.forward(batch)
                loss = extra.pop("_loss", total)
                part = total / cfg.grad_accum
                (scaler.scale(part) if scaler is not None else part).backward()
            step_loss += loss.detach().float() / cfg.grad_accum
            for key, value in extra.items():
                step_extra[key] = step_extra.get(key, 0) + value.detach().float() / cfg.grad_accum
            step_tokens += tokens
        return step_loss, step_extra, step_tokens

    def update(self, step: int, step_loss: torch.Tensor, step_extra: dict, step_tokens: int,
               grad_norm: torch.Tensor) -> None:
        """Apply the step unless its loss or gradients are NaN/Inf; a good step's sums join the log window."""
        guard, scaler, window_extra = self.guard, self.scaler, self.window_extra
        if guard is not None:  # decided on the device; warnings and the abort at the next boundary (guard.py)
            ok = guard.step(self.optimizer, step_loss, grad_norm, step + 1, step_tokens)
            if self.average is not None:  # a skipped step left the weights as they were: folding them in is harmless
                self.average.update(step)
            self.window_loss += torch.where(ok, step_loss, 0.0)
            for key, value in step_extra.items():
                window_extra[key] = window_extra.get(key, 0) + torch.where(ok, value, 0.0)
            return
        # the guard: one sync per step, agreed by all ranks, so a bad batch never reaches the weights
        loss_ok, grad_ok = torch.stack([step_loss, grad_norm.float().to(self.device)]).isfinite().tolist()
        bad = self.parallel.any(not (loss_ok and grad_ok))
        overflow = bad and scaler is not None and not self.parallel.any(not loss_ok)
        if not bad:
            self.bad_in_a_row = 0
            if scaler is not None:
                scaler.step(self.optimizer)
                scaler.update()
            else:
                self.optimizer.step()
            if self.average is not None:
                self.average.update(step)
            self.window_loss += step_loss
            for key, value in step_extra.items():
                window_extra[key] = window_extra.get(key, 0) + value
            self.window_steps += 1
            self.window_tokens += step_tokens
        elif overflow:  # float16 gradients overflowed: the scaler lowers its scale and skips, as designed
            scaler.update()
        else:
            self.skipped(step + 1, loss_ok)

    def after_step(self, step: int, lr: float, grad_norm: torch.Tensor) -> bool:
        """Log, evaluate and checkpoint after optimizer step `step` (1-based) as due; True to stop early."""
        cfg, last = self.cfg, step == self.cfg.max_steps
        if self.guard is not None and (last or step == self.start + 1 or any(
                every and step % every == 0 for every in (cfg.log_every, cfg.eval_every, cfg.save_every))):
            self.settle()
        if (step % cfg.log_every == 0 or last or step == self.start + 1) and self.window_steps:
            self.log_window(step, lr, grad_norm)
        paused = time.perf_counter()  # evaluation and saving do not count against tokens/s
        evaluate = cfg.eval_every and (step % cfg.eval_every == 0 or last) and self.task.can_evaluate
        if evaluate and self.evaluate(step, last):
            return True
        if cfg.save_every and step % cfg.save_every == 0 and not last:
            if self.bad_in_a_row:  # weights that just gave NaN/Inf are no checkpoint to come back to
                self.bar.note(f"warning: no checkpoint at step {step}: its step was skipped as NaN/Inf")
            else:
                self.checkpoint(step)
        self.window_start += time.perf_counter() - paused
        return False

    def log_window(self, step: int, lr: float, grad_norm: torch.Tensor) -> None:
        """Read the window's sums back (summed over ranks), log one training record and start a new window."""
        parallel, keys = self.parallel, list(self.window_extra)
        totals = parallel.sum(torch.stack([self.window_loss, *[self.window_extra[k] for k in keys],
                                           torch.tensor(float(self.window_tokens), device=self.device)]))
        totals = totals.tolist()
        now = time.perf_counter()  # after the read-back: the window's queued GPU work is done
        loss_value = totals[0] / self.window_steps / parallel.world
        extra = {k: v / self.window_steps / parallel.world for k, v in zip(keys, totals[1:-1])}
        tokens = int(totals[-1])
        speed = tokens / max(now - self.window_start, 1e-9)
        self.state["tokens"] += tokens
        self.window_tokens, self.window_start, self.window_steps, self.window_extra = 0, now, 0, {}
        self.window_loss = torch.zeros((), device=self.device)
        self.log({"step": step, "loss": loss_value, "lr": lr, "grad_norm": float(grad_norm),
                  "tokens_per_s": speed, "elapsed": now - self.began, **extra})
        self.result.train_loss, self.result.tokens_per_s = loss_value, speed
        self.bar.total = self.cfg.max_steps  # a hook may re-fit max_steps mid-run (bench-arch's budget clock)
        self.bar.update(step, loss=loss_value, lr=lr, tokens_per_s=speed)

    def evaluate(self, step: int, last: bool) -> bool:
        """Evaluate, keep the best weights (train.patience) and say whether to stop early (all ranks agree)."""
        cfg, state, parallel, task = self.cfg, self.state, self.parallel, self.task
        with self.average.applied() if self.average is not None else contextlib.nullcontext():  # train.ema
            evaluation = parallel.evaluate(lambda m: task.evaluate(m, cfg.eval_steps, cfg.batch_size, self.device))
            self.model.train()
            self.result.eval = evaluation
            self.log({"step": step, **evaluation})
            value = evaluation[self.monitor]
            if _better(value, state["best"], self.mode):
                state["best"], state["bad_evals"] = value, 0
                if cfg.patience:
                    self.best_weights = _clone_weights(parallel.model_state())
                    if self.run is not None:
                        self.export(self.run.path / "best")
            else:
                state["bad_evals"] += 1
        self.bar.note("  eval @ step {}: {}".format(step, ", ".join(f"{k} {v:.4g}" for k, v in evaluation.items())))
        stop = bool(cfg.patience and state["bad_evals"] >= cfg.patience and not last)
        if parallel.any(stop):  # every rank stops at the same step
            self.bar.note(f"  early stop: {self.monitor} has not improved for {cfg.patience} evaluations "
                          f"(best {state['best']:.4g})")
            self.result.stopped_early = True
            return True
        return False

    def finish(self, step: int) -> TrainResult:
        """Back to the best weights (with train.patience; else the average with train.ema), fill in the result,
        write final/ and the loss plot."""
        cfg, parallel, result, run, state = self.cfg, self.parallel, self.result, self.run, self.state
        if self.best_weights is not None and cfg.patience and not result.interrupted:
            parallel.load_model_state(self.best_weights)
        elif self.average is not None and not result.interrupted:  # train.ema: the run ends on the average
            self.average.keep()
        result.step, result.best, result.skipped_steps = step, state["best"], state["skipped_steps"]
        result.seconds = time.perf_counter() - self.began
        result.model = parallel.export_module() if cfg.parallel == "fsdp" else self.model
        if run is not None and not result.interrupted:
            if self.main:
                run.export(result.model, run.path / "final")
                plot_metrics(run.metrics)
            result.final_dir = run.path / "final"
        if not self.main and cfg.parallel == "fsdp":
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
            compiled = torch.compile(parallel.engine, mode=cfg.compile_mode)
        else:
            compiled = torch.compile(functools.partial(parallel.loss_fn, parallel.model), mode=cfg.compile_mode)

    def forward(batch: dict):
        nonlocal compiled
        if compiled is not None:
            try:
                return compiled(batch)
            except Exception as error:  # noqa: BLE001 - any compiler failure (no C++ compiler, an unsupported op)
                compiled = None
                bar.note(f"train.compile: torch.compile failed ({type(error).__name__}: {first_line(error)}); "
                         "training continues without it")
        return parallel.loss(batch)

    return forward
