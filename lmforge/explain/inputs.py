"""What every explanation needs first: the text encoded as the model reads it, readable token labels,
and clear errors for models or arguments an explanation cannot serve."""
from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch

from ..models.contract import is_decoder, transformer_blocks
from ..tokenizer import Tokenizer


def model_name(model) -> str:
    """The model's arch name for error messages ('gpt', 'bert', 'lstm', ...)."""
    config = getattr(model, "config", None)
    return str(getattr(config, "arch", type(model).__name__))


def require_attention(model, what: str) -> None:
    """Raise a clear error unless the model is a Transformer whose blocks expose attention weights."""
    if transformer_blocks(model) is None:
        raise ValueError(f"{what} needs a Transformer with attention (arch gpt, llama or bert); "
                         f"this model is '{model_name(model)}', which has no attention layers")


def check_layer_head(model, layer: int | None, head: int | None) -> None:
    """A layer or head index that the model does not have is a ValueError naming the valid range."""
    n_layer, n_head = len(model.h), model.config.n_head
    if layer is not None and not 0 <= layer < n_layer:
        raise ValueError(f"layer {layer} does not exist: the model has {n_layer} layers, numbered 0 to {n_layer - 1}")
    if head is not None and not 0 <= head < n_head:
        raise ValueError(f"head {head} does not exist: the model has {n_head} heads per layer, "
                         f"numbered 0 to {n_head - 1}")


def encode_text(model, tokenizer: Tokenizer, text: str, keep: str = "start", specials: bool | None = None) -> list[int]:
    """Token ids of `text` as the model reads it, cut to block_size: [CLS] ... [SEP] when the tokenizer has them
    and `specials` (default: for encoders; classification adds them for both families, as training did).

    keep='end' keeps the last tokens (what a next-token prediction depends on); 'start' the first.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the text to explain is empty; give a text with at least one token")
    ids = tokenizer.encode(text)
    if not ids:
        raise ValueError(f"the text {text!r} gives no tokens with this tokenizer; give a longer text")
    if specials is None:
        specials = not is_decoder(model)
    special = [tokenizer.cls_id, tokenizer.sep_id] if specials and tokenizer.cls_id is not None \
        and tokenizer.sep_id is not None else None
    room = model.config.block_size - (2 if special else 0)
    if len(ids) > room:
        around = " with [CLS] and [SEP]" if special else ""
        warnings.warn(f"the text is {len(ids)} tokens ({len(ids) + 2 if special else len(ids)}{around}), more than "
                      f"the model's block_size {model.config.block_size}: explaining only its "
                      f"{'last' if keep == 'end' else 'first'} {room} tokens", stacklevel=3)
        ids = ids[-room:] if keep == "end" else ids[:room]
    return [special[0], *ids, special[1]] if special else ids


def token_labels(tokenizer: Tokenizer, ids) -> list[str]:
    """One readable label per token: WordPiece and char tokens as stored, byte-level BPE decoded to text
    (a piece of a multi-byte character keeps its raw form); newlines and tabs shown as \\n and \\t."""
    labels = []
    for index in (int(i) for i in ids):
        raw = tokenizer.id_to_token(index) or f"<{index}>"
        text = raw
        if tokenizer.kind == "bpe":
            decoded = tokenizer.decode([index], skip_special_tokens=False)
            text = decoded if decoded and "\ufffd" not in decoded else raw
        labels.append(text.replace("\n", "\\n").replace("\t", "\\t"))
    return labels


@contextmanager
def evaluation_mode(model):
    """Run with dropout off, then give the model back in the mode it had."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def device_of(model) -> torch.device:
    return next(model.parameters()).device
