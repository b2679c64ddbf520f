"""Chatting with a decoder: a conversation through the model's own chat template, a reply that ends at the
template's end-of-turn token.

Takes a Bundle (or its parts); `LM.chat`, `lmforge chat` and the server's /v1/chat/completions all come here,
so a conversation becomes the same prompt tokens everywhere.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..bundle import Bundle
from ..tokenizer import Tokenizer
from .chat_template import check_messages, end_of_turn_tokens, render_chat, special_strings, template_of
from .generate import Continuation, SamplingConfig, continue_prompts
from .prompt_cache import PromptCache


@dataclass(frozen=True)
class ChatFormat:
    """How one model chats: its template, the special tokens the template is given, and what ends a reply."""

    template: str
    bos_token: str
    eos_token: str
    end_ids: tuple[int, ...]  # tokens that end the assistant's turn
    end_texts: tuple[str, ...]  # end-of-turn markers the vocabulary splits into pieces: stop strings instead
    adds_bos: bool  # the tokenizer puts bos before a text of its own accord (llama's add-bos rule)
    bos_id: int | None


def chat_format(tokenizer: Tokenizer, meta: dict | None, template: str | None = None) -> ChatFormat:
    """The ChatFormat of a tokenizer and its bundle's meta (`template` overrides the model's own)."""
    template = template or template_of(meta)
    strings = special_strings(tokenizer)
    bos, eos = strings["bos_token"], strings["eos_token"]
    bos_id = tokenizer.token_to_id(bos) if bos else None
    ends = end_of_turn_tokens(tokenizer, eos or None)
    end_ids = tuple(dict.fromkeys(i for i in map(tokenizer.token_to_id, ends) if i is not None))
    # a marker the template writes but the vocabulary lacks as one token (a model made from scratch): its text
    markers = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")
    end_texts = tuple(m for m in markers if m in template and tokenizer.token_to_id(m) is None)
    return ChatFormat(template, bos, eos, end_ids, end_texts, _adds_bos(tokenizer, bos_id), bos_id)


def _adds_bos(tokenizer: Tokenizer, bos_id: int | None) -> bool:
    """Whether the tokenizer's own post-processing starts every text with bos (found by trying it)."""
    if bos_id is None:
        return False
    with_specials = tokenizer.encode("a", add_special_tokens=True)
    return bool(with_specials) and with_specials[0] == bos_id and tokenizer.encode("a")[:1] != [bos_id]


def apply_chat_template(tokenizer: Tokenizer, meta: dict | None, messages: list[dict], *,
                        add_generation_prompt: bool = True, template: str | None = None, **extra) -> str:
    """The text the model's chat template makes of `messages`; with `add_generation_prompt` it ends where the
    assistant's reply begins. A template that refuses the conversation raises a TemplateError."""
    form = chat_format(tokenizer, meta, template)
    return render_chat(form.template, check_messages(messages), add_generation_prompt=add_generation_prompt,
                       bos_token=form.bos_token, eos_token=form.eos_token, **extra)


def encode_chat_prompt(tokenizer: Tokenizer, form: ChatFormat, text: str) -> list[int]:
    """A rendered conversation's token ids: special tokens the template wrote are parsed as such, and bos is
    added only when the tokenizer's rule asks for it and the template has not written it already."""
    ids = tokenizer.encode(text)
    if form.adds_bos and form.bos_id is not None and ids[:1] != [form.bos_id]:
        ids = [form.bos_id, *ids]
    return ids


def chat_prompt(bundle: Bundle, messages: list[dict], template: str | None = None) -> tuple[list[int], ChatFormat]:
    """The prompt ids for the assistant's next reply to `messages`, and the model's ChatFormat."""
    form = chat_format(bundle.tokenizer, bundle.meta, template)
    text = render_chat(form.template, check_messages(messages), add_generation_prompt=True,
                       bos_token=form.bos_token, eos_token=form.eos_token)
    return encode_chat_prompt(bundle.tokenizer, form, text), form


def chat_reply(bundle: Bundle, messages: list[dict], sampling: SamplingConfig | None = None, *,
               template: str | None = None, on_text: Callable[[str], None] | None = None,
               use_cache: bool = True, prompt_cache: PromptCache | None = None) -> Continuation:
    """The assistant's next reply to `messages`, generated until an end-of-turn token (or a stop string, or
    `sampling.max_new_tokens`); `on_text(piece)` streams it as it comes. `prompt_cache` (one per conversation)
    keeps the KV cache between replies, so each reply prefills only the new turn."""
    if not bundle.is_causal:
        raise ValueError(f"chat needs a decoder (gpt, llama); this model is '{bundle.config.arch}', an encoder or "
                         "classifier (use fill-mask or classify)")
    sampling = sampling or SamplingConfig(max_new_tokens=256, temperature=0.0)
    prompt, form = chat_prompt(bundle, messages, template)
    cfg = SamplingConfig(**{**vars(sampling), "stop": tuple(sampling.stop) + form.end_texts})
    stream = (lambda row, piece: on_text(piece)) if on_text is not None else None
    return continue_prompts(bundle.model, bundle.tokenizer, [prompt], cfg, use_cache=use_cache, on_text=stream,
                            end_ids=form.end_ids, prompt_cache=prompt_cache)[0]
