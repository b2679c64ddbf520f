"""Chat templates: how a list of messages becomes one prompt for a decoder.

A model directory may hold `chat_template.json` with a format string per role (each gets {content}),
the text that opens the assistant's turn, and stop strings that end it, e.g.
{"system": "{content}\\n\\n", "user": "User: {content}\\n", "assistant": "Assistant: {content}\\n",
 "generation_prompt": "Assistant:", "stop": ["\\nUser:"]}
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

TEMPLATE_FILE = "chat_template.json"


@dataclass(frozen=True)
class ChatTemplate:
    system: str = "{content}\n\n"
    user: str = "User: {content}\n"
    assistant: str = "Assistant: {content}\n"
    generation_prompt: str = "Assistant:"
    stop: tuple[str, ...] = field(default=("\nUser:",))

    def render(self, messages: list[tuple[str, str]]) -> str:
        """The prompt for (role, content) pairs, ending where the assistant's reply begins."""
        parts = []
        for role, content in messages:
            form = {"system": self.system, "developer": self.system, "user": self.user,
                    "assistant": self.assistant}[role]
            parts.append(form.replace("{content}", content))
        return "".join(parts) + self.generation_prompt


def load_chat_template(model_dir: str | Path | None) -> ChatTemplate:
    """The model directory's chat_template.json, or the default template when it has none."""
    if model_dir is None or not (Path(model_dir) / TEMPLATE_FILE).is_file():
        return ChatTemplate()
    path = Path(model_dir) / TEMPLATE_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"'{path}' is not valid JSON: {error}") from None
    known = {"system", "user", "assistant", "generation_prompt", "stop"}
    if not isinstance(raw, dict) or set(raw) - known:
        raise ValueError(f"'{path}' must be a JSON object with keys among {sorted(known)}, got {raw!r:.200}")
    for key in known - {"stop"}:
        if key in raw and not isinstance(raw[key], str):
            raise ValueError(f"'{path}': {key} must be a string, got {raw[key]!r}")
    stop = raw.pop("stop", ChatTemplate.stop)
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
        raise ValueError(f"'{path}': stop must be a list of non-empty strings, got {stop!r}")
    return ChatTemplate(**raw, stop=tuple(stop))
