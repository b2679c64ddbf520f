"""The model contract: what every lmforge model offers, and what decoders, encoders and classifiers add.
Code asks `isinstance(model, Decoder)` instead of probing attributes (runtime-checkable Protocols look at
methods only, so a compiled or wrapped module passes the same check)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    from torch import Tensor, nn

    from ..config import ModelConfig


@runtime_checkable
class LanguageModel(Protocol):
    """Every model: built from a ModelConfig, forward(ids) gives logits. `is_causal` says whether a position
    sees only the ones before it (decoders) or all (encoders, classifiers)."""

    config: ModelConfig
    is_causal: ClassVar[bool]

    def forward(self, ids: Tensor, **kwargs: Any) -> Tensor: ...


@runtime_checkable
class Decoder(Protocol):
    """A next-token model: forward(ids) -> (B, T, vocab) logits (`last_only=True`: the last position's, (B, 1,
    vocab)), generation through a cache. `context_length` is the longest window it attends over (None: a
    recurrent state, no limit)."""

    def make_cache(self, batch: int, max_len: int, dtype: Any = None, device: Any = None) -> Any: ...

    @property
    def context_length(self) -> int | None: ...


@runtime_checkable
class Encoder(Protocol):
    """A masked-LM encoder: hidden states of every position, and the MLM head's logits over them."""

    def hidden_states(self, ids: Tensor, **kwargs: Any) -> Any: ...

    def mlm_logits(self, hidden: Tensor) -> Tensor: ...


@runtime_checkable
class Classifier(Protocol):
    """A model with a classification head (made when model.labels is set): classify(ids) -> (B, n_labels)."""

    def classify(self, ids: Tensor, *, pad_mask: Tensor | None = None,
                 token_type_ids: Tensor | None = None) -> Tensor: ...


def is_decoder(model: Any) -> bool:
    """Whether `model` generates text: a Decoder (GPT, Llama, Qwen2 and the one-way RNNs; a bidirectional RNN
    has the methods but reads the future, so it is a classifier)."""
    return isinstance(model, Decoder) and bool(getattr(model, "is_causal", True))


def is_encoder(model: Any) -> bool:
    """Whether `model` is a masked-LM encoder (BERT)."""
    return isinstance(model, Encoder)


def has_classifier(model: Any) -> bool:
    """Whether `model` carries a classification head right now (model.labels set when it was built)."""
    return model.classifier is not None  # every model has the attribute: None until model.labels is set


def transformer_blocks(model: Any) -> nn.ModuleList | None:
    """The Transformer blocks (`model.h`, each with `attn` and `mlp`), or None for the baselines (RNN, TextCNN)."""
    return model.h if getattr(model.config, "is_transformer", False) else None  # False for a foreign config
