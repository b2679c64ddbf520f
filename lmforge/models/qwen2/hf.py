"""Qwen2's Hugging Face names: config.json keys and the name of each weight (model_type 'qwen2')."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..foreign import CONCAT, Pair, need, refuse
from ..llama.hf import RotaryNames, rotary_fields

if TYPE_CHECKING:
    from ...config import ModelConfig


class Qwen2Names(RotaryNames):
    """Qwen2ForCausalLM / Qwen2ForSequenceClassification: Llama's names, with biases on q_proj, k_proj, v_proj."""

    model_type = "qwen2"

    def config(self, hf: dict, where: str) -> dict:
        """ModelConfig fields from a Qwen2 config.json; refuses sliding-window attention and scaled rotary positions."""
        sliding = hf.get("use_sliding_window", False) or "sliding_attention" in (hf.get("layer_types") or ())
        need(not sliding, where, "sliding-window attention (use_sliding_window) is not supported; lmforge's "
                                 "attention sees the whole context")
        return {"arch": "qwen2", **rotary_fields(hf, where, "Qwen2"),
                "block_size": hf.get("max_position_embeddings", 32768), "bias": False, "qkv_bias": True}

    def hf_config(self, cfg: ModelConfig) -> dict:
        """config.json keys of a Qwen2 checkpoint for `cfg`; refuses switches Qwen2 cannot express."""
        refuse(cfg, {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False, "qkv_bias": True}, "qwen2")
        if cfg.labels:
            refuse(cfg, {"classifier_bias": False}, "Qwen2ForSequenceClassification (its score layer has no bias)")
        return {"model_type": "qwen2", "hidden_size": cfg.n_embd, "num_hidden_layers": cfg.n_layer,
                "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_kv_head,
                "intermediate_size": cfg.intermediate_size, "hidden_act": "silu",
                "max_position_embeddings": cfg.block_size, "rms_norm_eps": cfg.norm_eps,
                "rope_theta": cfg.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
                "use_sliding_window": False, "attention_dropout": cfg.dropout,
                "tie_word_embeddings": cfg.tie_embeddings}

    def architecture(self, cfg: ModelConfig) -> str:
        """The transformers class an export loads as."""
        return "Qwen2ForSequenceClassification" if cfg.labels else "Qwen2ForCausalLM"

    def pairs(self, cfg: ModelConfig) -> list[Pair]:
        """Every weight: embeddings, per layer two RMSNorms, fused biased q/k/v, o_proj, SwiGLU; final norm, head."""
        out = [Pair("wte.weight", ("model.embed_tokens.weight",))]
        for i in range(cfg.n_layer):
            ours, theirs = f"h.{i}.", f"model.layers.{i}.self_attn."
            out.append(Pair(f"{ours}ln_1.weight", (f"model.layers.{i}.input_layernorm.weight",)))
            out.append(Pair(f"{ours}ln_2.weight", (f"model.layers.{i}.post_attention_layernorm.weight",)))
            # HF's q/k rows are already in the rotate-half order lmforge's rotary uses: no permutation
            out += [Pair(f"{ours}attn.qkv.{p}", tuple(f"{theirs}{n}_proj.{p}" for n in "qkv"), CONCAT)
                    for p in ("weight", "bias")]
            out.append(Pair(f"{ours}attn.proj.weight", (f"{theirs}o_proj.weight",)))
            out += [Pair(f"{ours}mlp.{n}.weight", (f"model.layers.{i}.mlp.{n}_proj.weight",))
                    for n in ("gate", "up", "down")]
        out.append(Pair("ln_f.weight", ("model.norm.weight",)))
        if not cfg.tie_embeddings:
            out.append(Pair("lm_head.weight", ("lm_head.weight",), role="lm"))
        out.append(Pair("classifier.weight", ("score.weight",), role="cls"))
        return out
