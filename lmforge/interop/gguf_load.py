"""Import: a GGUF file (llama.cpp's format; llama or gpt2 architecture) -> an lmforge model, tokenizer, config
and meta (with the file's chat template), dequantized to float32 in memory."""
from __future__ import annotations

from pathlib import Path

import torch
from pydantic import ValidationError
from torch import nn

from ..config import ModelConfig, describe_validation_error
from ..errors import ModelDirError
from ..models import build_model, no_initialization
from ..tokenizer import Tokenizer
from .families import CONCAT, GGUF_FAMILIES, ROPE_CONCAT, Family, Pair
from .gguf_file import dequantize, read_gguf
from .gguf_tokenizer import tokenizer_from_gguf


def rope_order(weight: torch.Tensor, heads: int, to_gguf: bool) -> torch.Tensor:
    """Reorder q or k projection rows between the rotate-half order (Hugging Face, lmforge) and llama.cpp's
    interleaved pairs (its converter permutes them): to_gguf=False undoes the permutation."""
    rows = weight.shape[0]
    half = rows // heads // 2
    shape = (heads, 2, half) if to_gguf else (heads, half, 2)
    return weight.reshape(*shape, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape).contiguous()


def load_gguf(path: str | Path, device: str = "cpu") -> tuple[nn.Module, Tokenizer, ModelConfig, dict]:
    """(model, tokenizer, model config, meta) from a GGUF file of a llama or gpt2 model; meta holds the file's
    chat template under "chat_template"."""
    path = Path(path)
    where = f"'{path}'"
    meta, tensors = read_gguf(path)
    arch = meta.get("general.architecture")
    if arch not in GGUF_FAMILIES:
        raise ModelDirError(f"{where}: general.architecture={arch!r} is not supported; lmforge reads GGUF "
                            f"{' and '.join(GGUF_FAMILIES)} models")
    fam = GGUF_FAMILIES[arch]
    fields = fam.gguf_config(meta, where)
    embedding = tensors.get("token_embd.weight")
    if embedding is None:
        raise ModelDirError(f"{where}: there is no token_embd.weight tensor (the token embeddings)")
    vocab_size = int(embedding.shape[1])
    output = tensors.get("output.weight")
    fields["tie_embeddings"] = output is None
    if arch == "llama":
        fields["bias"] = "blk.0.attn_q.bias" in tensors
    try:
        cfg = ModelConfig(**fields, vocab_size=vocab_size)
    except ValidationError as error:
        raise ModelDirError(describe_validation_error(error, str(path)).replace("invalid configuration", "unusable values")) from None
    state = _state(tensors, fam, cfg, path)
    if arch == "gpt2" and not cfg.tie_embeddings and torch.equal(state["lm_head.weight"], state["wte.weight"]):
        cfg = cfg.model_copy(update={"tie_embeddings": True})  # llama.cpp's GPT-2 converter writes the tied copy
        del state["lm_head.weight"]
    tokenizer = tokenizer_from_gguf(meta, where)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ModelDirError(f"{where}: the tokenizer has {tokenizer.vocab_size} tokens but token_embd.weight only "
                            f"{cfg.vocab_size} rows")
    with no_initialization():  # every weight is loaded below, strictly
        model = build_model(cfg)
    if cfg.tie_embeddings and "lm_head.weight" in model.state_dict():
        state["lm_head.weight"] = state["wte.weight"]  # one shared parameter: loading it twice is harmless
    model.load_state_dict(state, strict=True)
    info = {"name": meta.get("general.name") or path.stem,
            "source": {"format": "gguf", "architecture": arch, "file": path.name,
                       "tensor_types": sorted({t.tensor_type.name for t in tensors.values()})},
            "gguf": {"tokenizer_pre": meta.get("tokenizer.ggml.pre")}}
    template = meta.get("tokenizer.chat_template")
    if isinstance(template, str) and template:
        info["chat_template"] = template
    return model.to(device).eval(), tokenizer, cfg, info


def _state(tensors: dict, fam: Family, cfg: ModelConfig, path: Path) -> dict[str, torch.Tensor]:
    """lmforge's state dict from the file's tensors, every shape checked; tensors left over are an error."""
    model_shapes = {name: tuple(t.shape) for name, t in build_shapes(cfg).items()}
    state, used = {}, set()
    for pair in fam.gguf_pairs(cfg):
        missing = [name for name in pair.theirs if name not in tensors]
        if missing:
            raise ModelDirError(f"'{path}' lacks the tensor '{missing[0]}', which a {fam.gguf_arch} model with "
                                f"{cfg.n_layer} blocks needs")
        value = _to_ours(pair, [dequantize(tensors[n], path) for n in pair.theirs], cfg)
        want = model_shapes[pair.ours]
        if tuple(value.shape) != want:
            raise ModelDirError(f"'{path}': tensor '{pair.theirs[0]}' has the shape {tuple(value.shape)} where the "
                                f"metadata implies {want} (for {pair.ours})")
        state[pair.ours] = value
        used.update(pair.theirs)
    extra = sorted(n for n in tensors if n not in used and not n.startswith("rope_"))
    if extra:
        raise ModelDirError(f"'{path}' holds {len(extra)} tensors lmforge cannot place (e.g. {', '.join(extra[:3])}); "
                            f"is llama.block_count right, or is this a variant lmforge does not support?")
    return state


def build_shapes(cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The parameter shapes of a model of `cfg`, without allocating its weights (built on the meta device)."""
    with torch.device("meta"), no_initialization():
        return build_model(cfg).state_dict()


def _to_ours(pair: Pair, values: list[torch.Tensor], cfg: ModelConfig) -> torch.Tensor:
    if pair.kind == ROPE_CONCAT:
        q, k, v = values
        return torch.cat([rope_order(q, cfg.n_head, False), rope_order(k, cfg.n_kv_head, False), v], dim=0)
    if pair.kind == CONCAT:
        return torch.cat(values, dim=0)
    return values[0]
