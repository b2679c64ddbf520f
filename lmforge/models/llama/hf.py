"""Llama's foreign names: Hugging Face config.json keys and weight names (model_type 'llama'), and llama.cpp's
GGUF llama metadata keys and tensor names. The two weight tables differ only in names, so both are read from
one list."""
from __future__ import annotations

from abc import ABC
from typing import TYPE_CHECKING

from ..foreign import CONCAT, ROPE_CONCAT, ForeignNames, Pair, gguf_number, need, refuse

if TYPE_CHECKING:
    from ...config import ModelConfig

# lmforge name -> (Hugging Face names, GGUF names) of one layer's tensors; more than one name: fused (q, k, v).
# HF's q/k rows are already in the rotate-half order lmforge's rotary uses (no permutation); GGUF's are
# interleaved (ROPE_CONCAT undoes it on import).
_NORMS = [("ln_1", ("input_layernorm",), ("attn_norm",)), ("ln_2", ("post_attention_layernorm",), ("ffn_norm",))]
_LAYER = [("attn.qkv", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("attn_q", "attn_k", "attn_v")),
          ("attn.proj", ("self_attn.o_proj",), ("attn_output",)),
          ("mlp.gate", ("mlp.gate_proj",), ("ffn_gate",)), ("mlp.up", ("mlp.up_proj",), ("ffn_up",)),
          ("mlp.down", ("mlp.down_proj",), ("ffn_down",))]
# per form: the layer prefix, the fused kind, embeddings, final norm and untied output layer
_FORMS = {"hf": ("model.layers.{i}.", CONCAT, "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"),
          "gguf": ("blk.{i}.", ROPE_CONCAT, "token_embd.weight", "output_norm.weight", "output.weight")}


def _pairs(cfg: ModelConfig, form: str) -> list[Pair]:
    """Every weight of a Llama of this config beside its name in `form` ('hf' or 'gguf')."""
    prefix, fused, embeddings, final_norm, output = _FORMS[form]
    column = 1 if form == "hf" else 2
    params = ("weight", "bias") if cfg.bias else ("weight",)
    out = [Pair("wte.weight", (embeddings,))]
    for i in range(cfg.n_layer):
        theirs = prefix.format(i=i)
        out += [Pair(f"h.{i}.{row[0]}.weight", (f"{theirs}{row[column][0]}.weight",)) for row in _NORMS]
        for p in params:
            for row in _LAYER:
                names = tuple(f"{theirs}{name}.{p}" for name in row[column])
                out.append(Pair(f"h.{i}.{row[0]}.{p}", names, fused) if len(names) > 1 else
                           Pair(f"h.{i}.{row[0]}.{p}", names))
    out.append(Pair("ln_f.weight", (final_norm,)))
    if not cfg.tie_embeddings:
        out.append(Pair("lm_head.weight", (output,), role="lm"))
    return out


def rotary_fields(hf: dict, where: str, family: str) -> dict:
    """The ModelConfig fields a Llama-style config.json (Llama, Qwen2) gives alike, after refusing what lmforge
    cannot run: another activation than SiLU, scaled rotary positions, head_dim x heads != hidden_size."""
    need(hf.get("hidden_act", "silu") == "silu", where,
         f"hidden_act={hf.get('hidden_act')!r} is not supported ({family}'s SwiGLU uses 'silu')")
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type")) if scaling else rope.get("rope_type", "default")
    need(kind in (None, "default"), where,
         f"rope scaling {kind!r} is not supported (only plain rotary positions, rope_type 'default', are)")
    n_embd, n_head = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or n_embd // n_head
    need(head_dim * n_head == n_embd, where,
         f"head_dim={head_dim} with {n_head} heads does not make hidden_size={n_embd}; lmforge needs them equal")
    return {"n_embd": n_embd, "n_layer": hf["num_hidden_layers"], "n_head": n_head,
            "n_kv_head": hf.get("num_key_value_heads") or n_head, "intermediate_size": hf["intermediate_size"],
            "norm_eps": hf.get("rms_norm_eps", 1e-6), "rope_theta": rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
            "dropout": hf.get("attention_dropout", 0.0), "tie_embeddings": hf.get("tie_word_embeddings", False),
            "position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "classifier_bias": False}


class RotaryNames(ForeignNames, ABC):
    """What the Hugging Face checkpoints of Llama-style decoders (Llama, Qwen2) name alike."""

    prefix = "model."
    head_prefixes = ("lm_head.", "score.")
    ignored = ("rotary_emb.inv_freq",)
    tied_copy = "lm_head.weight"
    fields = {"n_embd": "hidden_size", "vocab_size": "vocab_size", "intermediate_size": "intermediate_size",
              "n_kv_head": "num_key_value_heads", "n_layer": "num_hidden_layers"}


class LlamaNames(RotaryNames):
    """LlamaForCausalLM / LlamaForSequenceClassification, and llama.cpp's GGUF llama: both weight tables are
    built from one list (_LAYER)."""

    model_type = "llama"

    def config(self, hf: dict, where: str) -> dict:
        """ModelConfig fields from a Llama config.json; refuses scaled rotary positions and unequal biases."""
        fields = rotary_fields(hf, where, "Llama")
        bias = bool(hf.get("attention_bias", False))
        need(bias == bool(hf.get("mlp_bias", False)), where,
             "attention_bias and mlp_bias differ; lmforge has one switch (model.bias) for both")
        return {"arch": "llama", **fields, "block_size": hf.get("max_position_embeddings", 2048), "bias": bias}

    def hf_config(self, cfg: ModelConfig) -> dict:
        """config.json keys of a Llama checkpoint for `cfg`; refuses switches Llama cannot express."""
        refuse(cfg, {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "qkv_bias": cfg.bias}, "llama")
        if cfg.labels:
            refuse(cfg, {"classifier_bias": False}, "LlamaForSequenceClassification (its score layer has no bias)")
        return {"model_type": "llama", "hidden_size": cfg.n_embd, "num_hidden_layers": cfg.n_layer,
                "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_kv_head, "head_dim": cfg.head_dim,
                "intermediate_size": cfg.intermediate_size, "hidden_act": "silu",
                "max_position_embeddings": cfg.block_size, "rms_norm_eps": cfg.norm_eps,
                "rope_theta": cfg.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
                "attention_bias": cfg.bias, "mlp_bias": cfg.bias, "attention_dropout": cfg.dropout,
                "tie_word_embeddings": cfg.tie_embeddings}

    def architecture(self, cfg: ModelConfig) -> str:
        """The transformers class an export loads as."""
        return "LlamaForSequenceClassification" if cfg.labels else "LlamaForCausalLM"

    gguf_arch = "llama"

    def gguf_config(self, meta: dict, where: str) -> dict:
        """ModelConfig fields from a GGUF llama file's metadata; refuses partial rotary, scaling, experts."""
        get = lambda key, default=None: gguf_number(meta, "llama", key, where, default)  # noqa: E731
        n_embd, n_head = int(get("embedding_length")), int(get("attention.head_count"))
        need(n_head > 0 and n_embd % n_head == 0, where,
             f"llama.embedding_length={n_embd} is not a multiple of llama.attention.head_count={n_head}")
        head_dim = n_embd // n_head
        for key in ("rope.dimension_count", "attention.key_length", "attention.value_length"):
            value = int(get(key, head_dim))
            need(value == head_dim, where, f"llama.{key}={value} differs from the head size {head_dim}; "
                                           "lmforge's Llama rotates and attends over whole heads")
        scaling = meta.get("llama.rope.scaling.type", "none")
        need(scaling in ("none", None), where, f"rope scaling {scaling!r} is not supported (only plain rotary "
                                               "positions are)")
        need("llama.expert_count" not in meta or not meta["llama.expert_count"], where,
             "a mixture-of-experts llama (llama.expert_count) is not supported")
        return {"arch": "llama", "n_embd": n_embd, "n_layer": int(get("block_count")), "n_head": n_head,
                "n_kv_head": int(get("attention.head_count_kv", n_head)),
                "intermediate_size": int(get("feed_forward_length")), "block_size": int(get("context_length")),
                "norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-5)),
                "rope_theta": float(get("rope.freq_base", 10000.0)), "position": "rope", "norm": "rmsnorm",
                "mlp": "swiglu", "classifier_bias": False}

    def gguf_metadata(self, cfg: ModelConfig) -> dict[str, int | float]:
        """The llama.* metadata of a GGUF export."""
        refuse(cfg, {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu"}, "GGUF llama")
        return {"llama.context_length": cfg.block_size, "llama.embedding_length": cfg.n_embd,
                "llama.feed_forward_length": cfg.intermediate_size, "llama.block_count": cfg.n_layer,
                "llama.attention.head_count": cfg.n_head, "llama.attention.head_count_kv": cfg.n_kv_head,
                "llama.rope.freq_base": float(cfg.rope_theta), "llama.rope.dimension_count": cfg.head_dim,
                "llama.attention.layer_norm_rms_epsilon": float(cfg.norm_eps), "llama.vocab_size": cfg.vocab_size}

    def gguf_pairs(self, cfg: ModelConfig) -> list[Pair]:
        """Every weight, lmforge name beside the GGUF tensor name(s)."""
        return _pairs(cfg, "gguf")

    def pairs(self, cfg: ModelConfig) -> list[Pair]:
        """Every weight, lmforge name beside the Hugging Face name(s); the classifier is HF's score layer."""
        return _pairs(cfg, "hf") + [Pair("classifier.weight", ("score.weight",), role="cls")]
