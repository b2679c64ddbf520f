"""Model registry: `arch` name -> builder."""
from __future__ import annotations

from torch import nn

from ..config import ModelConfig
from .bert import BERT
from .cnn import TextCNN
from .gpt import GPT
from .rnn import RecurrentLM

REGISTRY = {"gpt": GPT, "llama": GPT, "bert": BERT, "lstm": RecurrentLM, "gru": RecurrentLM, "rnn": RecurrentLM,
            "textcnn": TextCNN}


def build_model(cfg: ModelConfig) -> nn.Module:
    """Build an untrained model for `cfg.arch`."""
    try:
        builder = REGISTRY[cfg.arch]
    except KeyError:
        raise ValueError(f"unknown model.arch '{cfg.arch}'; known: {', '.join(REGISTRY)}") from None
    if cfg.vocab_size <= 0:
        raise ValueError("model.vocab_size must be set (it comes from the tokenizer)")
    return builder(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
