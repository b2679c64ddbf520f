"""Reading a Hugging Face checkpoint's files: where the model lives, config.json, and its weights."""
from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import ModelDirError
from ..files import read_json as read_json_file

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def read_json(path: Path) -> dict:
    """A JSON object from `path`, with an error that names the file when it is not one."""
    value = read_json_file(path, ModelDirError)
    if not isinstance(value, dict):
        raise ModelDirError(f"'{path}' must hold a JSON object ({{...}}), not {type(value).__name__}: {value!r}")
    return value


def model_root(path: Path) -> Path:
    """The folder holding config.json and the weights: `path` itself, or the Transformer module of a
    sentence-transformers directory (its modules.json names it, often the top folder, sometimes 0_Transformer/)."""
    modules = path / "modules.json"
    if (path / "config.json").is_file() or not modules.is_file():
        return path
    entries = read_json_file(modules, ModelDirError)
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and str(entry.get("type", "")).endswith("Transformer"):
            return path / entry.get("path", "")
    raise ModelDirError(f"'{modules}' lists no Transformer module, so there is no model to load")


def has_weights(root: Path) -> bool:
    return any((root / name).is_file() for name in WEIGHT_FILES)


def weight_shapes(root: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, read from the safetensors headers only (no tensor data)."""
    shapes = {}
    for file in _safetensors_files(root):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                shapes[name] = tuple(handle.get_slice(name).get_shape())
    return shapes


def read_weights(root: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint in `root` by its Hugging Face name: model.safetensors, shards listed in
    model.safetensors.index.json, or pytorch_model.bin (tensors only: any other pickled object is refused)."""
    files = _safetensors_files(root)
    if files:
        tensors = {}
        for file in files:
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():
                    tensors[name] = handle.get_tensor(name)
        return tensors
    binary = root / "pytorch_model.bin"
    if binary.is_file():
        return _read_bin(binary)
    raise ModelDirError(f"'{root}' has a config.json but no weights: expected one of {', '.join(WEIGHT_FILES)}")


def _safetensors_files(root: Path) -> list[Path]:
    single, index = root / "model.safetensors", root / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if not index.is_file():
        return []
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelDirError(f"'{index}' has no 'weight_map' naming the shard of each tensor")
    shards = sorted({str(name) for name in weight_map.values()})
    missing = [name for name in shards if not (root / name).is_file()]
    if missing:
        raise ModelDirError(f"'{index}' lists shards that are not there: {', '.join(missing)}")
    return [root / name for name in shards]


def _read_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        with warnings.catch_warnings():  # torch's own notes on pickle protocols would only confuse here
            warnings.simplefilter("ignore")
            # weights_only=True unpickles tensors and plain containers only: a crafted file cannot run code
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        what = f" (it asks for {found.group(1)})" if found else ""
        raise ModelDirError(f"refusing '{path}': it holds pickled objects other than tensors{what}; "
                            "only plain weight files are read") from None
    except Exception as error:  # a truncated or foreign file
        raise ModelDirError(f"'{path}' is not a readable PyTorch weight file: {error}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelDirError(f"'{path}' does not hold a flat dictionary of tensors (a state_dict)")
    return state
