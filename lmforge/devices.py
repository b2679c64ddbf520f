"""Device and dtype names checked up front: one clear error before a model is loaded, not a traceback inside torch."""
from __future__ import annotations

import torch

from .errors import ConfigError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
USABLE = "auto, cpu, cuda, cuda:N or mps"


def check_device(name: str | torch.device, what: str = "--device") -> torch.device:
    """The torch.device `name` names (auto: the GPU when there is one) if this machine can run a model there;
    otherwise a ConfigError saying what was wrong and what to use."""
    if isinstance(name, torch.device):
        name = str(name)
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{what} '{name}' is not a device name; use {USABLE}") from None
    if device.type == "meta":
        raise ConfigError(f"{what} '{name}' holds shapes without data, a model cannot run there; use {USABLE}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{what} is '{name}' but no CUDA GPU is available on this machine "
                              f"(torch {torch.__version__}); use {_setting(what, 'cpu')}")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"{what} is '{name}' but this machine has {count} CUDA GPU(s): cuda:0 to cuda:{count - 1}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"{what} is '{name}' but Apple's MPS backend is not available here; use cpu")
    elif device.type != "cpu":
        raise ConfigError(f"{what} '{name}' is a device type lmforge does not run models on; use {USABLE}")
    return device


def _setting(what: str, value: str) -> str:
    return f"{what}={value}" if "." in what else f"{what} {value}"


def check_dtype(name: str | torch.dtype | None, what: str = "--dtype") -> torch.dtype | None:
    """The torch dtype of `name` (float32, bfloat16, float16 or their short names), None for None."""
    if name is None or isinstance(name, torch.dtype):
        return name
    dtype = DTYPES.get(str(name).strip().lower())
    if dtype is None:
        raise ConfigError(f"{what} '{name}' is not a dtype lmforge runs models in; use float32, bfloat16 or float16")
    return dtype
