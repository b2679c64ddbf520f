"""Streaming I/O for the data passes: corpus files read piece by piece with strict checks, mirrored writers,
an output folder published in one rename (an error leaves it untouched)."""
from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Iterator
from pathlib import Path

from ..files import atomic_directory, atomic_file
from .corpus import RECORD_SUFFIXES, DataError, allow_long_csv_fields, parse_json_record, resolve_paths

CARD_FILES = {"DATA_CARD.md", "data_card.json"}
CHUNK_CHARS = 1 << 16  # plain text is handed on in ~64K-character pieces cut at line ends


def corpus_files(inputs: list[str] | str) -> list[tuple[Path, Path]]:
    """(file, path relative to its input folder) for every corpus file; data cards of earlier passes are skipped."""
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not inputs:
        raise DataError("no input given: name corpus files or folders")
    found: list[tuple[Path, Path]] = []
    for entry in inputs:
        root = Path(entry).expanduser()
        for path in resolve_paths([str(entry)]):
            if path.name in CARD_FILES:
                continue
            relative = path.relative_to(root) if root.is_dir() else Path(path.name)
            found.append((path, relative))
    if not found:
        raise DataError(f"the corpus is empty: {', '.join(map(str, inputs))} holds no text files")
    names = [str(r) for _, r in found]
    if len(set(names)) != len(names):
        raise DataError("two input files would be written under the same name; give one folder, or files with "
                        "distinct names")
    return found


def check_text_file(path: Path) -> None:
    """Reject binary files (NUL bytes in the first 8 KiB) before any text is read."""
    with open(path, "rb") as handle:
        head = handle.read(8192)
    if b"\0" in head:
        raise DataError(f"'{path}' looks like a binary file (it contains NUL bytes); the data passes read UTF-8 text "
                        "(.txt, .md, .jsonl, .csv, .tsv)")


def numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line with its newline) decoded as strict UTF-8, with the file and line named on errors."""
    check_text_file(path)
    number = 0
    try:
        with open(path, encoding="utf-8-sig", errors="strict", newline="") as handle:
            for number, line in enumerate(handle, 1):
                yield number, line
    except UnicodeDecodeError as error:
        raise DataError(f"'{path}' is not valid UTF-8 (line {number + 1}: {error.reason}); convert it to UTF-8, "
                        f"e.g. iconv -f latin1 -t utf-8") from None


def iter_text_chunks(path: Path, chunk_chars: int = CHUNK_CHARS) -> Iterator[str]:
    """A plain-text file in pieces of about chunk_chars characters, cut at line ends (lossless when joined)."""
    pending, size = [], 0
    for _, line in numbered_lines(path):
        pending.append(line)
        size += len(line)
        if size >= chunk_chars:
            yield "".join(pending)
            pending, size = [], 0
    if pending:
        yield "".join(pending)


def is_records(path: Path) -> bool:
    return path.suffix.lower() in RECORD_SUFFIXES


def iter_records(path: Path, text_field: str) -> Iterator[dict]:
    """Rows of a .jsonl/.csv/.tsv file, one at a time; each must have `text_field` (named in the error if not)."""
    for number, row in iter_rows(path):
        if text_field not in row:
            raise DataError(f"{path}: record {number} has no field '{text_field}' (fields: "
                            f"{', '.join(map(str, row)) or 'none'}); name the text column with --text-field")
        yield row


def iter_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(row number, row) of a .jsonl/.csv/.tsv file, one at a time, whatever fields each row has."""
    return _jsonl_rows(path) if path.suffix.lower() == ".jsonl" else _csv_rows(path)


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict]]:
    for number, line in numbered_lines(path):
        if line.strip():
            yield number, parse_json_record(path, number, line)


def _csv_rows(path: Path) -> Iterator[tuple[int, dict]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    allow_long_csv_fields()
    reader = csv.DictReader((line for _, line in numbered_lines(path)), delimiter=delimiter)
    for number, row in enumerate(reader, 1):
        if None in row:
            raise DataError(f"{path}: row {number} has more cells than the header has columns")
        yield number, row


def csv_header(path: Path) -> list[str]:
    """The column names of a .csv/.tsv file (its first row)."""
    for _, line in numbered_lines(path):
        return next(csv.reader([line], delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
    raise DataError(f"'{path}' is empty: a header row naming the columns is needed")


class RecordWriter:
    """Writes rows in the format of the file they came from (.jsonl, .csv or .tsv) or plain text."""

    def __init__(self, path: Path, like: Path, fieldnames: list[str] | None = None):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(path, "w", encoding="utf-8", newline="")
        suffix = like.suffix.lower()
        self.kind = "jsonl" if suffix == ".jsonl" else "csv" if suffix in (".csv", ".tsv") else "text"
        self.writer = None
        if self.kind == "csv":
            self.writer = csv.DictWriter(self.handle, fieldnames=fieldnames or csv_header(like),
                                         delimiter="\t" if suffix == ".tsv" else ",")
            self.writer.writeheader()

    def write(self, item) -> None:
        if self.kind == "jsonl":
            self.handle.write(json.dumps(item, ensure_ascii=False) + "\n")
        elif self.kind == "csv":
            self.writer.writerow(item)
        else:
            self.handle.write(item)

    def close(self) -> None:
        self.handle.close()


@contextlib.contextmanager
def output_folder(out: str | Path, inputs, overwrite: bool = False):
    """A temp folder that becomes `out` in one rename when the block succeeds; on any error `out` is untouched."""
    out = Path(out).expanduser()
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    for entry in inputs:
        source = Path(entry).expanduser().resolve()
        target = out.resolve()
        if source == target or target in source.parents or source in target.parents:
            raise DataError(f"output '{out}' overlaps the input '{entry}'; write to a separate folder")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output '{out}' is a file; the passes write a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"output folder '{out}' is not empty; choose another or pass --overwrite")
    with atomic_directory(out) as temp:
        yield temp


@contextlib.contextmanager
def output_file(out: str | Path, overwrite: bool = False):
    """A temp path beside `out` that replaces it in one rename when the block succeeds."""
    out = Path(out).expanduser()
    if out.is_dir():
        raise FileExistsError(f"output '{out}' is a folder; give a file name")
    if out.exists() and not overwrite:
        raise FileExistsError(f"output file '{out}' exists; choose another name or pass --overwrite")
    with atomic_file(out, suffix=out.suffix + ".tmp") as temp:
        yield temp
