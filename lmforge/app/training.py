"""Training from a recipe: what `lmforge train` (and distill, the demo, the memorization audit) run. A new run,
or the continuation of one from its newest good checkpoint, with the checks that keep a resume honest."""
from __future__ import annotations

from .building import model_diffs
from .facade import LM
from ..config import Config, ConfigError, ModelConfig
from ..preflight import check_resume_dir, check_run_dir
from ..train.checkpoint import find_resumable, list_checkpoints
from ..train.trainer import TrainResult


def check_same_model(saved: ModelConfig, wanted: ModelConfig, where: str, free: set[str] = frozenset()) -> None:
    """A checkpoint's architecture must match the config that resumes or fine-tunes it."""
    diffs = model_diffs(saved, wanted, free)
    if diffs:
        raise ConfigError(f"the config does not match the model in {where}:\n  " + "\n  ".join(diffs) +
                          "\n(remove these keys from the config, or start a new run)")


def train_from_config(config: Config, resume: bool = False, progress: bool = True, hooks=()) -> tuple[LM, TrainResult]:
    """What `lmforge train` does: build (or resume) the model a config describes and train it in run.path."""
    run_path = config.run.path
    check_run_dir(run_path)
    if resume:
        check_resume_dir(run_path)
    existing = list_checkpoints(run_path / "checkpoints")
    if resume and not run_path.is_dir():  # most likely a typo; a restart loop's first start can mkdir -p it
        raise FileNotFoundError(f"cannot resume: '{run_path}' does not exist (for a first start under a restart "
                                f"loop create it: mkdir -p {run_path})")
    source = find_resumable(run_path / "checkpoints") if resume else None
    if source is not None:
        lm = LM.from_pretrained(source)
        check_same_model(lm.config.model, config.model, str(source))
        lm.config = config.model_copy(update={"model": lm.config.model})
        resume = source
    elif resume:  # killed before its first checkpoint: the same restart command starts it (the trainer says so)
        lm = LM.from_config(config)
    else:
        if existing:
            raise FileExistsError(f"run directory '{run_path}' already holds checkpoints; continue it with "
                                  f"--resume {run_path}, or set run.dir / run.name to start a new run")
        lm = LM.from_config(config)
    result = lm.fit(run_dir=run_path, resume=resume, progress=progress, hooks=hooks)
    return lm, result
