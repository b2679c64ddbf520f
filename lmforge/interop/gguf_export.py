"""Export: an lmforge llama or gpt decoder -> one GGUF file (f32, f16, q8_0 or q4_1) that llama.cpp runs, with the
byte-level BPE tokenizer and the chat template in its metadata."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..compress.int4 import Int4Linear
from ..config import ModelConfig
from ..files import atomic_file
from ..models.contract import is_decoder
from ..tokenizer import Tokenizer
from .families import FOR_ARCH, ROPE_CONCAT, Pair
from .gguf_file import require_gguf
from .gguf_load import rope_order
from .gguf_tokenizer import gguf_tokenizer_metadata

GGUF_TYPES = ("f32", "f16", "q8_0", "q4_1")
# general.file_type: llama.cpp's LLAMA_FTYPE_ALL_F32 / MOSTLY_F16 / MOSTLY_Q8_0 / MOSTLY_Q4_1
FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7, "q4_1": 3}
EMBEDDINGS = ("token_embd.weight", "output.weight")  # q4_1 files keep these in q8_0, as llama.cpp's own do


def save_gguf(path: str | Path, model: nn.Module, tokenizer: Tokenizer, cfg: ModelConfig, meta: dict | None = None,
              gguf_type: str = "f16") -> Path:
    """Write a GGUF file of a llama or gpt decoder; everything is checked before the file is written, and the
    file appears in one rename. f32 keeps every weight; f16, q8_0 and q4_1 store the matrices so (norms stay f32;
    q4_1 keeps the embedding in q8_0). A weight-int4 model's 4-bit weights are written as they are: its groups
    of 32 are q4_1's blocks (the codes exactly; the scales and minimums rounded to float16)."""
    gguf = require_gguf()
    path, meta = Path(path), meta or {}
    if gguf_type not in GGUF_TYPES:
        raise ValueError(f"--gguf-type {gguf_type!r} is not one of {', '.join(GGUF_TYPES)}")
    family = FOR_ARCH.get(cfg.arch)
    if family is None or family.gguf_arch is None or not is_decoder(model) or cfg.labels:
        raise ValueError(f"cannot export a {cfg.arch} {'classifier' if cfg.labels else 'model'} to GGUF: llama.cpp "
                         "runs decoders, and lmforge writes its llama and gpt language models")
    if cfg.layer_heads or cfg.layer_intermediate:
        raise ValueError("a model whose heads or MLP neurons were pruned has sizes that differ per layer, which a "
                         "GGUF llama/gpt2 file cannot express")
    metadata = family.gguf_metadata(cfg)
    tokens = gguf_tokenizer_metadata(tokenizer, cfg.vocab_size, (meta.get("gguf") or {}).get("tokenizer_pre"))
    from ..compress.lora import merged_state_dict

    state = {**merged_state_dict(model), **_int4_weights(model)}  # LoRA adapters folded in, 4-bit codes as numbers
    pairs = family.gguf_pairs(cfg)
    missing = [pair.ours for pair in pairs if pair.ours not in state]
    if missing:
        raise ValueError(f"cannot export to GGUF: the model has no plain weight '{missing[0]}' (is it quantized?); "
                         "export the floating-point original instead")
    tensors = []
    for pair in pairs:
        for name, value in _to_theirs(pair, state[pair.ours].detach().float().cpu(), cfg).items():
            tensors.append((name, *_encode(gguf, value.numpy(), gguf_type, name in EMBEDDINGS)))
    with atomic_file(path, suffix=".gguf.tmp") as temp:
        writer = gguf.GGUFWriter(str(temp), family.gguf_arch)
        writer.add_name(str(meta.get("name") or path.stem))
        writer.add_file_type(FILE_TYPES[gguf_type])
        if gguf_type in ("q8_0", "q4_1"):
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for key, value in {**metadata, **tokens}.items():
            _add(writer, key, value)
        template = meta.get("chat_template")
        if isinstance(template, str) and template:
            writer.add_chat_template(template)
        for name, data, qtype in tensors:
            writer.add_tensor(name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def _add(writer, key: str, value) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    else:
        writer.add_array(key, list(value))


def _to_theirs(pair: Pair, value: torch.Tensor, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    if pair.kind == ROPE_CONCAT:
        q, k, v = value.split([cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim,
                               cfg.n_kv_head * cfg.head_dim], dim=0)
        parts = [rope_order(q, cfg.n_head, True), rope_order(k, cfg.n_kv_head, True), v]
        return {name: part.contiguous() for name, part in zip(pair.theirs, parts)}
    return {pair.theirs[0]: value.contiguous()}


def _int4_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights a weight-int4 model's 4-bit layers stand for, by state-dict name."""
    return {f"{name}.weight": module.dequantized_weight() for name, module in model.named_modules()
            if isinstance(module, Int4Linear)}


def _encode(gguf, value: np.ndarray, gguf_type: str, embedding: bool = False):
    """(data, ggml type) of one tensor: vectors stay F32; matrices become F16, or Q8_0 / Q4_1 where rows split
    into whole 32-value blocks (else F16), as llama.cpp's own converter does; q4_1 keeps embeddings in Q8_0."""
    types = gguf.GGMLQuantizationType
    if gguf_type == "f32" or value.ndim == 1:
        return value.astype(np.float32), types.F32
    if gguf_type == "q4_1" and value.shape[-1] % 32 == 0 and not embedding:
        return gguf.quants.quantize(value.astype(np.float32), types.Q4_1), types.Q4_1
    if gguf_type == "q4_1":
        gguf_type = "q8_0"
    if gguf_type == "q8_0" and value.shape[-1] % 32 == 0:
        return gguf.quants.quantize(value.astype(np.float32), types.Q8_0), types.Q8_0
    return value.astype(np.float16), types.F16
