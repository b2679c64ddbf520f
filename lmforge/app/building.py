"""The Bundle a recipe describes: fresh (a tokenizer made for it, weights drawn from train.seed) or the model of
model.init with the recipe's dropout, pooling and added tokens; what LM.new / LM.from_config build."""
from __future__ import annotations

import warnings
from dataclasses import replace

import torch

from ..bundle import Bundle
from ..config import Config, ModelConfig
from ..modeldir import load_model_dir
from ..models import build_model
from ..models.resize import resize_vocab
from ..preflight import check_fits
from ..vectors import check_dim, open_vectors, start_embeddings
from .tokenizers import make_tokenizer

# model fields that may differ between a checkpoint and the config that resumes or fine-tunes it
_FREE_MODEL_FIELDS = {"vocab_size", "labels", "init", "dropout", "vectors", "vectors_layer"}


def model_diffs(saved: ModelConfig, wanted: ModelConfig, free: set[str] = frozenset()) -> list[str]:
    """The model keys a config sets to something other than the checkpoint's values."""
    fields_set = wanted.model_fields_set - _FREE_MODEL_FIELDS - free
    return [f"model.{key}: saved {getattr(saved, key)!r}, config {getattr(wanted, key)!r}"
            for key in sorted(fields_set) if getattr(saved, key) != getattr(wanted, key)]


def build_bundle(config: Config) -> tuple[Bundle, Config]:
    """The model `config` describes, and `config` completed by it (vocab_size; model.init's architecture)."""
    if config.model.init:
        return _from_init(config)
    check_fits(config)  # before training a tokenizer or allocating: 200,000 layers must not hang
    vectors = None
    if config.model.vectors:  # read and checked (a wrong dimension too) before the tokenizer is trained
        vectors = open_vectors(config.model.vectors, config.model.vectors_layer)
        check_dim(vectors, config.model.n_embd, config.model.vectors)
    tokenizer = make_tokenizer(config)
    tokenizer.backend.add_tokens(config.tokenizer.add_tokens)
    tokenizer.backend.add_special_tokens(config.tokenizer.add_special_tokens)
    model_cfg = config.model.model_copy(update={"vocab_size": tokenizer.vocab_size})
    with torch.random.fork_rng(devices=[]):  # the same seed gives the same initial weights
        torch.manual_seed(config.train.seed)
        model = build_model(model_cfg)
    meta = {}
    if vectors is not None:
        meta["vectors"] = start_embeddings(model, tokenizer, vectors, config.model.vectors).as_meta()
    return Bundle(model, tokenizer, model_cfg, meta), config.model_copy(update={"model": model_cfg})


def _from_init(config: Config) -> tuple[Bundle, Config]:
    """model.init's model, taking from the recipe only its dropout, pooling, classifier_bias and added tokens."""
    base = load_model_dir(config.model.init, dtype="float32")  # trained in float32 (train.dtype is autocast)
    # a fine-tuning may choose its own pooling; every other set architecture key must match
    wanted_pooling = config.model.pooling if "pooling" in config.model.model_fields_set else None
    # the pretrained model decides the architecture: a recipe's sizes (configs/classify.toml's) give way
    ignored = model_diffs(base.config, config.model, free={"pooling", "classifier_bias"})
    if ignored:
        warnings.warn(f"model.init={config.model.init} decides the architecture; ignoring the config's "
                      + "; ".join(ignored), stacklevel=4)
    # its embeddings are trained already: no vectors to start them from
    update = {"dropout": config.model.dropout, "vectors": None, "vectors_layer": "input"}
    if "classifier_bias" in config.model.model_fields_set:  # e.g. false, for a head HF's GPT-2 can express
        update["classifier_bias"] = config.model.classifier_bias
    model_cfg = base.config.model_copy(update=update)
    for module in base.model.modules():  # the new run's dropout, not the saved one
        if isinstance(module, torch.nn.Dropout):
            module.p = config.model.dropout
        elif isinstance(getattr(module, "dropout", None), float):
            module.dropout = config.model.dropout
    bundle = replace(base, config=model_cfg.model_copy(update={"init": config.model.init}))
    bundle = add_tokens(bundle, config.tokenizer.add_tokens)[1]
    bundle = add_tokens(bundle, config.tokenizer.add_special_tokens, special=True)[1]
    if wanted_pooling:
        bundle = with_pooling(bundle, wanted_pooling)
    return bundle, config.model_copy(update={"model": bundle.config})


def with_pooling(bundle: Bundle, pooling: str) -> Bundle:
    """The Bundle whose encoder classifier reads `pooling` ('cls' or 'mean'); the model's config changes in place."""
    if pooling == bundle.config.pooling:
        return bundle
    model_cfg = ModelConfig.model_validate({**bundle.config.model_dump(), "pooling": pooling})
    bundle.model.config = model_cfg
    return replace(bundle, config=model_cfg)


def add_tokens(bundle: Bundle, tokens: str | list[str], special: bool = False) -> tuple[int, Bundle]:
    """Add tokens to the bundle's tokenizer and grow the model's embeddings (and a tied head) to fit, in place;
    how many were new, and the Bundle with the grown model's config."""
    tokens = [tokens] if isinstance(tokens, str) else list(tokens)
    bad = [t for t in tokens if not isinstance(t, str) or not t]
    if bad:
        raise ValueError(f"tokens to add must be non-empty strings, got {bad!r}")
    backend = bundle.tokenizer.backend
    added = backend.add_special_tokens(tokens) if special else backend.add_tokens(tokens)
    if bundle.tokenizer.vocab_size > bundle.config.vocab_size:
        resize_vocab(bundle.model, bundle.tokenizer.vocab_size)
        bundle = replace(bundle, config=bundle.model.config)
    return added, bundle
