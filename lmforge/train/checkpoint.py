"""Resumable checkpoints: model, optimizer, RNG states and progress, written atomically as safetensors + JSON."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file, save_model
from torch import nn

from ..files import atomic_directory, atomic_write_text

STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.json"


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state_dict into flat tensors (for safetensors) and JSON-able metadata."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("state."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(directory: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    trainer_state: dict, export: Callable[[nn.Module, Path], None] | None, keep_last: int) -> Path:
    """Write checkpoints/step-N atomically (a model directory plus optimizer and trainer state)."""
    target = directory / f"step-{step}"
    with atomic_directory(target) as temp:
        if export is not None:
            export(model, temp)
        else:
            save_model(model, str(temp / "model.safetensors"))
        tensors, meta = optimizer_to_tensors(optimizer)
        tensors["rng.cpu"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for index, value in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{index}"] = value
        save_file(tensors, str(temp / "optimizer.safetensors"))
        (temp / STATE_FILE).write_text(json.dumps({**trainer_state, "step": step, "optimizer": meta}, indent=1))
    for old in list_checkpoints(directory)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints (they exist only once their rename landed), oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := STEP_DIR.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore model, optimizer and RNG states from `path`; return the trainer state (with `step`)."""
    from safetensors.torch import load_model

    load_model(model, str(path / "model.safetensors"), strict=True)
    state = json.loads((path / STATE_FILE).read_text())
    tensors = load_file(str(path / "optimizer.safetensors"))
    # load_state_dict moves each state tensor to its parameter's device and dtype
    optimizer_from_tensors(optimizer, tensors, state.pop("optimizer"))
    torch.set_rng_state(tensors["rng.cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    return state


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines logged after `step` (they belong to the part of a run that a resume replays)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))
