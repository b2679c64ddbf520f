"""What passes between the library and the application: a model with its tokenizer, config and metadata."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: this module imports nothing heavy
    from torch import nn

    from .config import ModelConfig
    from .tokenizer import Tokenizer


@dataclass
class Bundle:
    """A model, its tokenizer, its ModelConfig and `meta` (config.json's other contents: training facts,
    metrics, data sources, compression steps, chat template). A model directory loads into one and saves from
    one; the library's stages take a Bundle or its parts, never the `LM` facade."""

    model: "nn.Module"
    tokenizer: "Tokenizer"
    config: "ModelConfig"
    meta: dict[str, Any] = field(default_factory=dict)

    def __iter__(self):
        """Unpack as (model, tokenizer, config, meta)."""
        return iter((self.model, self.tokenizer, self.config, self.meta))

    @property
    def is_causal(self) -> bool:
        """A decoder (generates text) rather than an encoder or a classifier-only baseline."""
        return bool(self.model.is_causal)  # every model says so (models/contract.py)
