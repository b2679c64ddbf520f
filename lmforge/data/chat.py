"""Conversations from JSONL in the shapes people have, as lists of {"role", "content"} messages.

Three shapes, detected per file from its first row and then required of every row:
- "messages": OpenAI style, {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
- "sharegpt": {"conversations": [{"from": "system"|"human"|"gpt", "value": "..."}, ...]}
- "alpaca": {"instruction": "...", "input": "..." (optional), "output": "..."}, one user turn and one reply
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import DataError

SHAPES = ("messages", "sharegpt", "alpaca")
ROLES = ("system", "user", "assistant", "tool")
# ShareGPT's speaker names (and the variants seen in published sets) -> roles
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "tool": "tool"}


def detect_shape(row: dict) -> str | None:
    """Which of SHAPES a JSON row has ('messages', 'sharegpt', 'alpaca'), or None."""
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row and "output" in row:
        return "alpaca"
    return None


def _text(value, where: str, what: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: {what} must be a string, got {type(value).__name__} {value!r:.60}")
    return value


def _turns(row: dict, shape: str, where: str) -> list[dict]:
    if shape == "alpaca":
        instruction = _text(row["instruction"], where, "'instruction'")
        extra = _text(row.get("input") or "", where, "'input'")
        prompt = f"{instruction}\n\n{extra}" if extra else instruction
        reply = _text(row["output"], where, "'output'")
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
    openai = shape == "messages"
    key, role_key, text_key = ("messages", "role", "content") if openai else ("conversations", "from", "value")
    turns = row[key]
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: '{key}' must be a non-empty list of turns, got {turns!r:.60}")
    messages = []
    for n, turn in enumerate(turns):
        if not isinstance(turn, dict) or role_key not in turn or text_key not in turn:
            raise DataError(f"{where}: turn {n} of '{key}' must be an object with '{role_key}' and '{text_key}', "
                            f"got {turn!r:.80}")
        name = turn[role_key]
        role = name if shape == "messages" else SHAREGPT_ROLES.get(str(name).lower())
        if role not in ROLES:
            known = ", ".join(ROLES if shape == "messages" else SHAREGPT_ROLES)
            raise DataError(f"{where}: turn {n} has {role_key}={name!r}; use one of {known}")
        messages.append({"role": role, "content": _text(turn[text_key], where, f"turn {n}'s '{text_key}'")})
    return messages


def parse_conversation(row, shape: str | None, where: str) -> tuple[str, list[dict]]:
    """(shape, messages) of one decoded JSON row; `shape` is the file's (None for its first row). `where` is
    'file:line' for the errors."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    found = detect_shape(row)
    if found is None:
        raise DataError(f"{where}: the row has none of the chat shapes: 'messages' (role/content turns), "
                        f"'conversations' (ShareGPT from/value turns) or 'instruction'+'output' (alpaca); "
                        f"its keys are {sorted(row)}")
    if shape is not None and found != shape:
        raise DataError(f"{where}: this row is in the '{found}' shape but the file began in the '{shape}' shape; "
                        "a file must keep one shape (split it into one file per shape)")
    messages = _turns(row, found, where)
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: the conversation has no assistant turn, so there is nothing to train on; "
                        "give every row at least one assistant reply (or remove the row)")
    return found, messages


def read_conversations(path: str | Path, limit: int | None = None) -> tuple[str, list[list[dict]]]:
    """(shape, conversations) of a chat JSONL file (at most `limit` of them); every row must have the same shape
    and an assistant turn. Errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"chat data file '{path}' does not exist" if not path.exists() else
                        f"'{path}' is a folder; give a .jsonl file of conversations")
    shape, conversations = None, []
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{where}: not valid JSON ({error.msg}); a chat file has one JSON object a "
                                "line") from None
            shape, messages = parse_conversation(row, shape, where)
            conversations.append(messages)
            if limit is not None and len(conversations) >= limit:
                break
    if not conversations:
        raise DataError(f"'{path}' holds no conversations (it is empty); give one JSON object a line")
    return shape, conversations
