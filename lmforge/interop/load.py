"""Import: a Hugging Face checkpoint directory -> an lmforge model, tokenizer and config, converted in memory."""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch
from pydantic import ValidationError
from torch import nn

from ..config import ModelConfig, describe_validation_error
from ..errors import ModelDirError, shape_mismatch
from ..models import ENCODER, build_model, family_of
from ..tokenizer import Tokenizer
from .families import CONCAT, TRANSPOSE, Family, Pair, family
from .hf_tokenizer import load_hf_tokenizer
from .weights import has_weights, model_root, read_json, read_weights


def is_hf_dir(path: str | Path) -> bool:
    """Whether `path` looks like a Hugging Face checkpoint (a config.json with a model_type, not lmforge's)."""
    path = Path(path)
    if not path.is_dir():
        return False
    config = model_root(path) / "config.json"
    try:
        meta = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "model_type" in meta and "format" not in meta


def load_hf_dir(path: str | Path, device: str = "cpu") -> tuple[nn.Module, Tokenizer, ModelConfig, dict]:
    """(model, tokenizer, model config, info) from a Hugging Face directory of a gpt2, bert or llama model."""
    path = Path(path)
    root = model_root(path)
    config_file = root / "config.json"
    hf = read_json(config_file)
    fam = family(hf.get("model_type"), f"'{config_file}'")
    if not has_weights(root):
        raise ModelDirError(f"'{root}' has a config.json but no weights: expected model.safetensors, "
                            "model.safetensors.index.json with its shards, or pytorch_model.bin")
    try:
        fields = fam.config(hf, f"'{config_file}'")
    except KeyError as error:
        raise ModelDirError(f"'{config_file}' has no {error.args[0]!r}, which a {fam.model_type} config needs") from None
    pooling = _sentence_pooling(path)
    if pooling:
        fields["pooling"] = pooling
    tensors = _normalise(read_weights(root), fam)
    try:
        pairs = fam.pairs(ModelConfig(**fields, vocab_size=1))
        head = next(p for p in pairs if p.role == "cls")
        labels = _labels(hf, tensors[head.theirs[0]].shape[0]) if head.theirs[0] in tensors else []
        embedding = tensors.get(pairs[0].theirs[0])
        vocab_size = hf.get("vocab_size") or (embedding.shape[0] if embedding is not None else 0)
        cfg = ModelConfig(**fields, vocab_size=vocab_size, labels=labels)
    except ValidationError as error:
        raise ModelDirError(describe_validation_error(error, str(config_file)).replace("invalid configuration", "unusable values")) from None
    with torch.random.fork_rng(devices=[]):  # parts made fresh (a missing MLM head) are the same every load
        torch.manual_seed(0)
        model = build_model(cfg)
    state, fresh = _convert(tensors, fam, cfg, model, config_file)
    model.load_state_dict(state, strict=False)
    if cfg.tie_embeddings:  # every family read from Hugging Face has an output layer to tie
        model.lm_head.weight = model.wte.weight
    if "lm" in fresh and not labels and family_of(cfg.arch).kind == ENCODER:
        warnings.warn(f"'{path}' has no masked-LM head (a BertModel or sentence-transformers checkpoint): a fresh "
                      "one tied to the word embeddings was made, so fill-mask needs training first", stacklevel=3)
    tokenizer = load_hf_tokenizer(root, hf)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ModelDirError(f"the tokenizer in '{root}' has {tokenizer.vocab_size} tokens but config.json's "
                            f"vocab_size is {cfg.vocab_size}")
    info = {"name": path.resolve().name, "source": {"format": "huggingface", "model_type": fam.model_type,
                                                     "architectures": hf.get("architectures") or []}}
    return model.to(device).eval(), tokenizer, cfg, info


def _sentence_pooling(path: Path) -> str | None:
    """'mean' or 'cls' from a sentence-transformers Pooling module, so a classifier reads what the model was
    trained to produce; None for other checkpoints."""
    modules = path / "modules.json"
    if not modules.is_file():
        return None
    try:
        entries = json.loads(modules.read_text(encoding="utf-8"))
        pooling = next(e for e in entries if str(e.get("type", "")).endswith("Pooling"))
        settings = json.loads((path / pooling["path"] / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, StopIteration, KeyError, TypeError, AttributeError):
        return None
    if settings.get("pooling_mode_mean_tokens"):
        return "mean"
    return "cls" if settings.get("pooling_mode_cls_token") else None


def _normalise(tensors: dict[str, torch.Tensor], fam: Family) -> dict[str, torch.Tensor]:
    """Full task-model names: a bare base model's weights get the family prefix; old BERT files' LayerNorm
    gamma/beta become weight/bias."""
    bare = not any(name.startswith(fam.prefix) for name in tensors)
    out = {}
    for name, value in tensors.items():
        if name.endswith(".gamma"):
            name = name[:-len("gamma")] + "weight"
        elif name.endswith(".beta"):
            name = name[:-len("beta")] + "bias"
        if bare and not name.startswith(fam.head_prefixes):
            name = fam.prefix + name
        out[name] = value
    return out


def _labels(hf: dict, count: int) -> list[str]:
    names = hf.get("id2label") or {}
    labels = [str(names.get(str(i), names.get(i, f"LABEL_{i}"))) if isinstance(names, dict) else f"LABEL_{i}"
              for i in range(count)]
    return labels if len(set(labels)) == count else [f"LABEL_{i}" for i in range(count)]


def _convert(tensors: dict[str, torch.Tensor], fam: Family, cfg: ModelConfig, model: nn.Module,
             config_file: Path) -> tuple[dict[str, torch.Tensor], set[str]]:
    """lmforge's state dict from the checkpoint's tensors; also the roles that were absent (made fresh)."""
    expected = model.state_dict()
    fields = {hf_key: getattr(cfg, ours) for ours, hf_key in fam.fields.items() if ours != "n_layer"}
    fields["num_labels"] = len(cfg.labels)
    state, fresh, used = {}, set(), set()
    missing: list[str] = []
    for pair in fam.pairs(cfg):
        if not all(name in tensors for name in pair.theirs):
            if _required(pair, cfg):
                missing.append(pair.theirs[0])
            else:
                fresh.add(pair.role)
            continue
        value = _to_ours(pair, [tensors[n] for n in pair.theirs])
        want = tuple(expected[pair.ours].shape)
        if tuple(value.shape) != want:
            raise shape_mismatch(config_file, pair.theirs[0], want, tuple(value.shape), fields, pair.kind == TRANSPOSE)
        state[pair.ours] = value.to(expected[pair.ours].dtype)
        used.update(pair.theirs)
    if cfg.tie_embeddings:
        used.add(fam.tied_copy)
    layers = _count_layers(tensors)
    if missing:
        if layers is not None and layers != cfg.n_layer:
            raise ModelDirError(f"'{config_file}' says {fam.fields['n_layer']}={cfg.n_layer}, the weights have {layers}")
        raise ModelDirError(f"the weights beside '{config_file}' lack {len(missing)} tensors a {fam.model_type} "
                            f"model needs, e.g. {', '.join(missing[:3])}")
    extra = [n for n in tensors if n not in used and not any(part in n for part in fam.ignored)]
    if extra:
        if layers is not None and layers != cfg.n_layer:
            raise ModelDirError(f"'{config_file}' says {fam.fields['n_layer']}={cfg.n_layer}, the weights have {layers}")
        raise ModelDirError(f"the weights beside '{config_file}' hold {len(extra)} tensors lmforge cannot place "
                            f"(e.g. {', '.join(sorted(extra)[:3])}); supported: {fam.model_type} base models with "
                            "their language-model or sequence-classification head")
    return state, fresh


def _required(pair: Pair, cfg: ModelConfig) -> bool:
    """Base weights always; a decoder's untied output layer unless the checkpoint is a classifier."""
    if pair.role == "base":
        return True
    return pair.role == "lm" and family_of(cfg.arch).kind != ENCODER and not cfg.labels


def _to_ours(pair: Pair, values: list[torch.Tensor]) -> torch.Tensor:
    if pair.kind == TRANSPOSE:
        return values[0].t().contiguous()
    if pair.kind == CONCAT:
        return torch.cat(values, dim=0)
    return values[0]


def _count_layers(tensors: dict[str, torch.Tensor]) -> int | None:
    """Number of blocks in the weights, from the largest layer index in the names."""
    found = [int(m.group(1)) for n in tensors if (m := re.search(r"(?:^|\.)(?:h|layer|layers)\.(\d+)\.", n))]
    return max(found) + 1 if found else None
