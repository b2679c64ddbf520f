"""Configuration: one pydantic model per section, loaded from TOML with dotted CLI overrides."""
from __future__ import annotations

import difflib
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from .errors import ConfigError
# the [model] section lives in config_model.py; its names stay importable from here
from .config_model import (BASELINE_ARCHS, BASELINE_KEYS, MAX_VOCAB, TRANSFORMER_KEYS,  # noqa: F401
                           ModelConfig, Section, check_baseline_keys)
from .files import read_toml
from .models import ARCHS, CLASSIFIER, ENCODER


# objectives that read data.train (labeled rows; conversations for sft), not data.paths
LABELED_OBJECTIVES = ("classify", "regress", "multilabel", "sft")


MAX_SEED = (1 << 64) - 1  # torch and numpy seeds are unsigned 64-bit


class TokenizerConfig(Section):
    """Which tokenizer to train on the corpus, or `path` to an existing tokenizer.json."""

    kind: Literal["char", "bpe", "wordpiece", "word"] | None = Field(
        None, description="default: char for decoders, wordpiece for bert and textcnn; 'word' is whole words (Kim's "
                          "TextCNN, word-level LMs)")
    vocab_size: int = Field(4096, ge=16, le=MAX_VOCAB, description="target size for bpe / wordpiece; word keeps the "
                                                                   "most frequent words (char takes what the corpus has)")
    path: str | None = None
    lowercase: bool = False
    add_tokens: list[str] = Field(default_factory=list, description="tokens to add to the vocabulary (the embeddings "
                                                                    "grow; new rows start at the mean embedding)")
    add_special_tokens: list[str] = Field(default_factory=list, description="like add_tokens, but never split "
                                                                            "and skipped when decoding")


class DataConfig(Section):
    """Where the text comes from. Empty `paths` means the built-in corpus."""

    paths: list[str] = Field(default_factory=list, description="files, folders or globs of .txt/.jsonl/.csv")
    text_field: str = "text"
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    encoding_errors: Literal["replace", "strict"] = "replace"
    train: str | None = Field(None, description="labeled training set (.csv/.tsv/.jsonl) for classification")
    test: str | None = Field(None, description="labeled test/validation set for classification")
    label_field: str = "label"
    text_pair_field: str | None = None
    scrub: bool = Field(False, description="replace PII in data.paths by typed placeholders before training")
    dedup: bool = Field(False, description="drop exact and near-duplicate documents of data.paths before training")
    dedup_near: float = Field(0.8, gt=0, le=1, description="MinHash Jaccard similarity above which documents are near duplicates")
    max_length: int | None = Field(None, ge=2, description="sft: conversations are cut to this many tokens and "
                                   "packed into rows this wide (default model.block_size, which a chat model "
                                   "from model.init sets to its whole context)")
    contamination: list[str] = Field(default_factory=list, description="evaluation files checked for n-gram overlap "
                                     "with the training text; the result goes into the model card")


class LoRAConfig(Section):
    """LoRA fine-tuning (train.lora.*): low-rank adapters beside frozen linear weights; only the adapters (and a
    classification head) train. Unset rank: no LoRA."""

    rank: int | None = Field(None, ge=1, description="adapter rank r (e.g. 8); unset: no LoRA, every weight trains")
    alpha: float = Field(16.0, gt=0, description="the adapters' update B@A is scaled by alpha / rank")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapters' input")
    targets: list[str] = Field(default_factory=lambda: ["qkv", "proj", "mlp"], min_length=1,
                               description="which linear layers of the blocks get adapters: qkv (attention input), "
                                           "proj (attention output), mlp (all MLP layers), or a layer name such "
                                           "as mlp.up, mlp.down, mlp.gate")


class TrainConfig(Section):
    """Optimisation, schedule, evaluation and checkpointing."""

    objective: Literal["clm", "mlm", "classify", "regress", "multilabel", "sft"] | None = Field(
        None, description="default: clm for decoders, mlm for bert; 'regress' predicts a number (data.label_field), "
                          "'multilabel' a set of tags ('a;b' or a JSON list per row); 'sft' instruction-tunes a "
                          "decoder on conversations (data.train, JSONL), loss on the assistant's tokens only")
    max_steps: int = Field(1000, ge=0)
    batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0)
    min_lr: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.99, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0, description="global norm clip; 0 disables")
    eval_every: int = Field(250, ge=0, description="steps between evaluations; 0 disables")
    eval_steps: int = Field(20, ge=1)
    save_every: int = Field(500, ge=0, description="steps between checkpoints; 0 saves only at the end")
    keep_last: int = Field(2, ge=1)
    patience: int = Field(0, ge=0, description="evaluations without improvement before stopping; 0 disables")
    log_every: int = Field(10, ge=1)
    seed: int = Field(1337, ge=0, le=MAX_SEED)
    threads: int = Field(0, ge=0, description="CPU threads for torch; 0 keeps torch's default")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="bfloat16: autocast on CPU and GPU; float16: autocast with a gradient scaler (GPU)")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1 ...")
    parallel: Literal["none", "ddp", "fsdp"] = Field(
        "none", description="data parallel across the processes torchrun starts: ddp (replicas) or fsdp (FSDP2 "
                            "shards, one group per block); N ranks x grad_accum A = one process with grad_accum N*A")
    compile: bool = Field(False, description="torch.compile the model (says so and runs eagerly when it cannot)")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default", description="torch.compile's mode with train.compile: reduce-overhead replays CUDA graphs; "
                               "max-autotune also times the compiler's own matrix-product kernels (minutes of "
                               "compiling; GPU)")
    onednn_linear: bool = Field(True, description="CPU float32: linear layers' matrix products through oneDNN rather "
                                                  "than MKL (about 2x on AMD CPUs, where MKL runs AVX2 code); the "
                                                  "same products up to float32 rounding")
    checkpoint_activations: bool = Field(False, description="recompute each block's activations in backward instead "
                                                            "of keeping them: less memory, about 1/3 more compute")
    max_bad_steps: int = Field(5, ge=1, description="NaN/Inf steps in a row (each skipped) that abort the run")
    nan_check: Literal["auto", "step", "log"] = Field(
        "auto", description="when the NaN/Inf guard's verdict reaches the host: step (a sync every step) or log (the "
                            "bad step is skipped on the device at once; warning and abort at the next log, eval or "
                            "save step; one process, fused AdamW, not float16); auto: log on CUDA, step elsewhere")
    grad_norms_every: int = Field(100, ge=0, description="steps between per-layer gradient norms (with vanishing/"
                                                          "exploding warnings); 0 disables")
    tensorboard: bool = Field(True, description="also write TensorBoard event files into the run directory")
    mask_prob: float = Field(0.15, gt=0, lt=1, description="MLM: share of tokens masked")
    whole_word_mask: bool = False
    head_lr: float | None = Field(None, gt=0, description="classify: learning rate of the new head (default lr)")
    layer_lr_decay: float = Field(1.0, gt=0, le=1, description="classify: each lower layer's lr is multiplied by this")
    bucket_by_length: bool = Field(False, description="classify, regress, multilabel: batches of texts of similar "
                                                       "length (each shuffled epoch sorted by length within windows "
                                                       "of 50 batches, the batches then shuffled): less padding, "
                                                       "faster on short texts")
    token_dropout: float = Field(0.0, ge=0, lt=1, description="classify, regress, multilabel: replace this share "
                                                              "of each training batch's tokens by [UNK] (word "
                                                              "dropout): trains [UNK] for the unseen words of new "
                                                              "texts and regularizes; never [CLS]/[SEP]/padding")
    ema: float = Field(0.0, ge=0, lt=1, description="keep an exponential moving average of the weights with this "
                                                     "decay (e.g. 0.999: about the last 1000 steps) and evaluate, keep "
                                                     "as best and save it instead of the raw weights; 0 is off")
    class_weights: bool = Field(False, description="classify: weight the loss by inverse class frequency; multilabel: "
                                                    "weight each tag's positives by its negatives / positives")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="clm, mlm, classify (and multilabel): mix this share "
                                                                "of a uniform target into the true one")
    regression_loss: Literal["mse", "huber"] = Field(
        "mse", description="regress: loss on the standardized target (huber: quadratic within 1 std, linear beyond)")
    l1: float = Field(0.0, ge=0, description="L1 penalty l1*sum|w| added to the loss over the weight matrices "
                                             "(not embedding tables, norms or biases); weight_decay is the L2 side")
    distill_teacher: str | None = Field(None, description="a model directory to distill from: the loss mixes KL to its "
                                                          "temperature-softened outputs with the objective's own loss")
    distill_temperature: float = Field(2.0, gt=0, description="distillation: softmax temperature of teacher and student")
    distill_alpha: float = Field(0.5, ge=0, le=1, description="distillation: weight of the KL term (1 - alpha: the "
                                                               "hard-label loss)")
    distill_cache: str | None = Field(None, description="classify distillation: a folder keeping the teacher's "
                                                         "scores of the training texts, found again by content "
                                                         "(teacher, texts, dtype), so a sweep of students pays for "
                                                         "one teacher pass; unset: the run's folder (for resume)")
    distill_tokenizer: Literal["teacher", "own"] = Field(
        "teacher", description="distillation: the student reads the teacher's tokens ('teacher'; clm and mlm need "
                               "it), or, for classify, its own recipe's tokenizer ('own': a word-level TextCNN from a "
                               "BERT teacher), the teacher scoring each training text once with its own")
    lora: LoRAConfig = Field(default_factory=LoRAConfig, description="LoRA fine-tuning (train.lora.rank=8)")

    @model_validator(mode="after")
    def _check_schedule(self):
        if self.min_lr > self.lr:
            if "min_lr" in self.model_fields_set:
                raise ValueError(f"train.min_lr={self.min_lr:g} is above train.lr={self.lr:g}: the schedule decays "
                                 "from lr down to min_lr, so min_lr must be at most lr")
            object.__setattr__(self, "min_lr", self.lr / 10)  # the default floor, scaled to a small lr
        if self.patience and not self.eval_every:
            raise ValueError(f"train.patience={self.patience} stops on evaluations, but train.eval_every=0 "
                             "turns them off; set train.eval_every (e.g. 100) or train.patience=0")
        return self


class RunConfig(Section):
    """Where results go: `dir` is the run directory (default runs/<name>)."""

    name: str = "run"
    dir: str | None = None

    @property
    def path(self) -> Path:
        return Path(self.dir) if self.dir else Path("runs") / self.name


class Config(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    @model_validator(mode="after")
    def _fill_family_defaults(self):
        family = ARCHS[self.model.arch]
        bert, cnn = family.kind == ENCODER, family.kind == CLASSIFIER
        both_ways = bool(self.model.bidirectional)
        if self.tokenizer.kind is None:
            object.__setattr__(self.tokenizer, "kind", family.tokenizer)
        if self.train.objective is None:
            object.__setattr__(self.train, "objective", "classify" if both_ways else family.objective)
        if both_ways and self.train.objective not in LABELED_OBJECTIVES:
            raise ValueError(f"a bidirectional {self.model.arch} reads each text backwards too, so it cannot predict "
                             f"the next token: use train.objective 'classify' (or regress, multilabel), not "
                             f"'{self.train.objective}', or model.bidirectional=false")
        if cnn and self.train.objective != "classify":
            raise ValueError(f"arch 'textcnn' is a classifier: use train.objective 'classify', not "
                             f"'{self.train.objective}'")
        if bert and self.train.objective == "clm":
            raise ValueError("arch 'bert' is an encoder: use train.objective 'mlm' or 'classify', not 'clm'")
        if self.train.objective == "sft" and (bert or cnn):
            raise ValueError(f"train.objective 'sft' tunes a decoder (gpt, llama); model.arch '{self.model.arch}' "
                             "is not one")
        if not bert and self.train.objective == "mlm":
            raise ValueError(f"arch '{self.model.arch}' is a decoder: use train.objective 'clm' or 'classify', not 'mlm'")
        labeled = self.train.objective in LABELED_OBJECTIVES
        has_test = labeled and self.data.test
        if self.train.patience and self.data.val_fraction == 0 and not has_test:
            raise ValueError(f"train.patience={self.train.patience} needs validation data, but data.val_fraction=0"
                             + (" and data.test is not set" if labeled else "")
                             + "; set data.val_fraction (e.g. 0.1) or train.patience=0")
        if self.train.ema and self.train.parallel == "fsdp":
            raise ValueError("train.ema is not available with train.parallel=fsdp (the average would need whole "
                             "weights); use train.parallel=ddp or train.ema=0")
        if self.train.token_dropout and self.train.objective not in ("classify", "regress", "multilabel"):
            raise ValueError(f"train.token_dropout replaces tokens of the texts to classify (objectives classify, "
                             f"regress, multilabel); objective '{self.train.objective}' has none: leave it 0")
        if self.train.objective == "regress" and self.train.label_smoothing:
            raise ValueError("train.label_smoothing smooths class targets; objective 'regress' predicts a number: "
                             "leave it 0")
        return self

    @model_validator(mode="after")
    def _check_distillation(self):
        train = self.train
        if train.distill_tokenizer == "own" and train.objective != "classify":
            raise ValueError(f"train.distill_tokenizer='own' is for objective 'classify' (the teacher scores each text "
                             f"with its own tokenizer); '{train.objective}' compares the outputs token by token, so "
                             "the student must read the teacher's tokens: leave train.distill_tokenizer='teacher'")
        return self


def describe_validation_error(error: ValidationError, source: str) -> str:
    """A pydantic error as lines a config author reads: each bad key, what is wrong, and close allowed keys."""
    lines = [f"invalid configuration ({source}):"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            section = ".".join(map(str, item["loc"][:-1])) or None
            allowed = _allowed_keys(section)
            lines.append(f"  unknown key '{key}'{_suggest(str(item['loc'][-1]), allowed, section)}; "
                         f"allowed here: {', '.join(allowed)}")
        else:
            value = item.get("input")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            lines.append(f"  {key}: {item['msg']}{shown}")
    return "\n".join(lines)


def _suggest(name: str, allowed: list[str], section: Any = None) -> str:
    """' (did you mean 'train.lr'?)' for the allowed key closest to a misspelt one, else ''."""
    close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
    if not close:
        return ""
    return f" (did you mean '{section}.{close[0]}'?)" if section else f" (did you mean '{close[0]}'?)"


def _allowed_keys(section: Any) -> list[str]:
    """The keys of a section ('train') or a nested one ('train.lora'); the sections for None."""
    model = Config
    for part in str(section).split(".") if section else []:
        field = model.model_fields.get(part)
        if field is None or not _is_section(field.annotation):
            return list(Config.model_fields) if model is Config else list(model.model_fields)
        model = field.annotation
    return list(model.model_fields)


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def parse_value(text: str) -> Any:
    """Read an override's value as TOML (numbers, booleans, lists, quoted strings); else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` (or nested `section.sub.key=value`, e.g. train.lora.rank=8) strings to a raw
    config dict (in place; also returned)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form section.key=value (e.g. train.lr=3e-4)")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) < 2 or not all(parts):
            raise ConfigError(f"override key '{key}' must be section.key, e.g. train.max_steps=2000 "
                              f"(sections: {', '.join(Config.model_fields)})")
        section = parts[0]
        if section not in Config.model_fields:
            raise ConfigError(f"unknown section '{section}' in override '{item}'"
                              f"{_suggest(section, list(Config.model_fields))}; sections: {', '.join(Config.model_fields)}")
        target, model = raw.setdefault(section, {}), Config.model_fields[section].annotation
        if not isinstance(target, dict):
            raise ConfigError(f"override '{item}': '{section}' must be a table of keys, not {target!r}")
        for depth, name in enumerate(parts[1:-1], start=1):
            where = ".".join(parts[:depth + 1])
            field = model.model_fields.get(name)
            if field is None or not _is_section(field.annotation):
                nested = [k for k, f in model.model_fields.items() if _is_section(f.annotation)]
                raise ConfigError(f"override key '{key}': '{where}' is not a section of keys"
                                  + (f" (the sections inside '{'.'.join(parts[:depth])}': "
                                     f"{', '.join('.'.join(parts[:depth] + [k]) for k in nested)})" if nested else
                                     f" ('{'.'.join(parts[:depth])}' has no nested sections)")
                                  + f"; use {'.'.join(parts[:depth])}.KEY=value")
            model = field.annotation
            target = target.setdefault(name, {})
            if not isinstance(target, dict):
                raise ConfigError(f"override '{item}': '{where}' must be a table of keys, not {target!r}")
        target[parts[-1]] = parse_value(text.strip())
    return raw


def build_config(raw: dict, source: str = "config") -> Config:
    """Validate a raw config dict; errors name `source` and each bad key."""
    try:
        return Config.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, source)) from None


def check_sections(raw: dict, source: str) -> None:
    """Each known section of a recipe must be a table (`[run]` with keys under it), not a single value."""
    for section in Config.model_fields:
        value = raw.get(section)
        if value is not None and not isinstance(value, dict):
            hint = (f"; for a run name write [run] with name = {json.dumps(value)} under it"
                    if section == "run" and isinstance(value, str) else "")
            raise ConfigError(f"{source}: section '{section}' must be a table ([{section}] followed by key = value "
                              f"lines), not the single value {value!r}{hint}")


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Load a TOML file (or start from defaults when `path` is None) and apply overrides."""
    raw: dict = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"config file '{path}' is a folder, not a TOML file (ready recipes are in configs/)")
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist (ready recipes are in configs/)")
        raw = read_toml(path, ConfigError)
        source = str(path)
        check_sections(raw, source)
        raw.setdefault("run", {}).setdefault("name", path.stem)
    apply_overrides(raw, list(overrides))
    return build_config(raw, source)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def to_toml(config: Config) -> str:
    """The fully resolved config as TOML text (None values are left out)."""
    out = []
    for section, values in config.model_dump().items():
        out.append(f"[{section}]")
        out += [f"{key} = {_toml_value(value)}" for key, value in values.items()
                if value is not None and not isinstance(value, dict)]
        out.append("")
        for key, table in values.items():  # nested sections (train.lora) follow as their own tables
            if isinstance(table, dict):
                out.append(f"[{section}.{key}]")
                out += [f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None]
                out.append("")
    return "\n".join(out)
