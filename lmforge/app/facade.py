"""The Python face of lmforge: LM holds a model, its tokenizer, its Config and meta, and hands them to the
library (as a Bundle or its parts) and to app/ (building, fitting, inference), storing what comes back."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..bundle import Bundle
from ..config import Config, build_config
from ..infer.generate import SamplingConfig
from ..modeldir import chat_files, load_model_dir, model_card, save_model_dir
from ..models import count_parameters
from ..tokenizer import Tokenizer
from ..train.trainer import TrainResult
from . import building, fitting, inference


class LM:
    """A language model ready to train and use: LM.new(...) or LM.from_pretrained(path), then fit/generate."""

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, config: Config, meta: dict | None = None):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.meta = meta or {}

    @property
    def bundle(self) -> Bundle:
        """The model, tokenizer, model config and meta as the library takes them."""
        return Bundle(self.model, self.tokenizer, self.config.model, self.meta)

    def adopt(self, bundle: Bundle) -> "LM":
        """Store a Bundle the library or app/ returned: its model, tokenizer, meta, and config as config.model."""
        self.model, self.tokenizer, self.meta = bundle.model, bundle.tokenizer, bundle.meta
        if bundle.config is not self.config.model:
            self.config = self.config.model_copy(update={"model": bundle.config})
        return self

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
        bundle, config = building.build_bundle(config)
        return cls(bundle.model, bundle.tokenizer, config, bundle.meta)

    def set_pooling(self, pooling: str) -> "LM":
        """Choose what an encoder's classifier reads: 'cls' (the [CLS] state through the pooler, as BERT) or
        'mean' (the mean of the real tokens' states). Set it before fine-tuning; it is saved with the model."""
        return self.adopt(building.with_pooling(self.bundle, pooling))

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", dtype: str | None = None) -> "LM":
        """Load a model directory (final/, checkpoints/step-N/ or one written by LM.save), or a Hugging Face
        gpt2 / bert / llama checkpoint directory (converted in memory); on `device` (auto: the GPU if any), in
        `dtype` (float32, bfloat16, float16; default: as saved)."""
        model, tokenizer, model_cfg, meta = load_model_dir(path, device, dtype)
        return cls(model, tokenizer, Config(model=model_cfg, tokenizer={"kind": tokenizer.kind}), meta)

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

        return self.adopt(drop_lora(self.bundle))

    def add_tokens(self, tokens: str | list[str], special: bool = False) -> int:
        """Add tokens to the vocabulary and grow the embeddings (and a tied head) to fit; new rows start at the
        mean embedding. special=True: never split, skipped when decoding. Returns how many were new."""
        added, bundle = building.add_tokens(self.bundle, tokens, special)
        self.adopt(bundle)
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
        resume = fitting.resume_point(run_dir, resume)
        self.config = fitting.fit_config(self.config, data, objective, train_options)
        bundle, self.config, result = fitting.fit(self.bundle, self.config, run_dir, resume, progress, hooks)
        self.adopt(bundle)
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
        stops = (stop,) if isinstance(stop, str) else tuple(stop)
        sampling = SamplingConfig(max_new_tokens, temperature, top_k, top_p, repetition_penalty, stops, seed, ignore_eos)
        outputs = inference.generate_texts(self.bundle, [prompt] if isinstance(prompt, str) else list(prompt),
                                           sampling, use_cache=use_cache, stream=stream, num_beams=num_beams,
                                           length_penalty=length_penalty)
        return outputs[0] if isinstance(prompt, str) else outputs

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The prompt the model's chat template (or the built-in ChatML one) makes of `messages`
        ([{"role": ..., "content": ...}, ...]), as transformers' apply_chat_template(..., tokenize=False)."""
        from ..infer.chat import apply_chat_template

        return apply_chat_template(self.tokenizer, self.meta, messages, add_generation_prompt=add_generation_prompt)

    def chat(self, messages: list[dict], *, max_new_tokens: int = 256, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
             stop: str | list[str] | tuple = (), seed: int | None = None, stream: bool = False,
             prompt_cache=None) -> str:
        """The assistant's reply to `messages`, ended at the template's end-of-turn token; greedy unless a
        temperature is given. stream=True prints it as it comes. `prompt_cache`: a PromptCache
        (lmforge.infer.prompt_cache) kept for one conversation, so each reply prefills only its new turn."""
        from ..infer.chat import chat_reply

        stops = (stop,) if isinstance(stop, str) else tuple(stop)
        sampling = SamplingConfig(max_new_tokens, temperature, top_k, top_p, repetition_penalty, stops, seed)
        return chat_reply(self.bundle, messages, sampling, on_text=inference.show if stream else None,
                          prompt_cache=prompt_cache).text

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
        single = isinstance(texts, str)
        pairs = [pairs] if isinstance(pairs, str) else None if pairs is None else list(pairs)
        results = inference.predict(self.bundle, [texts] if single else list(texts), pairs, batch_size, threshold)
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
        inference.check_batch_size(batch_size)
        if self.config.model.labels:
            return inference.evaluate_labeled(self.bundle, data, batch_size, text_field, label_field, text_pair_field,
                                              threshold)
        inference.check_threshold(threshold, "none (a language model)")
        return inference.evaluate_text(self.bundle, data, batch_size, text_field, self.config.train.mask_prob)

    def __repr__(self) -> str:
        cfg = self.config.model
        return (f"LM(arch={cfg.arch!r}, layers={cfg.n_layer}, n_embd={cfg.n_embd}, block_size={cfg.block_size}, "
                f"parameters={count_parameters(self.model):,}, tokenizer={self.tokenizer!r})")
