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
