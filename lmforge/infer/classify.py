"""Classification with either family: class probabilities for texts, and metrics on a labeled set."""
from __future__ import annotations

import numpy as np
import torch

from ..data.labeled import EncodedSet, LabeledSet
from ..models.contract import has_classifier
from .metrics import classification_report


def predict_probabilities(model, encoded: EncodedSet, batch_size: int = 32) -> np.ndarray:
    """Softmax class probabilities (N, n_labels) for every example of `encoded`, in order."""
    return torch.from_numpy(head_outputs(model, encoded, batch_size)).softmax(-1).numpy()


@torch.no_grad()
def head_outputs(model, encoded: EncodedSet, batch_size: int = 32, report=None) -> np.ndarray:
    """The head's raw outputs (N, n_labels) in float64 for every example of `encoded`, in order; `report(done)`
    hears how many are scored after each batch."""
    model.eval()
    device = next(model.parameters()).device
    # sort by length so each batch pads little, then put the rows back in input order
    order = np.argsort(encoded.lengths, kind="stable").tolist()
    out = None
    for first in range(0, len(order), batch_size):
        chunk = order[first:first + batch_size]
        batch = encoded.batch(chunk)
        logits = model.classify(batch["ids"].to(device), pad_mask=batch["pad_mask"].to(device),
                                token_type_ids=batch["token_type_ids"].to(device))
        values = logits.double().cpu().numpy()
        if out is None:
            out = np.zeros((len(encoded), values.shape[1]), dtype=np.float64)
        out[chunk] = values
        if report is not None:
            report(first + len(chunk))
    return out if out is not None else np.zeros((0, 0))


def classify_texts(model, tokenizer, labels: list[str], texts: list[str], pairs: list[str] | None = None,
                   batch_size: int = 32) -> list[tuple[str, dict[str, float]]]:
    """(label, {label: probability}) for each text (and pair)."""
    if not labels or not has_classifier(model):
        raise ValueError("this model has no classification head; fine-tune it first with objective='classify'")
    data = LabeledSet("input", list(texts), [labels[0]] * len(texts), list(pairs) if pairs is not None else None)
    probs = predict_probabilities(model, EncodedSet(data, tokenizer, None, model.config.block_size), batch_size)
    return [(labels[int(row.argmax())], {name: float(p) for name, p in zip(labels, row)}) for row in probs]


def evaluate_classifier(model, tokenizer, labels: list[str], data: LabeledSet, batch_size: int = 32) -> dict:
    """accuracy, macro_f1, per_class, confusion and labels of the model on a labeled set."""
    encoded = EncodedSet(data, tokenizer, labels, model.config.block_size)
    predicted = predict_probabilities(model, encoded, batch_size).argmax(-1)
    return classification_report(encoded.targets, predicted, labels)
