"""The error types every layer raises, in a leaf module that imports nothing of lmforge.

Each is a ValueError worded for the person who supplied the input: what was wrong and what to do.
The command line prints them as one `error:` line and exits 2.
"""
from __future__ import annotations

import re
from pathlib import Path


class ConfigError(ValueError):
    """A configuration problem, worded for the person who wrote the config."""


class DataError(ValueError):
    """Bad or missing input data, worded for the person who supplied it."""


class ModelDirError(ValueError):
    """A path that is not a usable model directory (or model file)."""


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, at most `limit` characters ("" when it has none): a compiler's or
    a kernel's multi-page error said in one line."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else ""


def shape_mismatch(config_file: Path, name: str, expected: tuple, got: tuple, fields: dict,
                   transposed: bool = False) -> ModelDirError:
    """The error for a weight whose shape disagrees with config.json, naming the config key when one explains it."""
    shown_got, shown_expected = (got[::-1], expected[::-1]) if transposed else (got, expected)
    detail = f"(tensor {name} has shape {list(shown_got)}, config.json implies {list(shown_expected)})"
    for want, have in zip(expected, got):
        if want != have:
            key = next((k for k, v in fields.items() if v == want), None)
            if key is not None:
                key = key.replace(" (count)", "")
                return ModelDirError(f"'{config_file}' says {key}={want}, the weights have {have} {detail}")
    return ModelDirError(f"the weights do not fit '{config_file}' {detail}")


_JSON_WORDS = {  # json's messages, said for a person editing the file
    "Expecting value": "a value was expected (a number, \"string\", true, false, null, [list] or {object})",
    "Expecting property name enclosed in double quotes":
        "a key in double quotes was expected (JSON allows no trailing comma and no single quotes)",
    "Expecting ',' delimiter": "a comma was expected between two items",
    "Expecting ':' delimiter": "a colon was expected after a key",
    "Extra data": "more text follows the first JSON value (a file holds one value; .jsonl one per line)",
    "Unterminated string starting at": "a string is not closed (a missing \")",
    "Invalid control character at": "a string holds a raw control character (write a line break as \\n)",
}


def parse_failure(path: Path | str, error: Exception, kind: str, text: str | None = None) -> str:
    """Words for a JSON or TOML file a parser refused: empty, not UTF-8, or what is wrong at which line, with the
    file's name, instead of the parser's own text (`Expecting value: line 1 column 1 (char 0)`)."""
    where = f"'{path}'"
    if isinstance(error, UnicodeDecodeError):
        return (f"{where} is not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset {error.start}); "
                f"save it as UTF-8 {kind}")
    if text is not None and not text.strip():
        return f"{where} is empty; it should hold {kind}"
    message = getattr(error, "msg", None) or str(error)
    line = getattr(error, "lineno", None)
    column = getattr(error, "colno", None)
    found = re.search(r"\(at line (\d+), column (\d+)\)$", message)  # tomllib puts the place in its message
    if found:
        message, line, column = message[:found.start()].strip(), int(found.group(1)), int(found.group(2))
    for prefix, words in _JSON_WORDS.items():
        if message.startswith(prefix):
            message = words
            break
    place = f" at line {line}, column {column}" if line else ""
    shown = ""
    if line and text is not None:
        lines = text.splitlines()
        if 0 < line <= len(lines) and lines[line - 1].strip():
            content = lines[line - 1].strip()
            shown = f": {content[:60]!r}" + ("..." if len(content) > 60 else "")
    return f"{where} is not valid {kind}{place}: {message[0].lower() + message[1:]}{shown}"
