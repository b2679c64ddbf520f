"""Labeled sets for classification: read .csv/.tsv/.jsonl rows with a text (and optional pair) column and a
label column, map labels to ids, encode and right-pad batches for either model family."""
from __future__ import annotations

import json
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..tokenizer import Tokenizer
from .corpus import RECORD_SUFFIXES, DataError, check_file, read_records, read_text


@dataclass
class LabeledSet:
    """Texts, optional text pairs and label names of one file, in file order."""

    path: str
    texts: list[str]
    labels: list[str]
    pairs: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices) -> "LabeledSet":
        """The rows at `indices`, in that order."""
        pick = lambda values: [values[i] for i in indices]  # noqa: E731
        return LabeledSet(self.path, pick(self.texts), pick(self.labels), pick(self.pairs) if self.pairs else None)


def _check_suffix(path: Path) -> None:
    if path.suffix.lower() not in RECORD_SUFFIXES:
        raise DataError(f"labeled data '{path}' must be a .csv, .tsv or .jsonl file (got '{path.suffix or 'no suffix'}')")


def read_labeled(path: str | Path, text_field: str = "text", label_field: str = "label",
                 pair_field: str | None = None, errors: str = "replace", allow_empty_label: bool = False) -> LabeledSet:
    """Read every row of a labeled file; a missing column, an empty label (unless allowed: a multi-label row
    may have no tag) or an empty file is a DataError. A JSON list label is kept as JSON text."""
    path = Path(path)
    _check_suffix(path)
    texts, labels, pairs = [], [], []
    wanted = [text_field, label_field] + ([pair_field] if pair_field else [])
    for number, row in enumerate(read_records(path, errors), 1):
        absent = [name for name in wanted if name not in row]
        if absent:
            option = {text_field: "data.text_field", label_field: "data.label_field"}
            hint = ", ".join(f"set {option.get(name, 'data.text_pair_field')}" for name in absent)
            raise DataError(f"{path}: {'row' if path.suffix.lower() != '.jsonl' else 'record'} {number} has no "
                            f"column '{absent[0]}' (columns: {', '.join(map(str, row)) or 'none'}); {hint}")
        label = row[label_field]
        label = "" if label is None else json.dumps(label) if isinstance(label, list) else str(label).strip()
        if not label and not allow_empty_label:
            raise DataError(f"{path}: row {number} has an empty '{label_field}'; every row needs a label")
        texts.append("" if row[text_field] is None else str(row[text_field]))
        labels.append(label)
        if pair_field:
            pairs.append("" if row[pair_field] is None else str(row[pair_field]))
    if not texts:
        raise DataError(f"'{path}' holds no labeled rows: nothing to train or evaluate on")
    return LabeledSet(str(path), texts, labels, pairs if pair_field else None)


def sorted_labels(names) -> list[str]:
    """Distinct label names in a stable order: numerically when all are integers, else alphabetically."""
    unique = set(names)
    try:
        return sorted(unique, key=int)
    except ValueError:
        return sorted(unique)


def label_names(data: LabeledSet) -> list[str]:
    """The classes of a training set; fewer than two is a DataError (nothing to tell apart)."""
    names = sorted_labels(data.labels)
    if len(names) < 2:
        raise DataError(f"'{data.path}' has only one class ({names[0]!r}) in its labels; "
                        "a classifier needs at least two")
    return names


def label_ids(data: LabeledSet, labels: list[str]) -> np.ndarray:
    """Label names -> ids in `labels` order; names the model does not know are a DataError."""
    index = {name: i for i, name in enumerate(labels)}
    unknown = sorted({name for name in data.labels if name not in index})
    if unknown:
        raise DataError(f"'{data.path}' has labels the model does not know: {', '.join(map(repr, unknown[:10]))} "
                        f"(known: {', '.join(labels)})")
    return np.asarray([index[name] for name in data.labels], dtype=np.int64)


def iter_labeled_texts(data_config) -> Iterator[str]:
    """The text (and pair) column of data.train, to train a tokenizer for a classifier from scratch; streamed, so
    the file is never held whole (the checks are read_labeled's, which reads it again for training)."""
    path = Path(data_config.train)
    _check_suffix(path)
    text_field, pair_field = data_config.text_field, data_config.text_pair_field
    number = 0
    for number, row in enumerate(read_records(path, data_config.encoding_errors), 1):
        if text_field not in row or (pair_field and pair_field not in row):
            missing = text_field if text_field not in row else pair_field
            raise DataError(f"{path}: row {number} has no column '{missing}' (columns: {', '.join(map(str, row))}); "
                            f"set {'data.text_field' if missing == text_field else 'data.text_pair_field'}")
        yield "" if row[text_field] is None else str(row[text_field])
        if pair_field:
            yield "" if row[pair_field] is None else str(row[pair_field])
    if not number:
        raise DataError(f"'{path}' holds no labeled rows: nothing to train or evaluate on")


def read_texts_for_prediction(path: str | Path, text_field: str = "text", errors: str = "replace") -> list[str]:
    """Texts to classify: a .txt file gives one text a line; .csv/.tsv/.jsonl give their `text_field`."""
    path = Path(path)
    check_file(path)
    if path.suffix.lower() in RECORD_SUFFIXES:
        texts = []
        for number, row in enumerate(read_records(path, errors), 1):
            if text_field not in row:
                raise DataError(f"{path}: row {number} has no column '{text_field}' "
                                f"(columns: {', '.join(map(str, row))}); pass --text-field")
            texts.append("" if row[text_field] is None else str(row[text_field]))
    else:
        texts = [line for line in read_text(path, errors).splitlines() if line.strip()]
    if not texts:
        raise DataError(f"'{path}' holds no texts to classify")
    return texts


def encode_example(tokenizer: Tokenizer, text: str, pair: str | None, max_len: int) -> tuple[list[int], list[int]]:
    """Token ids and token-type ids of one example, at most `max_len` long.

    With [CLS]/[SEP] (WordPiece): [CLS] a [SEP] (b [SEP]) with types 0 / 1, the longer part cut first.
    Otherwise (decoder tokenizers): a (eos b), cut at the end; never empty, since the last token is pooled.
    """
    a = tokenizer.encode(text)
    b = tokenizer.encode(pair) if pair is not None else None
    cls_id, sep_id = tokenizer.cls_id, tokenizer.sep_id
    if cls_id is not None and sep_id is not None:
        budget = max_len - 2 - (1 if b is not None else 0)
        if budget < 1:
            raise ValueError(f"block_size {max_len} is too short to hold [CLS] and [SEP]")
        if b is None:
            a = a[:budget]
        else:
            while len(a) + len(b) > budget:  # longest-first truncation, as BERT does for pairs
                if len(a) >= len(b):
                    a = a[:-1]
                else:
                    b = b[:-1]
        ids = [cls_id, *a, sep_id]
        types = [0] * len(ids)
        if b is not None:
            ids += [*b, sep_id]
            types += [1] * (len(b) + 1)
        return ids, types
    ids = a if b is None else [*a, tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.pad_id, *b]
    ids = ids[:max_len] or [tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.pad_id]
    return ids, [0] * len(ids)


class EncodedSet:
    """A LabeledSet encoded once for a model: examples and label ids (or given `targets`: scores, multi-hot rows),
    batched by index lists. The tokens are packed into one int32 array with row offsets (token types as int8, or
    none when all are 0), about 4 bytes a token: a fraction of the text it came from, not another copy of it."""

    def __init__(self, data: LabeledSet, tokenizer: Tokenizer, labels: list[str] | None, max_len: int,
                 targets: np.ndarray | None = None):
        pairs = data.pairs or [None] * len(data)
        ids, types, offsets = array("i"), array("b"), array("q", [0])
        for text, pair in zip(data.texts, pairs):
            tokens, type_ids = encode_example(tokenizer, text, pair, max_len)
            ids.extend(tokens)
            offsets.append(len(ids))
            if pair is not None:
                types.extend(type_ids)
        # views of the arrays' buffers, not copies
        self.ids, self.offsets = np.frombuffer(ids, dtype=np.int32), np.frombuffer(offsets, dtype=np.int64)
        self.types = np.frombuffer(types, dtype=np.int8) if data.pairs else None  # pairs: types 0 / 1
        self.targets = targets if targets is not None else label_ids(data, labels) if labels is not None else None
        self.pad_id = tokenizer.pad_id

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Tokens of each example (N,)."""
        return np.diff(self.offsets)

    def example(self, index: int) -> tuple[list[int], list[int]]:
        """(token ids, token-type ids) of example `index`, as encode_example gave them."""
        start, end = self.offsets[index], self.offsets[index + 1]
        types = self.types[start:end].tolist() if self.types is not None else [0] * int(end - start)
        return self.ids[start:end].tolist(), types

    def batch(self, indices) -> dict[str, torch.Tensor]:
        """Padded tensors of the examples at `indices` (with `labels` when the set has targets)."""
        indices = np.asarray(indices, dtype=np.int64)
        width = int((self.offsets[indices + 1] - self.offsets[indices]).max())
        ids = np.full((len(indices), width), self.pad_id, dtype=np.int64)
        types = np.zeros((len(indices), width), dtype=np.int64)
        mask = np.zeros((len(indices), width), dtype=bool)
        for row, index in enumerate(indices):
            start, end = self.offsets[index], self.offsets[index + 1]
            ids[row, :end - start] = self.ids[start:end]
            if self.types is not None:
                types[row, :end - start] = self.types[start:end]
            mask[row, :end - start] = True
        batch = {"ids": torch.from_numpy(ids), "token_type_ids": torch.from_numpy(types), "pad_mask": torch.from_numpy(mask)}
        if self.targets is not None:
            batch["labels"] = torch.from_numpy(self.targets[indices])
        return batch
