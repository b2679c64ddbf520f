"""Resumable checkpoints: model, optimizer, RNG states and progress, written atomically as safetensors + JSON,
with every file's size and checksum recorded so that a damaged checkpoint is named and skipped, never trusted."""
from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..files import DamagedFileError, atomic_directory, verify_manifest, write_manifest

STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"


class CheckpointError(ValueError):
    """No checkpoint of a run can be used (all are damaged)."""


def optimizer_to_tensors(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state_dict into flat tensors (for safetensors) and JSON-able metadata."""
    tensors, scalars = {}, {}
    for pid, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """The optimizer state_dict (parameters numbered in param_groups order) that optimizer_to_tensors split."""
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("state."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(directory: Path, step: int, export: Callable[[Path], None], optimizer_state: dict,
                    extra: dict[str, torch.Tensor], trainer_state: dict, keep_last: int) -> Path:
    """Write checkpoints/step-N atomically: a model directory (via `export`), the optimizer state with the `extra`
    tensors beside it (RNG states, train.ema's average), the trainer state and a manifest of sizes and checksums;
    then drop all but the newest `keep_last`."""
    target = directory / f"step-{step}"
    with atomic_directory(target) as temp:
        export(temp)
        tensors, meta = optimizer_to_tensors(optimizer_state)
        tensors.update(extra)
        save_file(tensors, str(temp / OPTIMIZER_FILE))
        (temp / STATE_FILE).write_text(json.dumps({**trainer_state, "step": step, "optimizer": meta}, indent=1))
        write_manifest(temp)
    for old in list_checkpoints(directory)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints (they exist only once their rename landed), oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := STEP_DIR.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Verify a checkpoint and read (optimizer/RNG tensors, trainer state); DamagedFileError names a bad file."""
    verify_manifest(path)
    state_file = path / STATE_FILE
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        state["step"], state["optimizer"]["param_groups"]  # noqa: B018 - the keys a resume needs
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise DamagedFileError(f"'{state_file}' is damaged ({type(error).__name__}: {error})") from None
    try:
        tensors = load_file(str(path / OPTIMIZER_FILE))
    except (SafetensorError, OSError, ValueError) as error:
        raise DamagedFileError(f"'{path / OPTIMIZER_FILE}' is damaged ({error})") from None
    return tensors, state


def check_checkpoint(path: Path) -> None:
    """Raise DamagedFileError when any file of the checkpoint is damaged (sizes, checksums, readable state)."""
    read_checkpoint(path)
    if not (path / "model.safetensors").is_file():
        raise DamagedFileError(f"'{path / 'model.safetensors'}' is missing")


def find_resumable(directory: Path) -> Path | None:
    """The newest checkpoint that verifies; a damaged newer one is skipped with a warning naming the file.

    None when there is no checkpoint at all; CheckpointError when every one is damaged."""
    found = list_checkpoints(directory)
    problems = []
    for path in reversed(found):
        try:
            check_checkpoint(path)
        except DamagedFileError as error:
            problems.append(str(error))
            continue
        if problems:
            warnings.warn(f"skipping damaged checkpoint(s): {'; '.join(problems)}; resuming from '{path}' instead",
                          stacklevel=2)
        return path
    if problems:
        raise CheckpointError("no usable checkpoint to resume: " + "; ".join(problems))
    return None
