"""The vocabulary of foreign-name tables: how one lmforge parameter is made of a checkpoint's tensors (Pair),
and what a table for one Hugging Face `model_type` offers (ForeignNames). Each family folder holds its table;
interop/ reads and writes the files with them."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ModelDirError

if TYPE_CHECKING:
    from ..config import ModelConfig

# how a Hugging Face tensor becomes an lmforge one: as it is, transposed (GPT-2's Conv1D stores (in, out)),
# or several concatenated along the output dimension (separate q, k, v -> one fused qkv projection)
COPY, TRANSPOSE, CONCAT = "copy", "transpose", "concat"
# GGUF llama: q, k and v concatenated, q and k rows in llama.cpp's interleaved rotary order (undone on import)
ROPE_CONCAT = "rope-concat"


@dataclass(frozen=True)
class Pair:
    """One lmforge parameter and the Hugging Face tensor(s) it is made of. `role` says which part of the model:
    'base' (always there), 'lm' (language-model head), 'pooler', 'cls' (sequence-classification head)."""

    ours: str
    theirs: tuple[str, ...]
    kind: str = COPY
    role: str = "base"


class ForeignNames(ABC):
    """What one Hugging Face `model_type` looks like: its config.json keys and the name of each weight."""

    model_type: str
    prefix: str  # the base model's prefix inside task checkpoints (GPT2LMHeadModel -> "transformer.")
    head_prefixes: tuple[str, ...]
    ignored: tuple[str, ...] = ()  # buffers and heads lmforge has no use for
    fields: dict[str, str]  # lmforge ModelConfig field -> the config.json key that sets it (for messages)
    tied_copy: str  # where some files keep a copy of the tied output layer (the word embeddings again)

    @abstractmethod
    def config(self, hf: dict, where: str) -> dict:
        """ModelConfig fields from a config.json (errors name `where`)."""

    @abstractmethod
    def hf_config(self, cfg: ModelConfig) -> dict:
        """config.json keys for an lmforge model; refuses what the family cannot express."""

    @abstractmethod
    def pairs(self, cfg: ModelConfig) -> list[Pair]:
        """Every weight of a model of this config, lmforge name beside Hugging Face's."""

    @abstractmethod
    def architecture(self, cfg: ModelConfig) -> str:
        """The transformers class an export loads as."""

    gguf_arch: str | None = None  # general.architecture of the family's GGUF files; None: no GGUF form

    def gguf_config(self, meta: dict, where: str) -> dict:
        """ModelConfig fields from a GGUF file's metadata (keys under `gguf_arch.`)."""
        raise ModelDirError(f"{where}: lmforge has no GGUF form of {self.model_type}")

    def gguf_metadata(self, cfg: ModelConfig) -> dict[str, int | float]:
        """The `gguf_arch.*` metadata of an lmforge model (ints are written as uint32, floats as float32)."""
        raise ValueError(f"lmforge has no GGUF form of {self.model_type}")

    def gguf_pairs(self, cfg: ModelConfig) -> list[Pair]:
        """Every weight of a decoder of this config, lmforge name beside the GGUF tensor name(s)."""
        raise ValueError(f"lmforge has no GGUF form of {self.model_type}")


def need(condition: bool, where: str, message: str) -> None:
    """Import check: a ModelDirError naming `where` unless `condition` holds."""
    if not condition:
        raise ModelDirError(f"{where}: {message}")


def refuse(cfg: ModelConfig, checks: dict[str, object], target: str) -> None:
    """Export check: each ModelConfig field must have the value the Hugging Face family can express."""
    for field, wanted in checks.items():
        value = getattr(cfg, field)
        if value != wanted:
            raise ValueError(f"cannot export: Hugging Face {target} has no way to express model.{field}={value!r} "
                             f"(it needs {wanted!r}); this model can only be used within lmforge")


def gguf_number(meta: dict, arch: str, key: str, where: str, default=None):
    """The number a GGUF file's metadata holds at `arch.key` (or `default`); a ModelDirError naming `where` when it
    is missing or not a non-negative number. A float32 comes back as the shortest decimal of it (1e-05)."""
    value = meta.get(f"{arch}.{key}", default)
    if value is None:
        raise ModelDirError(f"{where}: the metadata has no '{arch}.{key}', which a GGUF {arch} model needs")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ModelDirError(f"{where}: '{arch}.{key}'={value!r} is not a usable number")
    if isinstance(value, float):  # stored as float32: the shortest decimal that is that float32 (1e-05, not 9.99e-06)
        value = float(str(np.float32(value)))
    return value
