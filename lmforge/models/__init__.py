"""The family registry (`arch` -> Family) and `build_model`. A new family is a folder with a FAMILY and a line
in FAMILY_LIST; config.py, modeldir.py, interop/ and compare/ read the registry instead of their own lists."""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from torch import nn

from .bert import FAMILY as BERT_FAMILY
from .cnn import FAMILY as CNN_FAMILY
from .contract import (Classifier, Decoder, Encoder, LanguageModel, has_classifier, is_decoder, is_encoder,
                       transformer_blocks)
from .family import CLASSIFIER, DECODER, ENCODER, Family
from .gpt import FAMILY as GPT_FAMILY
from .llama import FAMILY as LLAMA_FAMILY
from .qwen2 import FAMILY as QWEN2_FAMILY
from .rnn import FAMILY as RNN_FAMILY

if TYPE_CHECKING:
    from ..config import ModelConfig

FAMILY_LIST = (GPT_FAMILY, LLAMA_FAMILY, QWEN2_FAMILY, BERT_FAMILY, RNN_FAMILY, CNN_FAMILY)
FAMILIES: dict[str, Family] = {family.name: family for family in FAMILY_LIST}
ARCHS: dict[str, Family] = {arch: family for family in FAMILY_LIST for arch in family.archs}
REGISTRY = {arch: family.module for arch, family in ARCHS.items()}  # arch -> module class

__all__ = ["ARCHS", "CLASSIFIER", "DECODER", "ENCODER", "FAMILIES", "Classifier", "Decoder", "Encoder", "Family",
           "LanguageModel", "archs_of", "build_model", "count_parameters", "family_of", "has_classifier", "is_decoder",
           "is_encoder", "no_initialization", "transformer_blocks"]


def family_of(arch: str) -> Family:
    """The Family that builds `arch`, or a clear error naming the known archs."""
    try:
        return ARCHS[arch]
    except KeyError:
        raise ValueError(f"unknown model.arch '{arch}'; known: {', '.join(ARCHS)}") from None


def archs_of(kind: str) -> list[str]:
    """The archs of one kind (DECODER, ENCODER or CLASSIFIER), in registry order: for messages and choices."""
    return [arch for arch, family in ARCHS.items() if family.kind == kind]


def build_model(cfg: ModelConfig) -> nn.Module:
    """Build an untrained model for `cfg.arch` (inside `no_initialization()` its weights are not drawn)."""
    module = family_of(cfg.arch).module
    if cfg.vocab_size <= 0:
        raise ValueError("model.vocab_size must be set (it comes from the tokenizer)")
    return module(cfg)


@contextlib.contextmanager
def no_initialization():
    """Models (and the layers compression puts in them) built inside skip the random draws of their weights, which
    are left as allocated: only for a model whose every parameter and saved buffer is loaded strictly next (a 135M
    model's draws take ~1.3 s of its loading on 2 cores), and the global generator is left as it was.
    Every torch.nn.init function is a no-op while inside (the modules' constructors, lmforge's init_weights and
    LoRA's adapters draw through them); buffers computed in a constructor (rotary tables) are made as always. It
    patches the module torch.nn.init for the process, as transformers' loading does: a model built in another
    thread meanwhile would keep its allocated values too."""
    names = [name for name in dir(nn.init) if name.endswith("_") and not name.startswith("_")
             and callable(getattr(nn.init, name))]
    saved = {name: getattr(nn.init, name) for name in names}
    try:
        for name in names:
            setattr(nn.init, name, _unchanged)
        yield
    finally:
        for name, function in saved.items():
            setattr(nn.init, name, function)


def _unchanged(tensor, *args, **kwargs):
    return tensor


def count_parameters(model: nn.Module) -> int:
    """Parameters of `model`, a tied (shared) tensor counted once; a module's `values_per_element` ({name: n})
    counts a packed parameter as the n values each element holds (4-bit codes two to a byte)."""
    counts = {id(p): p.numel() for p in model.parameters()}
    for module in model.modules():
        for name, values in getattr(module, "values_per_element", {}).items():
            counts[id(getattr(module, name))] = getattr(module, name).numel() * values
    return sum(counts.values())
