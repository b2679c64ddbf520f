"""Targets that are not one class name per row: a number (regression) or a set of tags (multi-label).

Both read the label column of a LabeledSet (data/labeled.py), so they share its file formats and its
text encoding; row numbers in errors count data rows from 1, as read_labeled's do.
"""
from __future__ import annotations

import json
import math

import numpy as np

from .corpus import DataError
from .labeled import LabeledSet, sorted_labels

TAG_SEPARATOR = ";"


def parse_scores(data: LabeledSet, field: str = "label") -> np.ndarray:
    """The label column as float64 numbers; a value that is not a finite number is a DataError naming its row."""
    scores = np.empty(len(data), dtype=np.float64)
    for row, text in enumerate(data.labels):
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise DataError(f"{data.path}: row {row + 1} has {field} {text!r}, not a number; objective 'regress' "
                            f"needs a finite number (e.g. 3 or 0.75) in column '{field}' of every row")
        scores[row] = value
    return scores


def parse_tags(text: str) -> list[str]:
    """One row's tags: a JSON list ('["a", "b"]') or names joined by ';' ('a;b'); blanks and repeats dropped."""
    text = text.strip()
    if text.startswith("["):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{text!r} starts like a JSON list but is not one ({error})") from None
        if not isinstance(values, list) or any(isinstance(v, (list, dict)) for v in values):
            raise ValueError(f"{text!r} must be a flat JSON list of tag names")
        names = ["" if v is None else str(v).strip() for v in values]
    else:
        names = [part.strip() for part in text.split(TAG_SEPARATOR)]
    return list(dict.fromkeys(name for name in names if name))


def read_tag_lists(data: LabeledSet, field: str = "label") -> list[list[str]]:
    """Every row's tags (a row may have none); a malformed JSON list is a DataError naming its row."""
    tags = []
    for row, text in enumerate(data.labels):
        try:
            tags.append(parse_tags(text))
        except ValueError as error:
            raise DataError(f"{data.path}: row {row + 1}, column '{field}': {error}") from None
    return tags


def tag_names(tag_lists: list[list[str]], path: str, field: str = "label") -> list[str]:
    """The distinct tags of a training set; none at all is a DataError (there is nothing to learn)."""
    names = sorted_labels(name for tags in tag_lists for name in tags)
    if not names:
        raise DataError(f"'{path}': every row has an empty tag list in column '{field}'; objective 'multilabel' "
                        f"needs tags such as 'news;sport' or [\"news\", \"sport\"] on at least some rows")
    return names


def multi_hot(tag_lists: list[list[str]], names: list[str], path: str) -> np.ndarray:
    """(rows, len(names)) float32 with 1 where a row carries a tag; a tag not in `names` is a DataError."""
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({name for tags in tag_lists for name in tags if name not in index})
    if unknown:
        raise DataError(f"'{path}' has tags the model does not know: {', '.join(map(repr, unknown[:10]))} "
                        f"(known: {', '.join(names)})")
    out = np.zeros((len(tag_lists), len(names)), dtype=np.float32)
    for row, tags in enumerate(tag_lists):
        out[row, [index[name] for name in tags]] = 1.0
    return out


def standardize(scores: np.ndarray, path: str, field: str = "label") -> tuple[float, float]:
    """(mean, std) of training scores; all scores equal is a DataError (nothing to learn, and no scale)."""
    mean, std = float(scores.mean()), float(scores.std())
    if not std > 0:
        raise DataError(f"'{path}': every row has the same {field} ({scores[0]:g}); regression needs scores that vary")
    return mean, std
