"""What LM.fit does: a Bundle trained as a Config says (LoRA, distillation, early stopping included), in a
scratch directory or a run directory (checkpoints, metrics.jsonl, config.toml, final/)."""
from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..bundle import Bundle
from ..compress.lora_fit import freeze_for_lora, prepare_lora
from ..config import LABELED_OBJECTIVES, Config, ConfigError, TrainConfig, build_config, to_toml
from ..files import atomic_write_text
from ..modeldir import load_model_dir, save_model_dir
from ..models import count_parameters
from ..preflight import check_fits
from ..tasks import make_task
from ..tasks.distill import check_objective, missing_teacher
from ..tokenizer import Tokenizer
from ..train.checkpoint import find_resumable
from ..train.trainer import RunDir, TrainResult, train


def source_name(paths: list[str]) -> str:
    """How the model card names the training text."""
    return ", ".join(paths) if paths else "built-in corpus (CPython documentation topics, pydoc_data)"


def resume_point(run_dir: str | Path | None, resume: bool | str | Path) -> bool | str | Path:
    """What fit resumes from: False, a checkpoint, or True (resume asked, no checkpoint yet: start at step 0)."""
    if not resume:
        return False
    if run_dir is None:
        raise ValueError("resume=True needs the run_dir to continue")
    if not isinstance(resume, (str, Path)):
        return find_resumable(Path(run_dir) / "checkpoints") or True  # True: none yet, start at 0
    return resume


def fit_config(config: Config, data, objective: str | None, train_options: dict[str, Any]) -> Config:
    """`config` with fit's arguments put in: train.* options, the objective, and `data` as data.paths (data.train
    for a labeled objective)."""
    updates: dict[str, dict] = {"train": dict(train_options)}
    if objective is not None:
        updates["train"]["objective"] = objective
    if data is not None:
        paths = [str(data)] if isinstance(data, (str, Path)) else [str(p) for p in data]
        key = "train" if (objective or config.train.objective) in LABELED_OBJECTIVES else "paths"
        updates["data"] = {key: paths[0] if key == "train" else paths}
    raw = config.model_dump()
    if "lr" in train_options and "min_lr" not in train_options and raw["train"]["min_lr"] > train_options["lr"]:
        del raw["train"]["min_lr"]  # an inherited floor above the new rate: let it default below the rate
    for section, values in updates.items():
        raw[section].update(values)
    return build_config(raw, "fit arguments")


def load_teacher(train: TrainConfig) -> Bundle | None:
    """The frozen teacher of train.distill_teacher, loaded for the task that is handed it (None without one)."""
    if not train.distill_teacher:
        return None
    check_objective(train.objective)
    path = Path(train.distill_teacher)
    if not path.exists():
        raise missing_teacher(path)
    # loading draws nothing from the run's generator; float32, as the student computes its loss against it
    return load_model_dir(path, dtype="float32")


def fit(bundle: Bundle, config: Config, run_dir: str | Path | None = None, resume: bool | str | Path = False,
        progress: bool = True, hooks=()) -> tuple[Bundle, Config, TrainResult]:
    """Train the bundle's model on config.data by config.train; with `run_dir`, write the run there (`resume`: a
    checkpoint to continue, from resume_point). Returns the trained Bundle (a task's head, training facts and
    metrics in meta), `config` with its model section, and the trainer's result."""
    if not isinstance(resume, bool):  # the run's own tokenizer, not a new one trained on data that may have changed
        bundle = replace(bundle, tokenizer=Tokenizer.load(Path(resume) / "tokenizer.json"))
    cfg = config.train
    check_fits(config, parameters=count_parameters(bundle.model), vocab_size=bundle.tokenizer.vocab_size)
    bundle = prepare_lora(bundle, cfg)  # train.lora: adapters on (a bad one is refused before any data is written)
    with tempfile.TemporaryDirectory(prefix="lmforge-") as scratch:
        work = Path(run_dir) if run_dir is not None else Path(scratch)
        task, bundle = make_task(bundle, cfg, config.data, work, progress=progress, teacher=load_teacher(cfg))
        config = config.model_copy(update={"model": bundle.config})
        if cfg.patience and not task.can_evaluate:
            raise ConfigError(f"train.patience={cfg.patience} needs validation data, but this task has none "
                              "(the validation split is too short to evaluate); add data or set train.patience=0")
        meta = {**bundle.meta, "name": config.run.name, "training": _training_facts(config, bundle.model, task),
                "metrics": {}}
        if cfg.lora.rank:  # after the task made its head, which trains beside the adapters
            meta["training"].update(freeze_for_lora(bundle.model, cfg))
        bundle = trained = replace(bundle, meta=meta)

        def remember(step: int, record: dict) -> None:
            if not {"loss", "lr"} <= record.keys():
                meta["metrics"] = {k: v for k, v in record.items() if k != "step"}
                meta["metrics"]["step"] = step

        run = None
        if run_dir is not None:
            run = RunDir(Path(run_dir), lambda model, path: save_model_dir(path, replace(trained, model=model)))
            atomic_write_text(run.path / "config.toml", to_toml(config))
        result = train(bundle.model, task, cfg, run, resume=resume, progress=progress, hooks=[remember, *hooks])
        if result.model is not None:  # after FSDP, rank 0 gets the gathered weights in a plain module
            bundle = replace(bundle, model=result.model)
        if run is not None and not result.interrupted and hasattr(task, "finish") and result.rank == 0:
            task.finish(bundle.model, run.path)  # e.g. a classifier's eval.json and confusion.png
    bundle.model.eval()
    return bundle, config, result


def _training_facts(config: Config, model: torch.nn.Module, task) -> dict:
    """What the model card's training section lists: objective, data, steps, batch, rate, size, the task's own."""
    cfg = config.train
    labeled = cfg.objective in LABELED_OBJECTIVES
    return {"objective": cfg.objective, "data": config.data.train if labeled else source_name(config.data.paths),
            "max_steps": cfg.max_steps, "batch_size": cfg.batch_size, "lr": cfg.lr,
            "parameters": count_parameters(model), **getattr(task, "training_facts", {})}
