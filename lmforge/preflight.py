"""Checks before a run starts: will the model and batch fit in memory, can the run directory be made.

A config that cannot fit is refused in a second with the sizes that drive it, instead of allocating for
minutes (200,000 layers) or failing deep inside torch.
"""
from __future__ import annotations

import os
from pathlib import Path

from .config import Config, ConfigError
from .models import CLASSIFIER, ENCODER, family_of

GIB = 1 << 30
# fp32 weights + gradients + AdamW's two moments
TRAIN_BYTES_PER_PARAMETER = 16
RECURRENT_GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def estimate_parameters(model, vocab_size: int) -> int:
    """Parameters of a model of ModelConfig `model` with `vocab_size` tokens (norms and biases left out)."""
    C = model.n_embd
    if family_of(model.arch).kind == CLASSIFIER:  # TextCNN
        return vocab_size * C + sum(model.kernel_sizes) * C * model.n_filters
    if model.arch in RECURRENT_GATES:  # input and recurrent matrices per gate, per layer and direction
        if model.bidirectional:  # layers above the first read both directions' outputs; no next-token head
            return 2 * RECURRENT_GATES[model.arch] * C * C * (2 + 3 * (model.n_layer - 1)) + vocab_size * C
        return model.n_layer * RECURRENT_GATES[model.arch] * 2 * C * C + vocab_size * C * (1 if model.tie_embeddings else 2)
    head = model.head_dim
    attention = C * (model.n_head + 2 * model.n_kv_head) * head + model.n_head * head * C
    mlp = (3 if model.mlp == "swiglu" else 2) * C * model.intermediate_size
    embeddings = vocab_size * C * (1 if model.tie_embeddings else 2)
    if model.position == "learned":
        embeddings += model.block_size * C
    if family_of(model.arch).kind == ENCODER:
        embeddings += model.type_vocab_size * C + 2 * C * C  # segments, MLM transform and pooler
    return model.n_layer * (attention + mlp) + embeddings


def estimate_activations(model, batch_size: int, vocab_size: int) -> int:
    """Bytes of activations one training micro-batch keeps for backward (a lower estimate: fp32, flash attention)."""
    per_token_layer = 10 * model.n_embd + 2 * (model.intermediate_size or 0)  # baselines have no MLP
    per_token = model.n_layer * per_token_layer + 2 * vocab_size  # logits and their float copy
    return 4 * batch_size * model.block_size * per_token


def available_memory(device: str) -> tuple[int | None, str]:
    """Free bytes where training would run (GPU memory for a CUDA device, else RAM), or None when unknown."""
    import torch

    if device != "cpu" and torch.cuda.is_available() and (device == "auto" or device.startswith("cuda")):
        index = torch.device("cuda" if device == "auto" else device)
        free, _ = torch.cuda.mem_get_info(index)
        return free, f"free on {device if device != 'auto' else 'cuda'}"
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "RAM available"
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "RAM"
    except (ValueError, OSError, AttributeError):
        return None, ""


def guess_vocab_size(config: Config) -> int:
    """The vocabulary a fresh tokenizer will have, before it is trained (char: a small alphabet)."""
    return config.tokenizer.vocab_size if config.tokenizer.kind in ("bpe", "wordpiece") else 256


def check_fits(config: Config, parameters: int | None = None, vocab_size: int | None = None) -> None:
    """Refuse (ConfigError) a model + batch whose training needs more memory than the device has."""
    model, train = config.model, config.train
    if train.objective == "sft" and config.data.max_length:  # packed rows are data.max_length tokens at most
        model = model.model_copy(update={"block_size": min(model.block_size, config.data.max_length)})
    vocab = vocab_size or model.vocab_size or guess_vocab_size(config)
    parameters = parameters if parameters is not None else estimate_parameters(model, vocab)
    weights = TRAIN_BYTES_PER_PARAMETER * parameters
    activations = estimate_activations(model, train.batch_size, vocab)
    free, where = available_memory(train.device)
    if free is None or weights + activations <= free:
        return
    biggest = ("lower model.n_layer / model.n_embd" if weights >= activations else
               "lower train.batch_size (raise train.grad_accum to keep the effective batch) or model.block_size")
    raise ConfigError(
        f"not enough memory to train this model: it needs about {(weights + activations) / GIB:,.1f} GiB but "
        f"{free / GIB:,.1f} GiB is {where}.\n"
        f"  parameters: {parameters:,} ({weights / GIB:,.1f} GiB with gradients and AdamW state) from "
        f"model.n_layer={model.n_layer}, model.n_embd={model.n_embd}, intermediate size {model.intermediate_size}, "
        f"vocabulary {vocab:,}\n"
        f"  activations: {activations / GIB:,.1f} GiB for train.batch_size={train.batch_size} x "
        f"model.block_size={model.block_size}\n"
        f"  {biggest}")


def check_run_dir(path: Path, key: str = "run.dir") -> None:
    """A run directory must be a folder or creatable: not an existing file, nor inside one."""
    path = Path(path)
    for place in (path, *path.parents):
        if place.exists():
            if not place.is_dir():
                where = "is a file" if place == path else f"cannot be made: '{place}' is a file"
                raise ConfigError(f"{key} '{path}' {where}, not a folder; choose another {key}")
            return


def check_resume_dir(path: Path) -> None:
    """--resume takes a run directory; a model directory inside one (final/, best/, checkpoints/step-N/) is refused
    with the run directory to name instead, before anything is written into it."""
    path = Path(path)
    if not ((path / "config.json").is_file() and (path / "model.safetensors").is_file()):
        return
    run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    if (run / "config.toml").is_file() or (run / "checkpoints").is_dir():
        hint = f"resume the run that holds it: --resume {run}"
    else:
        hint = f"to train its weights further, start a new run from it with model.init={path}"
    raise ConfigError(f"cannot resume '{path}': it is a model directory (config.json + model.safetensors), not a "
                      f"run directory (config.toml, checkpoints/); {hint}")
