"""Jinja chat templates, as checkpoints ship them (GGUF metadata, tokenizer_config.json, chat_template.jinja).

Rendered in jinja2's immutable sandbox with the globals templates in the wild expect (`raise_exception`,
`strftime_now`, a `tojson` that keeps non-ASCII text), the way transformers renders them, so the same
template gives the same prompt here and there. Every caller (LM.chat, `lmforge chat`, the server, SFT,
`data inspect`) renders through `render_chat`.
"""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

from ..errors import ConfigError


class TemplateError(ConfigError):
    """A chat template that does not parse, raises while rendering, or reaches outside the sandbox."""


def _raise_exception(message: str):
    raise TemplateError(f"the chat template refused the conversation: {message}")


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=16)
def compile_template(source: str):
    """Parse a template once (cached by its text); a syntax error is a TemplateError naming the line."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as error:
        raise TemplateError(f"the chat template does not parse (line {error.lineno}): {error.message}") from None


def render_chat(template: str, messages: list[dict], *, add_generation_prompt: bool = False,
                bos_token: str = "", eos_token: str = "", **extra) -> str:
    """The text a template makes of `messages` ([{"role": ..., "content": ...}, ...]); with
    `add_generation_prompt` it ends where the assistant's reply begins."""
    import jinja2
    from jinja2.sandbox import SecurityError

    compiled = compile_template(template)
    try:
        return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt,
                               bos_token=bos_token, eos_token=eos_token, **extra)
    except TemplateError:
        raise
    except SecurityError as error:
        raise TemplateError(f"the chat template tried something the sandbox forbids: {error}") from None
    except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError, IndexError) as error:
        raise TemplateError(f"the chat template failed while rendering: {type(error).__name__}: {error}") from None


TEMPLATE_FILE = "chat_template.jinja"  # beside config.json in an lmforge model directory (and an HF export)

# ChatML, for a model that ships no template (one made from scratch): the shape SmolLM2 and Qwen use
DEFAULT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# tokens that end an assistant's turn in the templates people ship (ChatML, Llama 3, Phi-3, Gemma, Mistral/Llama 2)
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>")


def special_strings(tokenizer) -> dict[str, str]:
    """The bos_token / eos_token strings a template is given ('' when the tokenizer has none)."""
    eos_id = tokenizer.eos_id
    eos = tokenizer.eos_token or (tokenizer.id_to_token(eos_id) if eos_id is not None else None) or ""
    return {"bos_token": getattr(tokenizer, "bos_token", None) or "", "eos_token": eos}


def template_of(meta: dict | None, *, default: bool = True) -> str | None:
    """A bundle's chat template: `meta["chat_template"]` (from GGUF metadata, an HF directory or
    chat_template.jinja), else the built-in ChatML DEFAULT_TEMPLATE (None with default=False)."""
    found = (meta or {}).get("chat_template")
    if isinstance(found, str) and found.strip():
        return found
    return DEFAULT_TEMPLATE if default else None


def check_messages(messages) -> list[dict]:
    """The conversation as a list of {"role": str, "content": str} dicts, or a ValueError saying what is wrong."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts, "
                         f"got {messages!r:.120}")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            raise ValueError(f"messages[{i}] must be a dict with a string 'role' and a string 'content', "
                             f"got {message!r:.120}")
        checked.append(dict(message))
    return checked


def end_of_turn_tokens(tokenizer, eos_token: str | None) -> list[str]:
    """The tokens that end the assistant's turn: the tokenizer's end-of-text and every known end-of-turn token
    its vocabulary holds as one token."""
    found = [eos_token] if eos_token else []
    for token in END_OF_TURN_TOKENS:
        if token not in found and tokenizer.token_to_id(token) is not None:
            found.append(token)
    return found
