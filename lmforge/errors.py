"""The error types every layer raises, in a leaf module that imports nothing of lmforge.

Each is a ValueError worded for the person who supplied the input: what was wrong and what to do.
The command line prints them as one `error:` line and exits 2.
"""
from __future__ import annotations

from pathlib import Path


class ConfigError(ValueError):
    """A configuration problem, worded for the person who wrote the config."""


class DataError(ValueError):
    """Bad or missing input data, worded for the person who supplied it."""


class ModelDirError(ValueError):
    """A path that is not a usable model directory (or model file)."""


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
