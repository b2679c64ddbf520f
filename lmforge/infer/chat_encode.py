"""Conversations -> token ids with the assistant's tokens marked, through the model's own chat template.

The spans come from rendering prefixes (the standard trick): the reply to turn i starts where
render(messages[:i], add_generation_prompt=True) ends and stops where render(messages[:i+1]) ends, so the
end-of-turn token after each reply (and what the template writes after it) is trained too. The whole text is
tokenized once and a token is trained when it holds any character of a reply's span (a BPE token may join the
space before a reply to its first word): the ids are exactly those of the rendered conversation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.chat import read_conversations
from .chat_template import DEFAULT_TEMPLATE as DEFAULT_CHAT_TEMPLATE  # noqa: F401  (re-exported)
from .chat_template import TemplateError, render_chat, special_strings, template_of  # noqa: F401

# the built-in template's two markers, which must be tokens of the model's vocabulary (tokenizer.add_special_tokens)
DEFAULT_MARKERS = ("<|im_start|>", "<|im_end|>")


@dataclass
class Encoded:
    """One conversation: its ids and which of them are the assistant's (trained)."""

    ids: np.ndarray        # (T,) int64
    trained: np.ndarray    # (T,) bool
    truncated: bool = False

    @property
    def n_trained(self) -> int:
        """Tokens the loss covers: trained tokens that have a token before them to predict them from."""
        return int(self.trained[1:].sum())


def render_spans(template: str, messages: list[dict], tokens: dict[str, str]) -> tuple[str, list[tuple[int, int]]]:
    """(text, spans): the rendered conversation and the character spans [start, end) of its assistant replies."""
    text = render_chat(template, messages, **tokens)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render_chat(template, messages[:i], add_generation_prompt=True, **tokens)
        through = render_chat(template, messages[:i + 1], **tokens)
        if not (text.startswith(before) and text.startswith(through) and len(before) <= len(through)):
            raise TemplateError(
                f"the chat template does not render conversations prefix by prefix (turn {i}: the text before the "
                "reply is not a prefix of the whole conversation), so the assistant's tokens cannot be found; "
                "use a template that renders earlier turns the same whatever follows them")
        if spans and before and len(before) < spans[-1][1]:
            raise TemplateError(f"the chat template's reply spans overlap at turn {i}")
        spans.append((len(before), len(through)))
    return text, spans


def encode_conversation(tokenizer, template: str, messages: list[dict], max_len: int | None = None,
                        tokens: dict[str, str] | None = None) -> Encoded:
    """Ids of the rendered conversation and the mask of the assistant's tokens (cut to `max_len` when longer)."""
    text, spans = render_spans(template, messages, tokens if tokens is not None else special_strings(tokenizer))
    encoding = tokenizer.backend.encode(text, add_special_tokens=False)
    ids = np.asarray(encoding.ids, dtype=np.int64)
    offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
    trained = np.zeros(len(ids), dtype=bool)
    for start, end in spans:  # a token holding any of the reply's characters is the reply's (" Paris" after ":")
        trained |= (offsets[:, 1] > start) & (offsets[:, 0] < end)
    truncated = max_len is not None and len(ids) > max_len
    if truncated:
        ids, trained = ids[:max_len], trained[:max_len]
    return Encoded(ids, trained, truncated)


def _reply_tail(template: str, tokenizer) -> str | None:
    """The first word the template writes after an assistant reply ('<|im_end|>' for ChatML), or None."""
    marker = "\u2063reply\u2063"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}]
    text, spans = render_spans(template, messages, special_strings(tokenizer))
    start, end = spans[-1]
    after = text[start:end].split(marker, 1)[-1].split()
    return after[0] if after else None


def end_of_turn(template: str, tokenizer) -> str | None:
    """The token the template writes after an assistant reply ('<|im_end|>' for ChatML) when it is one token of
    the vocabulary; None otherwise."""
    try:
        tail = _reply_tail(template, tokenizer)
    except TemplateError:
        return None
    return tail if tail is not None and tokenizer.token_to_id(tail) is not None else None


def check_template_tokens(template: str, tokenizer) -> None:
    """Refuse a template whose end-of-turn marker the tokenizer would split (the model could never emit it)."""
    tail = _reply_tail(template, tokenizer)
    if tail is not None and tokenizer.token_to_id(tail) is None:
        markers = [m for m in (DEFAULT_MARKERS if template == DEFAULT_CHAT_TEMPLATE else (tail,))
                   if tokenizer.token_to_id(m) is None]
        raise TemplateError(
            f"the chat template ends each reply with '{tail}', which is not a token of this model's vocabulary, "
            f"so the model could never learn to end its turn; add the template's markers as special tokens: "
            f"tokenizer.add_special_tokens={markers!r} (the embeddings grow), or give the model a template "
            "(meta chat_template) that uses its own tokens")


def mark_trained(tokenizer, encoded: Encoded, color: bool = False) -> str:
    """The conversation's text with the trained tokens in [[...]] (or green when `color`), for `data inspect`."""
    ids, trained = encoded.ids.tolist(), encoded.trained.tolist()
    out, first = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or trained[i] != trained[first]:  # decode runs whole: multi-byte characters stay intact
            text = tokenizer.decode(ids[first:i], skip_special_tokens=False)
            if trained[first]:
                text = f"\033[32m{text}\033[0m" if color else f"[[{text}]]"
            out.append(text)
            first = i
    return "".join(out)


def inspect_chat_file(path, tokenizer, meta: dict, block_size: int, show: int = 3, color: bool = False) -> str:
    """A report for `lmforge data inspect`: the first `show` conversations rendered with their trained tokens
    marked, then the counts over the whole file (conversations, tokens, trained tokens, truncated)."""
    template = template_of(meta)
    check_template_tokens(template, tokenizer)
    shape, conversations = read_conversations(path)
    tokens = special_strings(tokenizer)
    encoded = [encode_conversation(tokenizer, template, messages, block_size, tokens) for messages in conversations]
    which = "the model's own" if meta.get("chat_template") else "the built-in ChatML"
    lines = [f"{path}: {len(conversations)} conversations in the '{shape}' shape, rendered with {which} chat template;",
             "trained tokens (the assistant's replies and their end-of-turn) are "
             + ("in green" if color else "between [[ and ]]"), ""]
    for number, example in enumerate(encoded[:show], start=1):
        lines += [f"--- conversation {number}: {len(example.ids)} tokens, {example.n_trained} trained"
                  + (f" (cut to block_size {block_size})" if example.truncated else ""),
                  mark_trained(tokenizer, example), ""]
    total = sum(len(e.ids) for e in encoded)
    trained = sum(e.n_trained for e in encoded)
    dropped = sum(e.n_trained == 0 for e in encoded)
    lines.append(f"total: {len(encoded)} conversations, {total} tokens, {trained} trained ({trained / max(total, 1):.1%}), "
                 f"{sum(e.truncated for e in encoded)} cut to block_size {block_size}, {dropped} with no trained token "
                 "left (training skips them)")
    return "\n".join(lines)
