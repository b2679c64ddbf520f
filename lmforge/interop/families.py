"""The foreign families lmforge reads and writes: Hugging Face's gpt2, bert and llama (config.json keys and weight
names) and llama.cpp's GGUF gpt2 and llama (metadata keys and tensor names), one class per family holding both
tables, which import and export both use. A family folder in models/ brings its own table (models/qwen2/hf.py)
and the registry adds it."""
from __future__ import annotations

import numpy as np

from ..config import ModelConfig
from ..errors import ModelDirError
from ..models import FAMILIES as MODEL_FAMILIES
from ..models.foreign import CONCAT, COPY, ROPE_CONCAT, TRANSPOSE, Pair  # noqa: F401  (the table vocabulary, re-exported)
from ..models.foreign import ForeignNames as Family
from ..models.foreign import need as _need
from ..models.foreign import refuse as _refuse


def _gguf_get(meta: dict, arch: str, key: str, where: str, default=None):
    value = meta.get(f"{arch}.{key}", default)
    if value is None:
        raise ModelDirError(f"{where}: the metadata has no '{arch}.{key}', which a GGUF {arch} model needs")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ModelDirError(f"{where}: '{arch}.{key}'={value!r} is not a usable number")
    if isinstance(value, float):  # stored as float32: the shortest decimal that is that float32 (1e-05, not 9.99e-06)
        value = float(str(np.float32(value)))
    return value


class GPT2(Family):
    model_type, prefix = "gpt2", "transformer."
    head_prefixes = ("lm_head.", "score.")
    ignored = (".attn.bias", ".attn.masked_bias")
    tied_copy = "lm_head.weight"
    fields = {"n_embd": "n_embd", "vocab_size": "vocab_size", "block_size": "n_positions",
              "intermediate_size": "n_inner", "n_layer": "n_layer"}

    def config(self, hf: dict, where: str) -> dict:
        act = hf.get("activation_function", "gelu_new")
        _need(act in ("gelu_new", "gelu_pytorch_tanh"), where,
              f"activation_function={act!r} is not supported (lmforge's GPT-2 uses the tanh GELU: gelu_new)")
        _need(hf.get("scale_attn_weights", True) and not hf.get("scale_attn_by_inverse_layer_idx", False), where,
              "only the standard 1/sqrt(head size) attention scaling is supported")
        _need(not hf.get("add_cross_attention", False), where, "cross-attention (add_cross_attention) is not supported")
        return {"arch": "gpt", "n_embd": hf["n_embd"], "n_layer": hf["n_layer"], "n_head": hf["n_head"],
                "block_size": hf.get("n_positions", 1024), "intermediate_size": hf.get("n_inner") or 4 * hf["n_embd"],
                "norm_eps": hf.get("layer_norm_epsilon", 1e-5), "dropout": hf.get("resid_pdrop", 0.0),
                "tie_embeddings": hf.get("tie_word_embeddings", True), "position": "learned", "norm": "layernorm",
                "mlp": "gelu", "bias": True, "classifier_bias": False}

    def hf_config(self, cfg: ModelConfig) -> dict:
        _refuse(cfg, {"position": "learned", "norm": "layernorm", "mlp": "gelu", "bias": True, "qkv_bias": True},
                "gpt2")
        if cfg.labels:
            _refuse(cfg, {"classifier_bias": False}, "GPT2ForSequenceClassification (its score layer has no bias)")
        return {"model_type": "gpt2", "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
                "n_positions": cfg.block_size, "n_inner": cfg.intermediate_size, "activation_function": "gelu_new",
                "layer_norm_epsilon": cfg.norm_eps, "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout,
                "attn_pdrop": cfg.dropout, "tie_word_embeddings": cfg.tie_embeddings}

    def architecture(self, cfg: ModelConfig) -> str:
        return "GPT2ForSequenceClassification" if cfg.labels else "GPT2LMHeadModel"

    gguf_arch = "gpt2"

    def gguf_config(self, meta: dict, where: str) -> dict:
        get = lambda key, default=None: _gguf_get(meta, "gpt2", key, where, default)  # noqa: E731
        n_embd = int(get("embedding_length"))
        return {"arch": "gpt", "n_embd": n_embd, "n_layer": int(get("block_count")),
                "n_head": int(get("attention.head_count")), "block_size": int(get("context_length")),
                "intermediate_size": int(get("feed_forward_length", 4 * n_embd)),
                "norm_eps": float(get("attention.layer_norm_epsilon", 1e-5)), "position": "learned",
                "norm": "layernorm", "mlp": "gelu", "bias": True, "classifier_bias": False}

    def gguf_metadata(self, cfg: ModelConfig) -> dict[str, int | float]:
        _refuse(cfg, {"position": "learned", "norm": "layernorm", "mlp": "gelu", "bias": True}, "GGUF gpt2")
        return {"gpt2.context_length": cfg.block_size, "gpt2.embedding_length": cfg.n_embd,
                "gpt2.feed_forward_length": cfg.intermediate_size, "gpt2.block_count": cfg.n_layer,
                "gpt2.attention.head_count": cfg.n_head, "gpt2.attention.layer_norm_epsilon": float(cfg.norm_eps)}

    def gguf_pairs(self, cfg: ModelConfig) -> list[Pair]:
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


class Bert(Family):
    model_type, prefix = "bert", "bert."
    head_prefixes = ("cls.", "classifier.")
    ignored = ("embeddings.position_ids", "cls.seq_relationship.", "cls.predictions.decoder.bias")
    tied_copy = "cls.predictions.decoder.weight"
    fields = {"n_embd": "hidden_size", "vocab_size": "vocab_size", "block_size": "max_position_embeddings",
              "intermediate_size": "intermediate_size", "type_vocab_size": "type_vocab_size",
              "n_layer": "num_hidden_layers"}

    def config(self, hf: dict, where: str) -> dict:
        _need(hf.get("hidden_act", "gelu") == "gelu", where,
              f"hidden_act={hf.get('hidden_act')!r} is not supported (BERT's exact GELU, 'gelu', is)")
        position = hf.get("position_embedding_type", "absolute")
        _need(position == "absolute", where,
              f"position_embedding_type={position!r} is not supported (only 'absolute' positions are)")
        _need(not hf.get("is_decoder", False), where, "a BERT used as a decoder (is_decoder) is not supported")
        return {"arch": "bert", "n_embd": hf["hidden_size"], "n_layer": hf["num_hidden_layers"],
                "n_head": hf["num_attention_heads"], "intermediate_size": hf.get("intermediate_size"),
                "block_size": hf.get("max_position_embeddings", 512), "type_vocab_size": hf.get("type_vocab_size", 2),
                "norm_eps": hf.get("layer_norm_eps", 1e-12), "dropout": hf.get("hidden_dropout_prob", 0.1),
                "tie_embeddings": hf.get("tie_word_embeddings", True), "position": "learned", "norm": "layernorm",
                "mlp": "gelu", "bias": True, "norm_position": "post", "classifier_bias": True}

    def hf_config(self, cfg: ModelConfig) -> dict:
        _refuse(cfg, {"position": "learned", "norm_position": "post", "norm": "layernorm", "mlp": "gelu", "bias": True,
                      "qkv_bias": True}, "bert")
        if cfg.labels:
            _refuse(cfg, {"pooling": "cls", "classifier_bias": True},
                    "BertForSequenceClassification (it reads the pooled [CLS] state through a biased classifier)")
        return {"model_type": "bert", "hidden_size": cfg.n_embd, "num_hidden_layers": cfg.n_layer,
                "num_attention_heads": cfg.n_head, "intermediate_size": cfg.intermediate_size, "hidden_act": "gelu",
                "max_position_embeddings": cfg.block_size, "type_vocab_size": cfg.type_vocab_size,
                "layer_norm_eps": cfg.norm_eps, "hidden_dropout_prob": cfg.dropout,
                "attention_probs_dropout_prob": cfg.dropout, "position_embedding_type": "absolute",
                "tie_word_embeddings": cfg.tie_embeddings}

    def architecture(self, cfg: ModelConfig) -> str:
        return "BertForSequenceClassification" if cfg.labels else "BertForMaskedLM"

    def pairs(self, cfg: ModelConfig) -> list[Pair]:
        e = "bert.embeddings."
        out = [Pair("wte.weight", (e + "word_embeddings.weight",)), Pair("wpe.weight", (e + "position_embeddings.weight",)),
               Pair("wtt.weight", (e + "token_type_embeddings.weight",))]
        out += [Pair(f"ln_emb.{p}", (f"{e}LayerNorm.{p}",)) for p in ("weight", "bias")]
        for i in range(cfg.n_layer):
            ours, theirs = f"h.{i}.", f"bert.encoder.layer.{i}."
            for p in ("weight", "bias"):
                out.append(Pair(f"{ours}attn.qkv.{p}", tuple(f"{theirs}attention.self.{n}.{p}"
                                                             for n in ("query", "key", "value")), CONCAT))
                for a, b in [("attn.proj", "attention.output.dense"), ("ln_1", "attention.output.LayerNorm"),
                             ("mlp.up", "intermediate.dense"), ("mlp.down", "output.dense"), ("ln_2", "output.LayerNorm")]:
                    out.append(Pair(f"{ours}{a}.{p}", (f"{theirs}{b}.{p}",)))
        for p in ("weight", "bias"):
            out.append(Pair(f"pooler.{p}", (f"bert.pooler.dense.{p}",), role="pooler"))
            out.append(Pair(f"mlm_dense.{p}", (f"cls.predictions.transform.dense.{p}",), role="lm"))
            out.append(Pair(f"mlm_ln.{p}", (f"cls.predictions.transform.LayerNorm.{p}",), role="lm"))
            out.append(Pair(f"classifier.{p}", (f"classifier.{p}",), role="cls"))
        out.append(Pair("lm_head.bias", ("cls.predictions.bias",), role="lm"))
        if not cfg.tie_embeddings:
            out.append(Pair("lm_head.weight", ("cls.predictions.decoder.weight",), role="lm"))
        return out


class Llama(Family):
    model_type, prefix = "llama", "model."
    head_prefixes = ("lm_head.", "score.")
    ignored = ("rotary_emb.inv_freq",)
    tied_copy = "lm_head.weight"
    fields = {"n_embd": "hidden_size", "vocab_size": "vocab_size", "intermediate_size": "intermediate_size",
              "n_kv_head": "num_key_value_heads", "n_layer": "num_hidden_layers"}

    def config(self, hf: dict, where: str) -> dict:
        _need(hf.get("hidden_act", "silu") == "silu", where,
              f"hidden_act={hf.get('hidden_act')!r} is not supported (Llama's SwiGLU uses 'silu')")
        rope = hf.get("rope_parameters") or {}
        scaling = hf.get("rope_scaling")
        kind = (scaling or {}).get("rope_type", (scaling or {}).get("type")) if scaling else rope.get("rope_type", "default")
        _need(kind in (None, "default"), where,
              f"rope scaling {kind!r} is not supported (only plain rotary positions, rope_type 'default', are)")
        n_embd, n_head = hf["hidden_size"], hf["num_attention_heads"]
        head_dim = hf.get("head_dim") or n_embd // n_head
        _need(head_dim * n_head == n_embd, where,
              f"head_dim={head_dim} with {n_head} heads does not make hidden_size={n_embd}; lmforge needs them equal")
        bias = bool(hf.get("attention_bias", False))
        _need(bias == bool(hf.get("mlp_bias", False)), where,
              "attention_bias and mlp_bias differ; lmforge has one switch (model.bias) for both")
        return {"arch": "llama", "n_embd": n_embd, "n_layer": hf["num_hidden_layers"], "n_head": n_head,
                "n_kv_head": hf.get("num_key_value_heads") or n_head, "intermediate_size": hf["intermediate_size"],
                "block_size": hf.get("max_position_embeddings", 2048), "norm_eps": hf.get("rms_norm_eps", 1e-6),
                "rope_theta": rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
                "dropout": hf.get("attention_dropout", 0.0), "tie_embeddings": hf.get("tie_word_embeddings", False),
                "position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": bias, "classifier_bias": False}

    def hf_config(self, cfg: ModelConfig) -> dict:
        _refuse(cfg, {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "qkv_bias": cfg.bias}, "llama")
        if cfg.labels:
            _refuse(cfg, {"classifier_bias": False}, "LlamaForSequenceClassification (its score layer has no bias)")
        return {"model_type": "llama", "hidden_size": cfg.n_embd, "num_hidden_layers": cfg.n_layer,
                "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_kv_head, "head_dim": cfg.head_dim,
                "intermediate_size": cfg.intermediate_size, "hidden_act": "silu",
                "max_position_embeddings": cfg.block_size, "rms_norm_eps": cfg.norm_eps,
                "rope_theta": cfg.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
                "attention_bias": cfg.bias, "mlp_bias": cfg.bias, "attention_dropout": cfg.dropout,
                "tie_word_embeddings": cfg.tie_embeddings}

    def architecture(self, cfg: ModelConfig) -> str:
        return "LlamaForSequenceClassification" if cfg.labels else "LlamaForCausalLM"

    gguf_arch = "llama"

    def gguf_config(self, meta: dict, where: str) -> dict:
        get = lambda key, default=None: _gguf_get(meta, "llama", key, where, default)  # noqa: E731
        n_embd, n_head = int(get("embedding_length")), int(get("attention.head_count"))
        _need(n_head > 0 and n_embd % n_head == 0, where,
              f"llama.embedding_length={n_embd} is not a multiple of llama.attention.head_count={n_head}")
        head_dim = n_embd // n_head
        for key in ("rope.dimension_count", "attention.key_length", "attention.value_length"):
            value = int(get(key, head_dim))
            _need(value == head_dim, where, f"llama.{key}={value} differs from the head size {head_dim}; "
                                            "lmforge's Llama rotates and attends over whole heads")
        scaling = meta.get("llama.rope.scaling.type", "none")
        _need(scaling in ("none", None), where, f"rope scaling {scaling!r} is not supported (only plain rotary "
                                                "positions are)")
        _need("llama.expert_count" not in meta or not meta["llama.expert_count"], where,
              "a mixture-of-experts llama (llama.expert_count) is not supported")
        return {"arch": "llama", "n_embd": n_embd, "n_layer": int(get("block_count")), "n_head": n_head,
                "n_kv_head": int(get("attention.head_count_kv", n_head)),
                "intermediate_size": int(get("feed_forward_length")), "block_size": int(get("context_length")),
                "norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-5)),
                "rope_theta": float(get("rope.freq_base", 10000.0)), "position": "rope", "norm": "rmsnorm",
                "mlp": "swiglu", "classifier_bias": False}

    def gguf_metadata(self, cfg: ModelConfig) -> dict[str, int | float]:
        _refuse(cfg, {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu"}, "GGUF llama")
        return {"llama.context_length": cfg.block_size, "llama.embedding_length": cfg.n_embd,
                "llama.feed_forward_length": cfg.intermediate_size, "llama.block_count": cfg.n_layer,
                "llama.attention.head_count": cfg.n_head, "llama.attention.head_count_kv": cfg.n_kv_head,
                "llama.rope.freq_base": float(cfg.rope_theta), "llama.rope.dimension_count": cfg.head_dim,
                "llama.attention.layer_norm_rms_epsilon": float(cfg.norm_eps), "llama.vocab_size": cfg.vocab_size}

    def gguf_pairs(self, cfg: ModelConfig) -> list[Pair]:
        params = ("weight", "bias") if cfg.bias else ("weight",)
        out = [Pair("wte.weight", ("token_embd.weight",))]
        for i in range(cfg.n_layer):
            ours, theirs = f"h.{i}.", f"blk.{i}."
            out.append(Pair(f"{ours}ln_1.weight", (f"{theirs}attn_norm.weight",)))
            out.append(Pair(f"{ours}ln_2.weight", (f"{theirs}ffn_norm.weight",)))
            for p in params:
                out.append(Pair(f"{ours}attn.qkv.{p}", tuple(f"{theirs}attn_{n}.{p}" for n in "qkv"), ROPE_CONCAT))
                out.append(Pair(f"{ours}attn.proj.{p}", (f"{theirs}attn_output.{p}",)))
                out += [Pair(f"{ours}mlp.{n}.{p}", (f"{theirs}ffn_{n}.{p}",)) for n in ("gate", "up", "down")]
        out.append(Pair("ln_f.weight", ("output_norm.weight",)))
        if not cfg.tie_embeddings:
            out.append(Pair("lm_head.weight", ("output.weight",), role="lm"))
        return out

    def pairs(self, cfg: ModelConfig) -> list[Pair]:
        params = ("weight", "bias") if cfg.bias else ("weight",)
        out = [Pair("wte.weight", ("model.embed_tokens.weight",))]
        for i in range(cfg.n_layer):
            ours, theirs = f"h.{i}.", f"model.layers.{i}."
            out.append(Pair(f"{ours}ln_1.weight", (f"{theirs}input_layernorm.weight",)))
            out.append(Pair(f"{ours}ln_2.weight", (f"{theirs}post_attention_layernorm.weight",)))
            for p in params:
                # HF's q/k rows are already in the rotate-half order lmforge's rotary uses: no permutation
                out.append(Pair(f"{ours}attn.qkv.{p}", tuple(f"{theirs}self_attn.{n}_proj.{p}" for n in "qkv"), CONCAT))
                out.append(Pair(f"{ours}attn.proj.{p}", (f"{theirs}self_attn.o_proj.{p}",)))
                out += [Pair(f"{ours}mlp.{n}.{p}", (f"{theirs}mlp.{n}_proj.{p}",)) for n in ("gate", "up", "down")]
        out.append(Pair("ln_f.weight", ("model.norm.weight",)))
        if not cfg.tie_embeddings:
            out.append(Pair("lm_head.weight", ("lm_head.weight",), role="lm"))
        out.append(Pair("classifier.weight", ("score.weight",), role="cls"))
        return out


FOR_ARCH: dict[str, Family] = {"gpt": GPT2(), "bert": Bert(), "llama": Llama()}
FOR_ARCH.update({arch: spec.hf for spec in MODEL_FAMILIES.values() if spec.hf is not None for arch in spec.archs})
FAMILIES: dict[str, Family] = {table.model_type: table for table in FOR_ARCH.values()}


GGUF_FAMILIES: dict[str, Family] = {f.gguf_arch: f for f in FAMILIES.values() if f.gguf_arch}


def family(model_type: object, where: str) -> Family:
    """The Family of a config.json's model_type, or a clear error listing the supported ones."""
    if model_type not in FAMILIES:
        raise ModelDirError(f"{where}: model_type={model_type!r} is not supported; lmforge reads "
                            f"{', '.join(FAMILIES)} checkpoints")
    return FAMILIES[model_type]
