"""The [model] section of a recipe: the architecture (a pydantic model whose defaults follow the family), and
the checks that keep baseline archs (RNNs, TextCNN) and Transformers to their own keys."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .models import ARCHS, DECODER, ENCODER

MAX_VOCAB = 1 << 21  # far above any real vocabulary (the largest in use hold ~256k tokens)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(Section):
    """Architecture. `arch` picks the family; the switches below default from it."""

    arch: Literal[tuple(ARCHS)] = Field(  # the family registry in models/ (one folder per family)
        "gpt", description="Transformers: gpt, llama, qwen2 (decoders), bert (encoder); baselines: lstm, gru, rnn (a "
                           "plain tanh RNN) language models, textcnn (Kim's convolutional classifier)")
    n_layer: int = Field(4, ge=1)
    n_head: int = Field(4, ge=1)
    n_kv_head: int | None = Field(None, ge=1, description="key/value heads (grouped-query attention); default n_head")
    n_embd: int = Field(128, ge=1)
    block_size: int = Field(128, ge=2, description="longest sequence the model sees")
    intermediate_size: int | None = Field(None, ge=1, description="MLP width; default 4*n_embd (GELU) or ~8/3*n_embd (SwiGLU)")
    layer_heads: list[int] | None = Field(None, description="attention heads of each layer when they differ (set by "
                                                            "`lmforge prune --method heads`); default n_head in all")
    layer_intermediate: list[int] | None = Field(None, description="MLP width of each layer when they differ (set by "
                                                                   "`lmforge prune --method neurons`)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    bias: bool | None = None
    qkv_bias: bool | None = Field(None, description="biases on the query/key/value projections even where model.bias "
                                                    "is false (Qwen2); default: model.bias")
    norm: Literal["layernorm", "rmsnorm"] | None = None
    mlp: Literal["gelu", "swiglu"] | None = None
    position: Literal["learned", "rope"] | None = Field(
        None, description="'learned' absolute position embeddings (GPT-2, BERT; the default but for llama) or "
                          "'rope' rotary positions inside attention. For an encoder trained from scratch 'rope' "
                          "learns far faster: its masked-LM leaves the unigram plateau within a few hundred steps")
    tie_embeddings: bool = True
    norm_eps: float = Field(1e-5, gt=0)
    norm_position: Literal["post", "pre"] = Field(
        "post", description="arch 'bert' only: 'post' = BERT's norm(x + sublayer(x)); 'pre' = x + sublayer(norm(x)) "
                            "with a final LayerNorm after the last block (trains more easily at small batch/compute)")
    pooling: Literal["cls", "mean", "max"] = Field(
        "cls", description="what the classifier reads. arch 'bert': the [CLS] state through the pooler (BERT's way) "
                           "or 'mean' of the real tokens' states (as sentence encoders do); a fine-tuning from "
                           "model.init may choose either. arch lstm/gru/rnn: 'cls' the final states (of both "
                           "directions), 'mean' or 'max' over the real tokens' outputs")
    rope_theta: float = Field(10000.0, gt=0, description="rotary positions' base (qwen2 defaults to 1e6)")
    type_vocab_size: int = Field(2, ge=1, description="BERT token-type (segment) embeddings")
    vocab_size: int = Field(0, ge=0, le=MAX_VOCAB, description="set from the tokenizer; leave 0")
    labels: list[str] = Field(default_factory=list, description="class names of a classification head (set from the data)")
    classifier_bias: bool = Field(True, description="whether the classification head has a bias (Hugging Face's GPT-2 "
                                                    "and Llama classifiers have none)")
    init: str | None = Field(None, description="a model directory to start from (fine-tuning)")
    vectors: str | None = Field(None, description="pretrained vectors to start a fresh model's token embeddings "
                                "from (Kim's CNN-non-static): a word-vectors text file (GloVe; word2vec or "
                                "fastText .vec text format) or a model (model directory, Hugging Face directory, "
                                "GGUF file) whose input embeddings are read through its own tokenizer. The "
                                "vectors are scaled to the arch's random rows; tokens without one keep theirs. "
                                "model.n_embd must equal their dimension")
    vectors_layer: Literal["input", "output"] = Field(
        "input", description="which vectors of a model given as model.vectors: 'input' its input embedding rows "
                             "(a token it holds, else the mean of its pieces' rows), 'output' its final hidden "
                             "states for each token's text read alone, mean-pooled (a sentence encoder's "
                             "embedding of the word)")
    bptt: int | None = Field(None, ge=1, description="arch lstm/gru/rnn only: truncate backpropagation through time "
                                                     "every bptt steps of a window (the state still flows on); "
                                                     "default: the whole window (block_size)")
    bidirectional: bool | None = Field(None, description="arch lstm/gru/rnn only: a second recurrence reads each text "
                                                         "backwards (a classifier only: it sees the future, so it "
                                                         "cannot be a language model); default false")
    kernel_sizes: list[int] | None = Field(None, description="arch textcnn only: convolution widths (default [3, 4, 5])")
    n_filters: int | None = Field(None, ge=1, description="arch textcnn only: filters per width (default 100)")
    batch_norm: bool | None = Field(None, description="arch textcnn only: batch normalization after each "
                                                      "convolution (default true)")
    wide_conv: bool | None = Field(None, description="arch textcnn only: pad each text with width-1 zero vectors at "
                                                     "both ends, as Kim's code does, so the filters see where it "
                                                     "starts and ends and each token at every offset of a window "
                                                     "(default false: windows inside the text)")
    embd_dropout: float | None = Field(None, ge=0.0, lt=1.0, description="arch textcnn, lstm, gru, rnn only: dropout "
                                       "on the token embeddings (default: 0 for textcnn, model.dropout for the RNNs)")

    @model_validator(mode="after")
    def _fill_arch_defaults(self):
        family = ARCHS[self.arch]
        if not family.transformer:
            check_baseline_keys(self)
            return self
        wrong = [key for key in BASELINE_KEYS if getattr(self, key) is not None]
        if wrong:
            raise ValueError(f"model.{wrong[0]} is a key of the baseline archs (lstm, gru, rnn, textcnn); "
                             f"arch '{self.arch}' has no use for it: remove it")
        for key, value in family.defaults.items():  # the family's switches, where the config leaves them unset
            if getattr(self, key) is None or key not in self.model_fields_set:
                object.__setattr__(self, key, value)
        if self.qkv_bias is None:
            object.__setattr__(self, "qkv_bias", self.bias)
        if self.n_kv_head is None:
            object.__setattr__(self, "n_kv_head", self.n_head)
        if self.intermediate_size is None:
            if self.mlp == "swiglu":
                size = int(8 * self.n_embd / 3)
                size = 64 * ((size + 63) // 64) if self.n_embd >= 64 else size
            else:
                size = 4 * self.n_embd
            object.__setattr__(self, "intermediate_size", size)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head={self.n_head} must be divisible by n_kv_head={self.n_kv_head}")
        if self.position == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError("rotary positions need an even head size (n_embd / n_head)")
        self._check_layer_sizes()
        if family.kind != ENCODER and self.pooling != "cls":
            raise ValueError(f"pooling is an arch 'bert' switch (and the RNNs'); arch '{self.arch}' classifies "
                             "from the last real token")
        if self.pooling == "max":
            raise ValueError("model.pooling='max' is for the RNNs (lstm, gru, rnn); arch 'bert' pools 'cls' or 'mean'")
        if family.kind != ENCODER and self.norm_position == "pre":
            raise ValueError(f"norm_position is an arch 'bert' switch; arch '{self.arch}' blocks are pre-norm already")
        return self

    @model_validator(mode="after")
    def _check_vectors(self):
        if self.vectors and self.init:
            raise ValueError("model.vectors starts a fresh model's embeddings, but model.init loads a whole model "
                             "(its embeddings included): set one of them")
        if self.vectors_layer != "input" and not self.vectors:
            raise ValueError("model.vectors_layer says which vectors of model.vectors are read: set model.vectors "
                             "too, or remove it")
        return self

    @property
    def is_transformer(self) -> bool:
        """Whether the arch is a Transformer (not an RNN or TextCNN baseline)."""
        return ARCHS[self.arch].transformer

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def heads_at(self, layer: int) -> int:
        """Query heads of block `layer` (fewer than n_head after head pruning)."""
        return self.layer_heads[layer] if self.layer_heads else self.n_head

    def kv_heads_at(self, layer: int) -> int:
        """Key/value heads of block `layer`: pruning keeps whole groups, so the GQA ratio stays n_head / n_kv_head."""
        return self.heads_at(layer) * self.n_kv_head // self.n_head

    def intermediate_at(self, layer: int) -> int:
        """MLP width of block `layer`."""
        return self.layer_intermediate[layer] if self.layer_intermediate else self.intermediate_size

    def _check_layer_sizes(self) -> None:
        group = self.n_head // self.n_kv_head
        for key, limit in (("layer_heads", self.n_head), ("layer_intermediate", None)):
            sizes = getattr(self, key)
            if sizes is None:
                continue
            if len(sizes) != self.n_layer:
                raise ValueError(f"model.{key} has {len(sizes)} entries but the model has n_layer={self.n_layer}: "
                                 "give one per layer, or leave it unset")
            if any(size < 1 or (limit is not None and size > limit) for size in sizes):
                raise ValueError(f"model.{key}={sizes}: each entry must be at least 1"
                                 + (f" and at most n_head={limit}" if limit else ""))
            if key == "layer_heads" and any(size % group for size in sizes):
                raise ValueError(f"model.layer_heads={sizes}: with n_head={self.n_head} and n_kv_head="
                                 f"{self.n_kv_head} each entry must be a multiple of {group} (whole key/value groups)")


BASELINE_ARCHS = tuple(arch for arch, family in ARCHS.items() if not family.transformer)
# None unless a baseline arch
BASELINE_KEYS = ("bptt", "bidirectional", "kernel_sizes", "n_filters", "batch_norm", "wide_conv", "embd_dropout")
# keys only the Transformers read; on a baseline arch they must stay at their defaults
TRANSFORMER_KEYS = ("n_head", "n_kv_head", "intermediate_size", "bias", "qkv_bias", "norm", "mlp", "position",
                    "rope_theta", "norm_eps", "norm_position", "pooling", "type_vocab_size", "layer_heads",
                    "layer_intermediate")


def check_baseline_keys(cfg: ModelConfig) -> None:
    """Fill an RNN's or TextCNN's defaults and reject keys that belong to another arch."""
    fields = type(cfg).model_fields
    rnn = ARCHS[cfg.arch].kind == DECODER  # the recurrent LMs (and their classifiers); else TextCNN
    foreign = [key for key in TRANSFORMER_KEYS if getattr(cfg, key) != fields[key].default
               and not (rnn and key == "pooling")]  # an RNN classifier pools too
    cnn_keys = ("kernel_sizes", "n_filters", "batch_norm", "wide_conv")
    own = (("bptt", "bidirectional") if rnn else cnn_keys) + ("embd_dropout",)
    foreign += [key for key in BASELINE_KEYS if key not in own and getattr(cfg, key) is not None]
    if not rnn and cfg.n_layer != fields["n_layer"].default:
        foreign.append("n_layer")
    if foreign:
        raise ValueError(f"arch '{cfg.arch}' does not use model.{', model.'.join(foreign)} (keys of "
                         f"{'the Transformers or textcnn' if rnn else 'the Transformers or the RNNs'}): remove "
                         f"{'it' if len(foreign) == 1 else 'them'}")
    if cfg.embd_dropout is None:  # the RNNs always dropped out their embeddings at model.dropout
        object.__setattr__(cfg, "embd_dropout", cfg.dropout if rnn else 0.0)
    if rnn:
        if cfg.bidirectional is None:
            object.__setattr__(cfg, "bidirectional", False)
        if cfg.bptt is not None and cfg.bptt > cfg.block_size:
            raise ValueError(f"model.bptt={cfg.bptt} is longer than model.block_size={cfg.block_size}, the training "
                             "window it truncates; use at most block_size, or leave bptt unset")
        return
    if cfg.kernel_sizes is None:
        object.__setattr__(cfg, "kernel_sizes", [3, 4, 5])
    if cfg.n_filters is None:
        object.__setattr__(cfg, "n_filters", 100)
    if cfg.batch_norm is None:
        object.__setattr__(cfg, "batch_norm", True)
    if cfg.wide_conv is None:
        object.__setattr__(cfg, "wide_conv", False)
    if not cfg.kernel_sizes or any(k < 1 for k in cfg.kernel_sizes):
        raise ValueError(f"model.kernel_sizes must be a non-empty list of widths >= 1, got {cfg.kernel_sizes}")
    if max(cfg.kernel_sizes) > cfg.block_size:
        raise ValueError(f"model.kernel_sizes has a width {max(cfg.kernel_sizes)} wider than model.block_size="
                         f"{cfg.block_size} (the longest input): use narrower kernels or a larger block_size")
