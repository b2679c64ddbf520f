"""What lmforge knows about one model family, in one place: the archs it builds, its module, the switches it
fills in when a config leaves them unset, its default tokenizer and objective, the model card's words for it,
and its table of foreign (Hugging Face) names."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DECODER, ENCODER, CLASSIFIER = "decoder", "encoder", "classifier"


@dataclass(frozen=True)
class Family:
    """One family folder's facts; `models.FAMILIES` maps each of its `archs` to it."""

    name: str  # the folder: gpt, llama, qwen2, bert, rnn, cnn
    archs: tuple[str, ...]  # the model.arch values it builds
    kind: str  # DECODER (clm, generation), ENCODER (mlm, fill-mask) or CLASSIFIER (classify only)
    module: type  # the nn.Module class built from a ModelConfig
    card: str  # what the model card calls it: "a Llama-style decoder"
    defaults: dict[str, Any] = field(default_factory=dict)  # ModelConfig switches filled in when left unset
    transformer: bool = True  # False: a baseline (RNN, TextCNN) that rejects the Transformer-only keys
    tokenizer: str = "char"  # default tokenizer.kind
    hf: Any = None  # the Hugging Face name table (an interop Family), or None: not exported to Hugging Face

    @property
    def objective(self) -> str:
        """The default train.objective: clm for decoders, mlm for encoders, classify for classifiers."""
        return {DECODER: "clm", ENCODER: "mlm", CLASSIFIER: "classify"}[self.kind]
