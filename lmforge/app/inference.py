"""The work behind LM's using methods on a Bundle: generation (sampling or beam search, streamed to stdout),
the predictions of a classifier, regression or multi-label head, and evaluation on held-out data."""
from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path

from ..bundle import Bundle
from ..infer.generate import SamplingConfig, generate
from ..models import is_decoder
from ..tasks.classify import head_kind


def show(piece: str) -> None:
    """Print a piece of streamed text as it comes."""
    sys.stdout.write(piece)
    sys.stdout.flush()


def generate_texts(bundle: Bundle, prompts: list[str], sampling: SamplingConfig, *, use_cache: bool = True,
                   stream: bool = False, num_beams: int = 1, length_penalty: float = 1.0) -> list[str]:
    """Continue each prompt: sampled (greedy at temperature 0) or, with num_beams > 1, by beam search; stream=True
    prints the text of a single prompt as it comes."""
    if not is_decoder(bundle.model):
        raise ValueError(f"generate needs a decoder (gpt, llama); this model is '{bundle.config.arch}' "
                         "(use fill_mask or classify)")
    if not prompts:
        raise ValueError("no prompts given")
    if num_beams < 1 or not math.isfinite(length_penalty):
        raise ValueError(f"num_beams must be >= 1 and length_penalty finite, got {num_beams} and {length_penalty}")
    if num_beams > 1:
        from ..infer.beam import beam_generate
        outputs = beam_generate(bundle.model, bundle.tokenizer, prompts, num_beams=num_beams,
                                max_new_tokens=sampling.max_new_tokens, length_penalty=length_penalty,
                                stop=sampling.stop, ignore_eos=sampling.ignore_eos)
        if stream and len(prompts) == 1:
            sys.stdout.write(outputs[0])
        return outputs
    on_text = (lambda row, piece: show(piece)) if stream and len(prompts) == 1 else None
    return generate(bundle.model, bundle.tokenizer, prompts, sampling, use_cache=use_cache, on_text=on_text)


def check_batch_size(batch_size: int) -> None:
    """A batch size must be a whole number >= 1."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size must be a whole number >= 1, got {batch_size!r}")


def check_threshold(threshold: float | None, kind: str) -> None:
    """A threshold must be a probability, and only a multi-label head has one."""
    if threshold is None:
        return
    from ..infer.multilabel import check_threshold as check_probability

    check_probability(threshold)
    if kind != "multilabel":
        raise ValueError(f"a threshold applies to multi-label models; this model's head is '{kind}'")


def predict(bundle: Bundle, items: list[str], pairs: list[str] | None, batch_size: int,
            threshold: float | None) -> list[tuple]:
    """[(prediction, {name: value}), ...] of the bundle's head for each text (and its pair)."""
    from ..infer.classify import classify_texts

    if pairs is not None and len(pairs) != len(items):
        raise ValueError(f"got {len(items)} texts but {len(pairs)} text pairs")
    if not items:
        raise ValueError("no texts given")
    check_batch_size(batch_size)
    model, tokenizer, config, meta = bundle
    kind, head = head_kind(meta), meta.get("classification") or {}
    check_threshold(threshold, kind)
    if kind == "multilabel":
        from ..infer.multilabel import tag_texts
        return tag_texts(model, tokenizer, config.labels, items, pairs,
                         head.get("threshold", 0.5) if threshold is None else threshold, batch_size)
    if kind == "regress":
        from ..infer.regress import score_texts
        return score_texts(model, tokenizer, config.labels[0], head["target_mean"], head["target_std"], items, pairs,
                           batch_size)
    return classify_texts(model, tokenizer, config.labels, items, pairs, batch_size)


def evaluate_labeled(bundle: Bundle, data, batch_size: int, text_field: str | None, label_field: str | None,
                     text_pair_field: str | None, threshold: float | None) -> dict:
    """A head's metrics on a labeled .csv/.tsv/.jsonl (columns as saved with the model unless given)."""
    from ..data.labeled import read_labeled
    from ..infer.classify import evaluate_classifier

    model, tokenizer, config, meta = bundle
    saved, kind = meta.get("classification") or {}, head_kind(meta)
    check_threshold(threshold, kind)
    field = label_field or saved.get("label_field", "label")
    labeled = read_labeled(data, text_field or saved.get("text_field", "text"), field,
                           text_pair_field or saved.get("text_pair_field"), allow_empty_label=kind == "multilabel")
    if kind == "regress":
        from ..infer.regress import evaluate_regressor
        return evaluate_regressor(model, tokenizer, saved["target_mean"], saved["target_std"], labeled, field,
                                  batch_size)
    if kind == "multilabel":
        from ..infer.multilabel import evaluate_multilabel
        return evaluate_multilabel(model, tokenizer, config.labels, labeled, field,
                                   saved.get("threshold", 0.5) if threshold is None else threshold, batch_size)
    return evaluate_classifier(model, tokenizer, config.labels, labeled, batch_size)


def evaluate_text(bundle: Bundle, data, batch_size: int, text_field: str | None, mask_prob: float) -> dict:
    """A language model's loss and perplexity on text `data` (documents joined as in training); an encoder's
    masked-LM loss, perplexity and accuracy (masking `mask_prob` of the tokens)."""
    import numpy as np

    from ..data.tokens import build_token_file, open_tokens
    from ..infer.score import score_tokens

    paths = [str(data)] if isinstance(data, (str, Path)) else [str(p) for p in data]
    with tempfile.TemporaryDirectory(prefix="lmforge-eval-") as scratch:  # documents joined as in training
        ids = np.array(open_tokens(build_token_file(paths, bundle.tokenizer, scratch, text_field or "text")))
    if len(ids) < 2:
        raise ValueError(f"'{data}' has fewer than 2 tokens: nothing to evaluate")
    if not is_decoder(bundle.model):
        from ..infer.fill_mask import evaluate_mlm
        return evaluate_mlm(bundle.model, bundle.tokenizer, ids, batch_size, mask_prob)
    return score_tokens(bundle.model, ids, batch_size)
