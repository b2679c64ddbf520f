"""GPT-2's foreign names: Hugging Face config.json keys and weight names (model_type 'gpt2'), and llama.cpp's
GGUF gpt2 metadata keys and tensor names."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..foreign import TRANSPOSE, ForeignNames, Pair, gguf_number, need, refuse

if TYPE_CHECKING:
    from ...config import ModelConfig


class GPT2Names(ForeignNames):
    """GPT2LMHeadModel / GPT2ForSequenceClassification, and llama.cpp's GGUF gpt2."""

    model_type, prefix = "gpt2", "transformer."
    head_prefixes = ("lm_head.", "score.")
    ignored = (".attn.bias", ".attn.masked_bias")
    tied_copy = "lm_head.weight"
    fields = {"n_embd": "n_embd", "vocab_size": "vocab_size", "block_size": "n_positions",
              "intermediate_size": "n_inner", "n_layer": "n_layer"}

    def config(self, hf: dict, where: str) -> dict:
        """ModelConfig fields from a GPT-2 config.json; refuses other activations, scalings, cross-attention."""
        act = hf.get("activation_function", "gelu_new")
        need(act in ("gelu_new", "gelu_pytorch_tanh"), where,
             f"activation_function={act!r} is not supported (lmforge's GPT-2 uses the tanh GELU: gelu_new)")
        need(hf.get("scale_attn_weights", True) and not hf.get("scale_attn_by_inverse_layer_idx", False), where,
             "only the standard 1/sqrt(head size) attention scaling is supported")
        need(not hf.get("add_cross_attention", False), where, "cross-attention (add_cross_attention) is not supported")
        return {"arch": "gpt", "n_embd": hf["n_embd"], "n_layer": hf["n_layer"], "n_head": hf["n_head"],
                "block_size": hf.get("n_positions", 1024), "intermediate_size": hf.get("n_inner") or 4 * hf["n_embd"],
                "norm_eps": hf.get("layer_norm_epsilon", 1e-5), "dropout": hf.get("resid_pdrop", 0.0),
                "tie_embeddings": hf.get("tie_word_embeddings", True), "position": "learned", "norm": "layernorm",
                "mlp": "gelu", "bias": True, "classifier_bias": False}

    def hf_config(self, cfg: ModelConfig) -> dict:
        """config.json keys of a GPT-2 checkpoint for `cfg`; refuses switches GPT-2 cannot express."""
        refuse(cfg, {"position": "learned", "norm": "layernorm", "mlp": "gelu", "bias": True, "qkv_bias": True},
               "gpt2")
        if cfg.labels:
            refuse(cfg, {"classifier_bias": False}, "GPT2ForSequenceClassification (its score layer has no bias)")
        return {"model_type": "gpt2", "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
                "n_positions": cfg.block_size, "n_inner": cfg.intermediate_size, "activation_function": "gelu_new",
                "layer_norm_epsilon": cfg.norm_eps, "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout,
                "attn_pdrop": cfg.dropout, "tie_word_embeddings": cfg.tie_embeddings}

    def architecture(self, cfg: ModelConfig) -> str:
        """The transformers class an export loads as."""
        return "GPT2ForSequenceClassification" if cfg.labels else "GPT2LMHeadModel"

    gguf_arch = "gpt2"

    def gguf_config(self, meta: dict, where: str) -> dict:
        """ModelConfig fields from a GGUF gpt2 file's metadata."""
        get = lambda key, default=None: gguf_number(meta, "gpt2", key, where, default)  # noqa: E731
        n_embd = int(get("embedding_length"))
        return {"arch": "gpt", "n_embd": n_embd, "n_layer": int(get("block_count")),
                "n_head": int(get("attention.head_count")), "block_size": int(get("context_length")),
                "intermediate_size": int(get("feed_forward_length", 4 * n_embd)),
                "norm_eps": float(get("attention.layer_norm_epsilon", 1e-5)), "position": "learned",
                "norm": "layernorm", "mlp": "gelu", "bias": True, "classifier_bias": False}

    def gguf_metadata(self, cfg: ModelConfig) -> dict[str, int | float]:
        """The gpt2.* metadata of a GGUF export."""
        refuse(cfg, {"position": "learned", "norm": "layernorm", "mlp": "gelu", "bias": True}, "GGUF gpt2")
        return {"gpt2.context_length": cfg.block_size, "gpt2.embedding_length": cfg.n_embd,
                "gpt2.feed_forward_length": cfg.intermediate_size, "gpt2.block_count": cfg.n_layer,
                "gpt2.attention.head_count": cfg.n_head, "gpt2.attention.layer_norm_epsilon": float(cfg.norm_eps)}

    def gguf_pairs(self, cfg: ModelConfig) -> list[Pair]:
        """Every weight, lmforge name beside the GGUF tensor name."""
        # llama.cpp stores GPT-2's Conv1D weights already transposed to (out, in), lmforge's own layout
        out = [Pair("wte.weight", ("token_embd.weight",)), Pair("wpe.weight", ("position_embd.weight",))]
        for i in range(cfg.n_layer):
            for ours, theirs in [("ln_1", "attn_norm"), ("ln_2", "ffn_norm"), ("attn.qkv", "attn_qkv"),
                                 ("attn.proj", "attn_output"), ("mlp.up", "ffn_up"), ("mlp.down", "ffn_down")]:
                out += [Pair(f"h.{i}.{ours}.{p}", (f"blk.{i}.{theirs}.{p}",)) for p in ("weight", "bias")]
        out += [Pair(f"ln_f.{p}", (f"output_norm.{p}",)) for p in ("weight", "bias")]
        if not cfg.tie_embeddings:
            out.append(Pair("lm_head.weight", ("output.weight",), role="lm"))
        return out

    def pairs(self, cfg: ModelConfig) -> list[Pair]:
        """Every weight, lmforge name beside the Hugging Face name (Conv1D weights transposed)."""
        t = "transformer."
        out = [Pair("wte.weight", (t + "wte.weight",)), Pair("wpe.weight", (t + "wpe.weight",))]
        for i in range(cfg.n_layer):
            ours, theirs = f"h.{i}.", f"{t}h.{i}."
            for a, b in [("ln_1", "ln_1"), ("ln_2", "ln_2")]:
                out += [Pair(f"{ours}{a}.{p}", (f"{theirs}{b}.{p}",)) for p in ("weight", "bias")]
            for a, b in [("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"), ("mlp.up", "mlp.c_fc"),
                         ("mlp.down", "mlp.c_proj")]:
                out += [Pair(f"{ours}{a}.weight", (f"{theirs}{b}.weight",), TRANSPOSE),
                        Pair(f"{ours}{a}.bias", (f"{theirs}{b}.bias",))]
        out += [Pair(f"ln_f.{p}", (f"{t}ln_f.{p}",)) for p in ("weight", "bias")]
        if not cfg.tie_embeddings:
            out.append(Pair("lm_head.weight", ("lm_head.weight",), role="lm"))
        out.append(Pair("classifier.weight", ("score.weight",), role="cls"))
        return out
