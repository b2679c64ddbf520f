"""BERT's Hugging Face names: config.json keys and the name of each weight (model_type 'bert')."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..foreign import CONCAT, ForeignNames, Pair, need, refuse

if TYPE_CHECKING:
    from ...config import ModelConfig


class BertNames(ForeignNames):
    """BertForMaskedLM / BertForSequenceClassification (model_type 'bert'; no GGUF form)."""

    model_type, prefix = "bert", "bert."
    head_prefixes = ("cls.", "classifier.")
    ignored = ("embeddings.position_ids", "cls.seq_relationship.", "cls.predictions.decoder.bias")
    tied_copy = "cls.predictions.decoder.weight"
    fields = {"n_embd": "hidden_size", "vocab_size": "vocab_size", "block_size": "max_position_embeddings",
              "intermediate_size": "intermediate_size", "type_vocab_size": "type_vocab_size",
              "n_layer": "num_hidden_layers"}

    def config(self, hf: dict, where: str) -> dict:
        """ModelConfig fields from a BERT config.json; refuses other activations, relative positions, decoders."""
        need(hf.get("hidden_act", "gelu") == "gelu", where,
             f"hidden_act={hf.get('hidden_act')!r} is not supported (BERT's exact GELU, 'gelu', is)")
        position = hf.get("position_embedding_type", "absolute")
        need(position == "absolute", where,
             f"position_embedding_type={position!r} is not supported (only 'absolute' positions are)")
        need(not hf.get("is_decoder", False), where, "a BERT used as a decoder (is_decoder) is not supported")
        return {"arch": "bert", "n_embd": hf["hidden_size"], "n_layer": hf["num_hidden_layers"],
                "n_head": hf["num_attention_heads"], "intermediate_size": hf.get("intermediate_size"),
                "block_size": hf.get("max_position_embeddings", 512), "type_vocab_size": hf.get("type_vocab_size", 2),
                "norm_eps": hf.get("layer_norm_eps", 1e-12), "dropout": hf.get("hidden_dropout_prob", 0.1),
                "tie_embeddings": hf.get("tie_word_embeddings", True), "position": "learned", "norm": "layernorm",
                "mlp": "gelu", "bias": True, "norm_position": "post", "classifier_bias": True}

    def hf_config(self, cfg: ModelConfig) -> dict:
        """config.json keys of a BERT checkpoint for `cfg`; refuses switches BERT cannot express."""
        refuse(cfg, {"position": "learned", "norm_position": "post", "norm": "layernorm", "mlp": "gelu", "bias": True,
                     "qkv_bias": True}, "bert")
        if cfg.labels:
            refuse(cfg, {"pooling": "cls", "classifier_bias": True},
                   "BertForSequenceClassification (it reads the pooled [CLS] state through a biased classifier)")
        return {"model_type": "bert", "hidden_size": cfg.n_embd, "num_hidden_layers": cfg.n_layer,
                "num_attention_heads": cfg.n_head, "intermediate_size": cfg.intermediate_size, "hidden_act": "gelu",
                "max_position_embeddings": cfg.block_size, "type_vocab_size": cfg.type_vocab_size,
                "layer_norm_eps": cfg.norm_eps, "hidden_dropout_prob": cfg.dropout,
                "attention_probs_dropout_prob": cfg.dropout, "position_embedding_type": "absolute",
                "tie_word_embeddings": cfg.tie_embeddings}

    def architecture(self, cfg: ModelConfig) -> str:
        """The transformers class an export loads as."""
        return "BertForSequenceClassification" if cfg.labels else "BertForMaskedLM"

    def pairs(self, cfg: ModelConfig) -> list[Pair]:
        """Every weight: embeddings, per layer fused q/k/v and the rest, pooler, MLM head, classifier."""
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
