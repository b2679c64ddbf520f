"""Token attributions over the input embeddings: integrated gradients (with its completeness check) and
gradient x input, for a classifier's class or a decoder's next token(s)."""
from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..files import atomic_write_text
from ..models.contract import has_classifier, is_decoder
from .html import attribution_page
from .inputs import device_of, encode_text, evaluation_mode, model_name, token_labels

METHODS = ("integrated_gradients", "gradient_x_input")
BASELINES = ("pad", "zero")
KINDS = ("auto", "class", "next-token")
COMPLETENESS_TOLERANCE = 0.05  # of |output - baseline output|


@dataclass
class Attribution:
    """Per-token attributions of one prediction. `output` is the log-probability of the target; for
    integrated gradients the scores sum to output - baseline_output (up to completeness_error)."""

    text: str
    tokens: list[str]
    ids: list[int]
    scores: np.ndarray
    method: str
    kind: str
    target: str
    predicted: str
    probability: float
    output: float
    baseline: str
    baseline_output: float | None = None
    completeness_error: float | None = None
    steps: int | None = None
    true_label: str | None = None

    @property
    def completeness_relative(self) -> float | None:
        """|sum(scores) - (output - baseline_output)| as a fraction of |output - baseline_output|."""
        if self.completeness_error is None:
            return None
        return self.completeness_error / max(abs(self.output - self.baseline_output), 1e-6)

    @property
    def completeness_passes(self) -> bool:
        """Whether the scores add up to the output's change within COMPLETENESS_TOLERANCE."""
        return self.completeness_relative is not None and self.completeness_relative <= COMPLETENESS_TOLERANCE

    def to_dict(self) -> dict:
        """A JSON-ready dict (scores as a list, completeness included)."""
        data = asdict(self)
        data["scores"] = [float(s) for s in self.scores]
        data["completeness_relative"] = self.completeness_relative
        return data

    def save(self, path: str | Path) -> Path:
        """Write a self-contained .html page (coloured tokens), a .png bar chart, or .json."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix in (".html", ".htm"):
            atomic_write_text(path, attribution_page(self))
        elif suffix == ".png":
            from .plots import attribution_figure

            attribution_figure(self, path)
        elif suffix == ".json":
            atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=1))
        else:
            raise ValueError(f"cannot write attributions to '{path}': use a .html, .png or .json file name")
        return path


def token_embedding(model) -> nn.Embedding:
    """The model's input token embedding (model.wte), which attributions are taken over."""
    embedding = getattr(model, "wte", None)
    if not isinstance(embedding, nn.Embedding):
        raise ValueError(f"attributions need the model's token embedding (model.wte); "
                         f"this model ('{model_name(model)}') has none")
    return embedding


@contextmanager
def replaced_embeddings(embedding: nn.Module, replacement: torch.Tensor):
    """Make `embedding` return `replacement` instead of looking up ids (the model runs unchanged around it)."""
    handle = embedding.register_forward_hook(lambda module, args, output: replacement)
    try:
        yield
    finally:
        handle.remove()


def attribute_embeddings(model, ids: torch.Tensor, score: Callable[[torch.Tensor], torch.Tensor],
                         baseline: torch.Tensor, vary: torch.Tensor, *, method: str = "integrated_gradients",
                         steps: int = 50, batch_size: int = 16) -> tuple[np.ndarray, float, float | None]:
    """Attributions (T,) of score(ids) to the token embeddings of ids (1, T) at the positions `vary` marks.

    `score` maps a batch of the same ids (B, T) to one scalar per row. `baseline` (T, D) replaces the
    embeddings at the varied positions; the others keep their input values. Returns (scores, F(input),
    F(baseline)); F(baseline) is None for gradient x input.
    """
    if method not in METHODS:
        raise ValueError(f"unknown attribution method '{method}'; choose one of {', '.join(METHODS)}")
    if method == "integrated_gradients" and steps < 1:
        raise ValueError(f"steps must be at least 1 (got {steps})")
    embedding = token_embedding(model)
    with evaluation_mode(model):
        with torch.no_grad():
            inputs = embedding(ids)[0].float()
            output = float(score(ids)[0])
        vary = vary.to(inputs.device)[:, None]
        delta = torch.where(vary, inputs - baseline.to(inputs), torch.zeros_like(inputs))
        start = inputs - delta  # the baseline where we vary, the input elsewhere
        dtype = embedding.weight.dtype
        if method == "gradient_x_input":
            point = inputs[None].to(dtype).requires_grad_(True)
            with replaced_embeddings(embedding, point):
                (gradient,) = torch.autograd.grad(score(ids).sum(), point)
            scores = (gradient[0].float() * inputs).sum(-1) * vary[:, 0]
            return scores.detach().cpu().numpy(), output, None
        # midpoint rule: its error falls as 1/steps^2, so completeness holds with few steps
        alphas = (torch.arange(steps, dtype=torch.float32, device=inputs.device) + 0.5) / steps
        total = torch.zeros_like(inputs)
        for chunk in alphas.split(batch_size):
            points = (start + chunk[:, None, None] * delta).to(dtype).requires_grad_(True)
            with replaced_embeddings(embedding, points):
                values = score(ids.expand(len(chunk), -1))
            (gradient,) = torch.autograd.grad(values.sum(), points)
            total += gradient.float().sum(0)
        with torch.no_grad(), replaced_embeddings(embedding, start[None].to(dtype)):
            baseline_output = float(score(ids)[0])
    scores = (delta * total / steps).sum(-1)
    return scores.detach().cpu().numpy(), output, baseline_output


def _baseline(model, tokenizer, ids: list[int], baseline: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Baseline embeddings (T, D) and the positions that vary: every token but [CLS]/[SEP]-like specials."""
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline '{baseline}'; choose one of {', '.join(BASELINES)}")
    embedding = token_embedding(model)
    device = embedding.weight.device
    fixed = {tokenizer.cls_id, tokenizer.sep_id} - {None}
    vary = torch.tensor([i not in fixed for i in ids], device=device)
    with torch.no_grad():
        if baseline == "zero":
            base = torch.zeros(len(ids), embedding.embedding_dim, device=device)
        else:
            base = embedding.weight[tokenizer.pad_id].float().expand(len(ids), -1)
    return base, vary


def _kind(model, kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown attribution kind '{kind}'; choose one of {', '.join(KINDS)}")
    has_head = has_classifier(model) and bool(model.config.labels)
    causal = is_decoder(model)
    if kind == "auto":
        if has_head:
            return "class"
        if causal:
            return "next-token"
        raise ValueError(f"attributions explain a classifier's class or a decoder's next token; this "
                         f"'{model_name(model)}' model has no classification head (fine-tune it with "
                         "objective 'classify' first)")
    if kind == "class" and not has_head:
        raise ValueError(f"a class target needs a classification head, but this '{model_name(model)}' model has "
                         "none (model.labels is empty); fine-tune it with objective 'classify'"
                         + (", or explain its next token (kind 'next-token')" if causal else ""))
    if kind == "next-token" and not causal:
        raise ValueError(f"next-token attribution needs a decoder (gpt, llama); this model is '{model_name(model)}'")
    return kind


def _class_target(model, tokenizer, text: str, target: str | None, device):
    """A classifier's ids, free positions, score (log-probability of class `target`), target and prediction."""
    labels = list(model.config.labels)
    if target is not None and target not in labels:
        raise ValueError(f"target class {target!r} is not one of the model's labels: {', '.join(labels)}")
    ids = encode_text(model, tokenizer, text, keep="start", specials=True)
    tensor = torch.tensor([ids], device=device)
    with torch.no_grad(), evaluation_mode(model):
        log_probs = model.classify(tensor).float().log_softmax(-1)[0]
    predicted = labels[int(log_probs.argmax())]
    target = predicted if target is None else target
    index = labels.index(target)

    def score(batch: torch.Tensor) -> torch.Tensor:
        return model.classify(batch).float().log_softmax(-1)[:, index]

    return ids, len(ids), score, target, predicted


def _next_token_target(model, tokenizer, text: str, target: str | None, device):
    """A decoder's ids (text then the target teacher-forced), free positions, score (log-probability of the
    target text following the text), target and predicted next token."""
    ids = encode_text(model, tokenizer, text, keep="end")
    with torch.no_grad(), evaluation_mode(model):
        next_log_probs = model(torch.tensor([ids], device=device))[0, -1].float().log_softmax(-1)
    predicted_id = int(next_log_probs.argmax())
    predicted = token_labels(tokenizer, [predicted_id])[0]
    if target is None:
        target_ids = [predicted_id]
        target = tokenizer.decode([predicted_id], skip_special_tokens=False)
    else:
        if not target:
            raise ValueError("the target text is empty; give the text that should follow, e.g. ' Paris'")
        target_ids = tokenizer.encode(target)
        if not target_ids:
            raise ValueError(f"the target {target!r} gives no tokens with this tokenizer")
    room = model.config.block_size - (len(target_ids) - 1)
    if room < 1:
        raise ValueError(f"the target is {len(target_ids)} tokens, too long for block_size {model.config.block_size}")
    if len(ids) > room:
        warnings.warn(f"text and target together exceed block_size {model.config.block_size}: "
                      f"explaining only the last {room} tokens of the text", stacklevel=3)
        ids = ids[-room:]
    free = len(ids)
    ids = ids + target_ids[:-1]  # teacher forcing: target token j is read after target tokens < j
    positions = torch.arange(free - 1, free - 1 + len(target_ids), device=device)
    wanted = torch.tensor(target_ids, device=device)

    def score(batch: torch.Tensor) -> torch.Tensor:
        log_probs = model(batch)[:, positions].float().log_softmax(-1)
        return log_probs.gather(-1, wanted.expand(batch.size(0), -1)[..., None])[..., 0].sum(-1)

    return ids, free, score, target, predicted


def attribute(model, tokenizer, text: str, target: str | None = None, *, kind: str = "auto",
              method: str = "integrated_gradients", steps: int = 50, baseline: str = "pad",
              max_steps: int = 800, batch_size: int = 16) -> Attribution:
    """Attribute a prediction on `text` to its tokens.

    A classifier explains the log-probability of class `target` (default: the predicted class); a decoder
    the log-probability of `target` text following `text` (default: its most likely next token). Integrated
    gradients double `steps` (up to `max_steps`) until the completeness check passes within 5%.
    """
    kind = _kind(model, kind)
    if method not in METHODS:
        raise ValueError(f"unknown attribution method '{method}'; choose one of {', '.join(METHODS)}")
    device = device_of(model)
    make = _class_target if kind == "class" else _next_token_target
    ids, free, score, target, predicted = make(model, tokenizer, text, target, device)
    base, vary = _baseline(model, tokenizer, ids, baseline)
    vary[free:] = False
    tensor = torch.tensor([ids], device=device)
    while True:
        scores, output, base_output = attribute_embeddings(model, tensor, score, base, vary, method=method,
                                                           steps=steps, batch_size=batch_size)
        # a saturating output bends the path sharply: more steps, until the sum matches the output's change
        if base_output is None or steps * 2 > max_steps or \
                abs(float(scores.sum()) - (output - base_output)) <= COMPLETENESS_TOLERANCE * abs(output - base_output):
            break
        steps *= 2
    result = Attribution(text=text, tokens=token_labels(tokenizer, ids[:free]), ids=ids[:free], scores=scores[:free],
                         method=method, kind=kind, target=target, predicted=predicted, probability=math.exp(output),
                         output=output, baseline=baseline, steps=steps if method == "integrated_gradients" else None)
    if base_output is not None:
        result.baseline_output = base_output
        result.completeness_error = abs(float(scores.sum()) - (output - base_output))
        if result.completeness_relative > COMPLETENESS_TOLERANCE and abs(output - base_output) > 1e-3:
            warnings.warn(f"integrated gradients miss the completeness check: the scores sum to {scores.sum():.4f} "
                          f"but the output moved by {output - base_output:.4f}; use more steps (now {steps})",
                          stacklevel=2)
    return result
