"""The Python face of lmforge: LM bundles a model, its tokenizer and its config."""
from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..bundle import Bundle
from ..config import LABELED_OBJECTIVES, Config, ConfigError, ModelConfig, build_config, to_toml
from ..data.corpus import iter_texts
from ..files import atomic_write_text
from ..modeldir import chat_files, load_model_dir, model_card, read_tokenizer, save_model_dir
from ..preflight import check_fits
from ..models import build_model, count_parameters, is_decoder
from ..tokenizer import Tokenizer
from ..train.checkpoint import find_resumable
from ..train.trainer import RunDir, TrainResult, train

# model fields that may differ between a checkpoint and the config that resumes or fine-tunes it
_FREE_MODEL_FIELDS = {"vocab_size", "labels", "init", "dropout"}


def _source_name(paths: list[str]) -> str:
    return ", ".join(paths) if paths else "built-in corpus (CPython documentation topics, pydoc_data)"


class LM:
    """A language model ready to train and use: LM.new(...) or LM.from_pretrained(path), then fit/generate."""

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, config: Config, meta: dict | None = None):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.meta = meta or {}

    @property
    def bundle(self) -> Bundle:
        """The model, tokenizer, model config and meta as the library takes them."""
        return Bundle(self.model, self.tokenizer, self.config.model, self.meta)

    # -- making ---------------------------------------------------------------------------------
    @classmethod
    def new(cls, arch: str = "gpt", *, tokenizer: str | None = None, vocab_size: int = 4096, corpus=None,
            lowercase: bool = False, tokenizer_path: str | None = None, **model: Any) -> "LM":
        """A fresh model of `arch` ('gpt', 'llama', 'bert'); the tokenizer is trained on `corpus`
        (files, folders, globs; the built-in corpus when None) unless `tokenizer_path` is given."""
        paths = [str(corpus)] if isinstance(corpus, (str, Path)) else list(corpus or [])
        raw = {"model": {"arch": arch, **model},
               "tokenizer": {"kind": tokenizer, "vocab_size": vocab_size, "lowercase": lowercase, "path": tokenizer_path},
               "data": {"paths": paths}}
        raw["tokenizer"] = {k: v for k, v in raw["tokenizer"].items() if v is not None}
        return cls.from_config(build_config(raw, "LM.new arguments"))

    @classmethod
    def from_config(cls, config: Config) -> "LM":
        """Build the model a config describes: from model.init when set, else fresh with a new tokenizer."""
        if config.model.init:
            base = cls.from_pretrained(config.model.init)
            # a fine-tuning may choose its own pooling; every other set architecture key must match
            wanted_pooling = config.model.pooling if "pooling" in config.model.model_fields_set else None
            # the pretrained model decides the architecture: a recipe's sizes (configs/classify.toml's) give way
            ignored = model_diffs(base.config.model, config.model, free={"pooling", "classifier_bias"})
            if ignored:
                import warnings
                warnings.warn(f"model.init={config.model.init} decides the architecture; ignoring the config's "
                              + "; ".join(ignored), stacklevel=2)
            update = {"dropout": config.model.dropout}
            if "classifier_bias" in config.model.model_fields_set:  # e.g. false, for a head HF's GPT-2 can express
                update["classifier_bias"] = config.model.classifier_bias
            model_cfg = base.config.model.model_copy(update=update)
            for module in base.model.modules():  # the new run's dropout, not the saved one
                if isinstance(module, torch.nn.Dropout):
                    module.p = config.model.dropout
                elif isinstance(getattr(module, "dropout", None), float):
                    module.dropout = config.model.dropout
            config = config.model_copy(update={"model": model_cfg.model_copy(update={"init": config.model.init})})
            lm = cls(base.model, base.tokenizer, config, base.meta)
            lm.add_tokens(config.tokenizer.add_tokens)
            lm.add_tokens(config.tokenizer.add_special_tokens, special=True)
            return lm.set_pooling(wanted_pooling) if wanted_pooling else lm
        check_fits(config)  # before training a tokenizer or allocating: 200,000 layers must not hang
        tokenizer = make_tokenizer(config)
        tokenizer.backend.add_tokens(config.tokenizer.add_tokens)
        tokenizer.backend.add_special_tokens(config.tokenizer.add_special_tokens)
        model_cfg = config.model.model_copy(update={"vocab_size": tokenizer.vocab_size})
        config = config.model_copy(update={"model": model_cfg})
        with torch.random.fork_rng(devices=[]):  # the same seed gives the same initial weights
            torch.manual_seed(config.train.seed)
            model = build_model(model_cfg)
        return cls(model, tokenizer, config)

    def set_pooling(self, pooling: str) -> "LM":
        """Choose what an encoder's classifier reads: 'cls' (the [CLS] state through the pooler, as BERT) or
        'mean' (the mean of the real tokens' states). Set it before fine-tuning; it is saved with the model."""
        if pooling != self.config.model.pooling:
            model_cfg = ModelConfig.model_validate({**self.config.model.model_dump(), "pooling": pooling})
            self.config = self.config.model_copy(update={"model": model_cfg})
            self.model.config = model_cfg
        return self

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", dtype: str | None = None) -> "LM":
        """Load a model directory (final/, checkpoints/step-N/ or one written by LM.save), or a Hugging Face
        gpt2 / bert / llama checkpoint directory (converted in memory); on `device` (auto: the GPU if any), in
        `dtype` (float32, bfloat16, float16; default: as saved)."""
        model, tokenizer, model_cfg, meta = load_model_dir(path, device, dtype)
        config = Config(model=model_cfg, tokenizer={"kind": tokenizer.kind})
        return cls(model, tokenizer, config, meta)

    def save(self, path: str | Path) -> Path:
        """Write a model directory: config.json, model.safetensors, tokenizer.json, README.md."""
        return save_model_dir(path, self.bundle)

    def save_hf(self, path: str | Path) -> Path:
        """Write a Hugging Face directory that transformers' AutoModelFor* and AutoTokenizer load as it is."""
        from ..interop import save_hf_dir

        files = {"README.md": model_card(self.model, self.tokenizer, self.config.model, self.meta),
                 **chat_files(self.tokenizer, self.meta, self.bundle.is_causal)}
        return save_hf_dir(path, self.model, self.tokenizer, self.config.model, files,
                           chat_template=self.meta.get("chat_template"))

    def merge_lora(self) -> "LM":
        """Fold LoRA adapters (a train.lora run) into the weights: a plain model with the same outputs (1e-5)."""
        from ..compress.lora_fit import drop_lora

        drop_lora(self)
        return self

    def add_tokens(self, tokens: str | list[str], special: bool = False) -> int:
        """Add tokens to the vocabulary and grow the embeddings (and a tied head) to fit; new rows start at the
        mean embedding. special=True: never split, skipped when decoding. Returns how many were new."""
        from ..models.resize import resize_vocab

        tokens = [tokens] if isinstance(tokens, str) else list(tokens)
        bad = [t for t in tokens if not isinstance(t, str) or not t]
        if bad:
            raise ValueError(f"tokens to add must be non-empty strings, got {bad!r}")
        backend = self.tokenizer.backend
        added = backend.add_special_tokens(tokens) if special else backend.add_tokens(tokens)
        if self.tokenizer.vocab_size > self.config.model.vocab_size:
            resize_vocab(self.model, self.tokenizer.vocab_size)
            self.config = self.config.model_copy(update={"model": self.model.config})
        return added

    # -- training -------------------------------------------------------------------------------
    def fit(self, data=None, *, objective: str | None = None, run_dir: str | Path | None = None, resume: bool | Path = False,
            progress: bool = True, hooks=(), **train_options: Any) -> TrainResult:
        """Train on `data` (files, folders, globs; a labeled .csv/.tsv/.jsonl for objective 'classify', 'regress'
        or 'multilabel').

        Keyword options are train.* settings (max_steps=500, lr=3e-4, ...). With `run_dir`, checkpoints,
        metrics.jsonl and final/ are written there and resume=True continues the newest good checkpoint
        (or starts from step 0, saying so, when there is none yet); resume may also name a checkpoint.
        """
        from ..tasks import make_task

        if resume:
            if run_dir is None:
                raise ValueError("resume=True needs the run_dir to continue")
            if not isinstance(resume, (str, Path)):
                resume = find_resumable(Path(run_dir) / "checkpoints") or True  # True: none yet, start at 0
            if not isinstance(resume, bool):
                # the run's own tokenizer: retraining one (WordPiece training is not deterministic) could differ
                self.tokenizer = Tokenizer.load(Path(resume) / "tokenizer.json")
        updates: dict[str, dict] = {"train": dict(train_options)}
        if objective is not None:
            updates["train"]["objective"] = objective
        if data is not None:
            paths = [str(data)] if isinstance(data, (str, Path)) else [str(p) for p in data]
            key = "train" if (objective or self.config.train.objective) in LABELED_OBJECTIVES else "paths"
            updates["data"] = {key: paths[0] if key == "train" else paths}
        raw = self.config.model_dump()
        if "lr" in train_options and "min_lr" not in train_options and raw["train"]["min_lr"] > train_options["lr"]:
            del raw["train"]["min_lr"]  # an inherited floor above the new rate: let it default below the rate
        for section, values in updates.items():
            raw[section].update(values)
        self.config = build_config(raw, "fit arguments")
        cfg = self.config.train
        check_fits(self.config, parameters=count_parameters(self.model), vocab_size=self.tokenizer.vocab_size)
        from ..compress.lora_fit import freeze_for_lora, prepare_lora
        prepare_lora(self)  # train.lora: adapters on (a bad one is refused before any data is written)
        with tempfile.TemporaryDirectory(prefix="lmforge-") as scratch:
            work = Path(run_dir) if run_dir is not None else Path(scratch)
            task = make_task(self, work, progress=progress, teacher=_teacher(cfg))
            if cfg.patience and not task.can_evaluate:
                raise ConfigError(f"train.patience={cfg.patience} needs validation data, but this task has none "
                                  "(the validation split is too short to evaluate); add data or set train.patience=0")
            labeled = cfg.objective in LABELED_OBJECTIVES
            self.meta.update({"name": self.config.run.name, "training": {
                "objective": cfg.objective, "data": self.config.data.train if labeled
                else _source_name(self.config.data.paths), "max_steps": cfg.max_steps, "batch_size": cfg.batch_size,
                "lr": cfg.lr, "parameters": count_parameters(self.model)}, "metrics": {}})
            self.meta["training"].update(getattr(task, "training_facts", {}))  # e.g. a distillation's teacher
            if cfg.lora.rank:  # after the task made its head, which trains beside the adapters
                self.meta["training"].update(freeze_for_lora(self))

            def remember(step: int, record: dict) -> None:
                if not {"loss", "lr"} <= record.keys():
                    self.meta["metrics"] = {k: v for k, v in record.items() if k != "step"}
                    self.meta["metrics"]["step"] = step

            run = None
            if run_dir is not None:
                run = RunDir(Path(run_dir), lambda model, path: save_model_dir(
                    path, Bundle(model, self.tokenizer, self.config.model, self.meta)))
                atomic_write_text(run.path / "config.toml", to_toml(self.config))
            result = train(self.model, task, cfg, run, resume=resume, progress=progress, hooks=[remember, *hooks])
            if result.model is not None:  # after FSDP, rank 0 gets the gathered weights in a plain module
                self.model = result.model
            if run is not None and not result.interrupted and hasattr(task, "finish") and result.rank == 0:
                task.finish(self.model, run.path)  # e.g. a classifier's eval.json and confusion.png
        self.model.eval()
        return result

    # -- using ----------------------------------------------------------------------------------
    def generate(self, prompt: str | list[str], *, max_new_tokens: int = 100, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
                 stop: str | list[str] | tuple = (), seed: int | None = None, use_cache: bool = True,
                 stream: bool = False, num_beams: int = 1, length_penalty: float = 1.0,
                 ignore_eos: bool = False) -> str | list[str]:
        """Continue a prompt (or a list of prompts); temperature=0 is greedy. stream=True prints as it goes.
        num_beams > 1 runs beam search (scores divided by length ** length_penalty; sampling options unused).
        ignore_eos=True keeps going past the end-of-text token (always max_new_tokens tokens)."""
        from ..infer.generate import SamplingConfig, generate

        if not is_decoder(self.model):
            raise ValueError(f"generate needs a decoder (gpt, llama); this model is '{self.config.model.arch}' "
                             "(use fill_mask or classify)")
        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        if not prompts:
            raise ValueError("no prompts given")
        stops = (stop,) if isinstance(stop, str) else tuple(stop)
        if num_beams < 1 or not math.isfinite(length_penalty):
            raise ValueError(f"num_beams must be >= 1 and length_penalty finite, got {num_beams} and {length_penalty}")
        if num_beams > 1:
            from ..infer.beam import beam_generate
            outputs = beam_generate(self.model, self.tokenizer, prompts, num_beams=num_beams,
                                    max_new_tokens=max_new_tokens, length_penalty=length_penalty, stop=stops,
                                    ignore_eos=ignore_eos)
            if stream and single:
                sys.stdout.write(outputs[0])
            return outputs[0] if single else outputs
        sampling = SamplingConfig(max_new_tokens, temperature, top_k, top_p, repetition_penalty, stops, seed, ignore_eos)

        def on_text(row: int, piece: str) -> None:
            sys.stdout.write(piece)
            sys.stdout.flush()

        outputs = generate(self.model, self.tokenizer, prompts, sampling, use_cache=use_cache,
                           on_text=on_text if stream and single else None)
        return outputs[0] if single else outputs

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The prompt the model's chat template (or the built-in ChatML one) makes of `messages`
        ([{"role": ..., "content": ...}, ...]), as transformers' apply_chat_template(..., tokenize=False)."""
        from ..infer.chat import apply_chat_template

        return apply_chat_template(self.tokenizer, self.meta, messages, add_generation_prompt=add_generation_prompt)

    def chat(self, messages: list[dict], *, max_new_tokens: int = 256, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
             stop: str | list[str] | tuple = (), seed: int | None = None, stream: bool = False) -> str:
        """The assistant's reply to `messages`, ended at the template's end-of-turn token; greedy unless a
        temperature is given. stream=True prints it as it comes."""
        from ..infer.chat import chat_reply
        from ..infer.generate import SamplingConfig

        stops = (stop,) if isinstance(stop, str) else tuple(stop)
        sampling = SamplingConfig(max_new_tokens, temperature, top_k, top_p, repetition_penalty, stops, seed)

        def show(piece: str) -> None:
            sys.stdout.write(piece)
            sys.stdout.flush()

        return chat_reply(self.bundle, messages, sampling, on_text=show if stream else None).text

    def embed(self, texts: str | list[str], batch_size: int = 32, normalize: bool = True):
        """Mean-pooled final hidden states (N, n_embd) as a float tensor, unit length unless normalize=False."""
        from ..infer.embed import embed_texts

        single = isinstance(texts, str)
        vectors = embed_texts(self.model, self.tokenizer, [texts] if single else list(texts), batch_size, normalize)
        return vectors[0] if single else vectors

    def fill_mask(self, text: str, top_k: int = 5):
        """Predict each [MASK] of `text`: one mask -> [(token, probability), ...]; several -> a list of such lists."""
        from ..infer.fill_mask import fill_mask

        predictions = fill_mask(self.model, self.tokenizer, text, top_k)
        return predictions[0] if len(predictions) == 1 else predictions

    def classify(self, texts: str | list[str], pairs: str | list[str] | None = None, batch_size: int = 32,
                 threshold: float | None = None):
        """[(prediction, {name: value}), ...] for a list of texts; a single str gives a single tuple. A classifier
        gives (label, {label: probability}); a multi-label model ([tags with probability >= threshold, default the
        saved 0.5], {tag: probability}); a regression model (score, {target name: score})."""
        from ..infer.classify import classify_texts
        from ..tasks.classify import head_kind

        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        if pairs is not None:
            pairs = [pairs] if isinstance(pairs, str) else list(pairs)
            if len(pairs) != len(items):
                raise ValueError(f"got {len(items)} texts but {len(pairs)} text pairs")
        if not items:
            raise ValueError("no texts given")
        _check_batch_size(batch_size)
        kind, head = head_kind(self), self.meta.get("classification") or {}
        _check_threshold(threshold, kind)
        if kind == "multilabel":
            from ..infer.multilabel import tag_texts
            results = tag_texts(self.model, self.tokenizer, self.config.model.labels, items, pairs,
                                head.get("threshold", 0.5) if threshold is None else threshold, batch_size)
        elif kind == "regress":
            from ..infer.regress import score_texts
            results = score_texts(self.model, self.tokenizer, self.config.model.labels[0], head["target_mean"],
                                  head["target_std"], items, pairs, batch_size)
        else:
            results = classify_texts(self.model, self.tokenizer, self.config.model.labels, items, pairs, batch_size)
        return results[0] if single else results

    # -- explaining (lmforge/explain) ----------------------------------------------------------
    def explain_attention(self, text: str, *, layer: int | None = None, head: int | None = None, out=None):
        """Attention of every layer and head on `text`: an AttentionMap (.weights (layers, heads, T, T), .tokens);
        `out` also saves a heatmap PNG (the whole grid, or one layer/head)."""
        from ..explain import explain_attention

        return explain_attention(self.model, self.tokenizer, text, layer=layer, head=head, out=out)

    def attribute(self, text: str, target: str | None = None, *, kind: str = "auto",
                  method: str = "integrated_gradients", steps: int = 50, max_steps: int = 800, baseline: str = "pad",
                  out=None):
        """Per-token attributions of a class (classifiers) or of the next text `target` (decoders): an Attribution
        (.scores, .tokens, .completeness_error); `out` also writes it as .html, .png or .json."""
        from ..explain import attribute

        head = (self.meta.get("classification") or {}).get("kind", "classify")
        if self.config.model.labels and head != "classify" and kind != "next-token":
            raise ValueError(f"attributions explain a single-label classifier's class; this model's head is '{head}'")
        result = attribute(self.model, self.tokenizer, text, target, kind=kind, method=method, steps=steps,
                           max_steps=max_steps, baseline=baseline)
        if out is not None:
            result.save(out)
        return result

    def logit_lens(self, text: str, *, top_k: int = 1, out=None):
        """A decoder's next-token predictions read after every layer: a LogitLens (.top_tokens, .top_probs)."""
        from ..explain import logit_lens

        return logit_lens(self.model, self.tokenizer, text, top_k=top_k, out=out)

    def neighbors(self, word: str, k: int = 10) -> list[tuple[str, float]]:
        """The k tokens nearest to `word` in the input embedding space, with their cosine similarity."""
        from ..explain import nearest_tokens

        return nearest_tokens(self.model, self.tokenizer, word, k).neighbors

    def evaluate(self, data, batch_size: int = 16, *, text_field: str | None = None, label_field: str | None = None,
                 text_pair_field: str | None = None, threshold: float | None = None) -> dict:
        """Metrics on held-out `data`: a classifier gives accuracy, macro_f1, per_class and confusion on a labeled
        .csv/.tsv/.jsonl; a regression model mse, mae, pearson, spearman; a multi-label one micro_f1, macro_f1,
        subset_accuracy and per_label at `threshold`; a BERT masked-LM loss, perplexity and mlm_accuracy; a
        decoder loss and perplexity."""
        from ..infer.score import score_tokens

        _check_batch_size(batch_size)
        if self.config.model.labels:
            from ..data.labeled import read_labeled
            from ..infer.classify import evaluate_classifier
            from ..tasks.classify import head_kind

            saved, kind = self.meta.get("classification") or {}, head_kind(self)
            _check_threshold(threshold, kind)
            field = label_field or saved.get("label_field", "label")
            labeled = read_labeled(data, text_field or saved.get("text_field", "text"), field,
                                   text_pair_field or saved.get("text_pair_field"),
                                   allow_empty_label=kind == "multilabel")
            if kind == "regress":
                from ..infer.regress import evaluate_regressor
                return evaluate_regressor(self.model, self.tokenizer, saved["target_mean"], saved["target_std"],
                                          labeled, field, batch_size)
            if kind == "multilabel":
                from ..infer.multilabel import evaluate_multilabel
                return evaluate_multilabel(self.model, self.tokenizer, self.config.model.labels, labeled, field,
                                           saved.get("threshold", 0.5) if threshold is None else threshold, batch_size)
            return evaluate_classifier(self.model, self.tokenizer, self.config.model.labels, labeled, batch_size)
        _check_threshold(threshold, "none (a language model)")
        import numpy as np

        from ..data.tokens import build_token_file, open_tokens

        paths = [str(data)] if isinstance(data, (str, Path)) else [str(p) for p in data]
        with tempfile.TemporaryDirectory(prefix="lmforge-eval-") as scratch:  # documents joined as in training
            ids = np.array(open_tokens(build_token_file(paths, self.tokenizer, scratch, text_field or "text")))
        if len(ids) < 2:
            raise ValueError(f"'{data}' has fewer than 2 tokens: nothing to evaluate")
        if not is_decoder(self.model):
            from ..infer.fill_mask import evaluate_mlm
            return evaluate_mlm(self.model, self.tokenizer, ids, batch_size, self.config.train.mask_prob)
        return score_tokens(self.model, ids, batch_size)

    def __repr__(self) -> str:
        cfg = self.config.model
        return (f"LM(arch={cfg.arch!r}, layers={cfg.n_layer}, n_embd={cfg.n_embd}, block_size={cfg.block_size}, "
                f"parameters={count_parameters(self.model):,}, tokenizer={self.tokenizer!r})")


def _teacher(cfg) -> Bundle | None:
    """The frozen teacher of train.distill_teacher, loaded for the task that is handed it (None without one)."""
    if not cfg.distill_teacher:
        return None
    from ..tasks.distill import check_objective, missing_teacher

    check_objective(cfg.objective)
    path = Path(cfg.distill_teacher)
    if not path.exists():
        raise missing_teacher(path)
    with torch.random.fork_rng(devices=[]):  # building the teacher draws initial weights; leave the run's RNG be
        return load_model_dir(path)


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size must be a whole number >= 1, got {batch_size!r}")


def _check_threshold(threshold: float | None, kind: str) -> None:
    """A threshold must be a probability, and only a multi-label head has one."""
    if threshold is None:
        return
    from ..infer.multilabel import check_threshold

    check_threshold(threshold)
    if kind != "multilabel":
        raise ValueError(f"a threshold applies to multi-label models; this model's head is '{kind}'")


def make_tokenizer(config: Config) -> Tokenizer:
    """Load tokenizer.path, or train one of tokenizer.kind on the training text."""
    tok = config.tokenizer
    if tok.path:
        return Tokenizer.load(tok.path)
    if config.train.distill_teacher:  # a distilled student reads and writes its teacher's tokens
        from ..tasks.distill import missing_teacher
        if not Path(config.train.distill_teacher).exists():
            raise missing_teacher(Path(config.train.distill_teacher))
        return read_tokenizer(config.train.distill_teacher)
    if config.train.objective == "sft":
        raise ConfigError("objective 'sft' fine-tunes a pretrained decoder: set model.init to a model directory or "
                          "GGUF file (its tokenizer and chat template are used)")
    if config.train.objective in LABELED_OBJECTIVES and config.data.train and not config.data.paths:
        from ..data.labeled import iter_labeled_texts
        texts = iter_labeled_texts(config.data)
    else:
        texts = iter_texts(config.data.paths, config.data.text_field, config.data.encoding_errors)
        if config.data.scrub:  # the vocabulary must not learn what the scrub pass removes from the training text
            from ..data.scrub import scrub_text
            texts = map(scrub_text, texts)
    return Tokenizer.train(tok.kind, texts, tok.vocab_size, tok.lowercase)


def model_diffs(saved: ModelConfig, wanted: ModelConfig, free: set[str] = frozenset()) -> list[str]:
    """The model keys a config sets to something other than the checkpoint's values."""
    fields_set = wanted.model_fields_set - _FREE_MODEL_FIELDS - free
    return [f"model.{key}: saved {getattr(saved, key)!r}, config {getattr(wanted, key)!r}"
            for key in sorted(fields_set) if getattr(saved, key) != getattr(wanted, key)]
