"""Corpus readers: .txt/.md files, .jsonl and .csv/.tsv records, folders and globs, and the built-in corpus."""
from __future__ import annotations

import csv
import glob
import io
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".text", ""}
RECORD_SUFFIXES = {".jsonl", ".csv", ".tsv"}
CHUNK_CHARS = 1 << 20  # long plain-text files are handed on in ~1M-character pieces


class DataError(ValueError):
    """Bad or missing input data, worded for the person who supplied it."""


def builtin_corpus() -> list[str]:
    """The built-in corpus: CPython's own documentation topics (pydoc_data), present on every install."""
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]


def resolve_paths(paths: list[str] | str) -> list[Path]:
    """Expand files, folders (recursively) and glob patterns into a sorted, de-duplicated file list."""
    if isinstance(paths, (str, Path)):
        paths = [str(paths)]
    found: list[Path] = []
    for entry in paths:
        path = Path(entry).expanduser()
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES | RECORD_SUFFIXES
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not files:
                raise DataError(f"folder '{entry}' holds no .txt, .md, .jsonl, .csv or .tsv files")
            found += files
        else:
            matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
            if not matches:
                raise DataError(f"data path '{entry}' does not exist and matches no file")
            found += matches
    return list(dict.fromkeys(found))


def read_text(path: Path, errors: str = "replace") -> str:
    """Read a file as UTF-8. Invalid bytes are replaced with U+FFFD (with a warning) or rejected."""
    if not path.is_file():
        raise DataError(f"file '{path}' does not exist")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        if errors == "strict":
            raise DataError(f"file '{path}' is not valid UTF-8 (first bad byte at offset {error.start}); "
                            "convert it to UTF-8, or set data.encoding_errors='replace'") from None
        text = data.decode("utf-8-sig", errors="replace")
        bad = text.count("\ufffd") - data.count("\ufffd".encode())
        warnings.warn(f"file '{path}': {bad} invalid UTF-8 byte sequence(s) replaced with U+FFFD "
                      "(set data.encoding_errors='strict' to reject such files)", stacklevel=2)
        return text


def _chunks(text: str) -> Iterator[str]:
    """Split long text at line ends into ~CHUNK_CHARS pieces (lossless: joined they give the text back)."""
    start = 0
    while start < len(text):
        end = min(len(text), start + CHUNK_CHARS)
        if end < len(text):
            newline = text.rfind("\n", start, end)
            end = newline + 1 if newline > start else end
        yield text[start:end]
        start = end


def read_records(path: Path, errors: str = "replace") -> Iterator[dict]:
    """Rows of a .jsonl, .csv or .tsv file as dicts, with clear errors naming file and line."""
    text = read_text(path, errors)
    if path.suffix.lower() == ".jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: each line must be a JSON object, got {type(row).__name__}")
            yield row
    else:
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        if reader.fieldnames is None:
            raise DataError(f"'{path}' is empty: a header row naming the columns is needed")
        yield from reader


def iter_documents(paths: list[str] | str | None, text_field: str = "text", errors: str = "replace") -> Iterator[tuple[str, bool]]:
    """Yield (text, starts_document) pieces from every source; empty `paths` means the built-in corpus.

    Plain-text files are one document each (split into pieces at line ends); each .jsonl/.csv row is one.
    """
    if not paths:
        for text in builtin_corpus():
            yield text, True
        return
    for path in resolve_paths(paths):
        if path.suffix.lower() in RECORD_SUFFIXES:
            for number, row in enumerate(read_records(path, errors), 1):
                if text_field not in row:
                    raise DataError(f"{path}: record {number} has no field '{text_field}' "
                                    f"(fields: {', '.join(map(str, row))}); set data.text_field")
                value = row[text_field]
                if value:
                    yield str(value), True
        else:
            for index, piece in enumerate(_chunks(read_text(path, errors))):
                yield piece, index == 0


def iter_texts(paths, text_field: str = "text", errors: str = "replace") -> Iterator[str]:
    """Only the text pieces of iter_documents (for tokenizer training)."""
    for text, _ in iter_documents(paths, text_field, errors):
        yield text
