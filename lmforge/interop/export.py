"""Export: an lmforge model -> a Hugging Face directory that transformers' Auto classes load as it is."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..config import ModelConfig
from ..files import atomic_directory
from ..models.contract import is_decoder
from ..tokenizer import Tokenizer
from .families import CONCAT, FOR_ARCH, TRANSPOSE, Pair
from .hf_tokenizer import save_hf_tokenizer


def save_hf_dir(path: str | Path, model: nn.Module, tokenizer: Tokenizer, cfg: ModelConfig,
                extra_files: dict[str, str] | None = None, *, chat_template: str | None = None) -> Path:
    """Write config.json, model.safetensors, the tokenizer files (with the chat template, when given) and
    (decoders) generation_config.json, all at once: a model Hugging Face cannot express is refused before
    anything is written. `extra_files` (name -> text: a model card, chat_template.jinja, a generation_config.json
    whose eos ids end chat turns) are written with them, replacing a file of the same name."""
    path = Path(path)
    if cfg.layer_heads or cfg.layer_intermediate:  # Hugging Face configs have one head count and MLP width
        raise ValueError(f"a model whose heads or MLP neurons were pruned has sizes that differ per layer "
                         f"(model.layer_heads={cfg.layer_heads}, model.layer_intermediate={cfg.layer_intermediate}); "
                         "Hugging Face's gpt2/bert/llama configs cannot express that, so it cannot be exported")
    family = FOR_ARCH[cfg.arch]
    hf_config = family.hf_config(cfg)  # raises for settings the family has no way to express
    # a classifier exports as *ForSequenceClassification (base + pooler + head), anything else as the LM
    roles = {"base", "pooler", "cls"} if cfg.labels else {"base", "lm"}
    from ..compress.lora import merged_state_dict

    state = merged_state_dict(model)  # a LoRA model exports with its adapters folded into the weights
    missing = [pair.ours for pair in family.pairs(cfg) if pair.role in roles and pair.ours not in state]
    if missing:  # int8 layers have no plain floating-point weight to hand over
        raise ValueError(f"cannot export to Hugging Face format: the model has no plain weight '{missing[0]}' (is it "
                         "quantized?); export the floating-point original instead")
    tensors: dict[str, torch.Tensor] = {}
    for pair in family.pairs(cfg):
        if pair.role in roles:
            tensors.update(_to_theirs(pair, state[pair.ours], cfg))
    dtype = next(model.parameters()).dtype
    hf_config.update(architectures=[family.architecture(cfg)], vocab_size=cfg.vocab_size,
                     dtype=str(dtype).removeprefix("torch."))
    if cfg.labels:
        hf_config.update(id2label={str(i): name for i, name in enumerate(cfg.labels)},
                         label2id={name: i for i, name in enumerate(cfg.labels)})
    with atomic_directory(path) as temp:
        ids = save_hf_tokenizer(tokenizer, temp, cfg.block_size, chat_template)
        special = {f"{role.removesuffix('_token')}_token_id": ids.get(role) for role in ("bos_token", "eos_token", "pad_token")}
        hf_config.update({k: v for k, v in special.items() if v is not None})
        save_file(tensors, str(temp / "model.safetensors"), metadata={"format": "pt"})
        (temp / "config.json").write_text(json.dumps(hf_config, indent=2, ensure_ascii=False))
        if is_decoder(model):
            generation = {k: v for k, v in special.items() if v is not None}
            (temp / "generation_config.json").write_text(json.dumps(generation, indent=2))
        for name, text in (extra_files or {}).items():
            (temp / name).write_text(text, encoding="utf-8")
    return path


def _to_theirs(pair: Pair, value: torch.Tensor, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    value = value.detach().cpu()
    if pair.kind == TRANSPOSE:
        return {pair.theirs[0]: value.t().contiguous()}
    if pair.kind == CONCAT:
        sizes = [cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim]
        return {name: part.contiguous().clone() for name, part in zip(pair.theirs, value.split(sizes, dim=0))}
    return {pair.theirs[0]: value.contiguous().clone()}
