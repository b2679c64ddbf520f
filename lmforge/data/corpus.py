"""Corpus readers: .txt/.md files, .jsonl and .csv/.tsv records, folders and globs, and the built-in corpus."""
from __future__ import annotations

import codecs
import csv
import glob
import io
import json
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from ..errors import DataError

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".text", ""}
RECORD_SUFFIXES = {".jsonl", ".csv", ".tsv"}
CHUNK_CHARS = 1 << 20  # long plain-text files are handed on in ~1M-character pieces
GARBAGE_SHARE = 0.25  # a "text" file with more replacement characters / NULs / control codes than this is binary
BOMS = [(b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe\x00\x00", "utf-32-le"), (b"\x00\x00\xfe\xff", "utf-32-be"),
        (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be")]  # UTF-32 first: its LE BOM starts like UTF-16's
MAGIC = [(b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
         (b"%PDF", "a PDF document"), (b"PK\x03\x04", "a zip archive (or .docx/.xlsx)"), (b"\x1f\x8b", "gzip-compressed"),
         (b"\x7fELF", "a program (ELF)"), (b"SQLite format 3", "an SQLite database")]


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
        if not str(entry).strip():
            raise DataError("an empty data path ('') was given; name a file, folder or glob (data.paths lists them)")
        path = Path(entry).expanduser()
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES | RECORD_SUFFIXES
                           and not any(part.startswith(".") for part in p.relative_to(path).parts)
                           and p.name != "DATA_CARD.md")  # a prepared corpus's data card is not training text
            if not files:
                raise DataError(f"folder '{entry}' holds no .txt, .md, .jsonl, .csv or .tsv files")
            found += files
        else:
            matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
            if not matches:
                raise DataError(f"data path '{entry}' does not exist and matches no file")
            found += matches
    return list(dict.fromkeys(found))


def check_file(path: Path) -> None:
    """A DataError unless `path` is an existing file (a folder is named as such)."""
    if path.is_dir():
        raise DataError(f"'{path}' is a folder, but a file is expected here")
    if not path.is_file():
        raise DataError(f"file '{path}' does not exist")


def _encoding(data: bytes) -> tuple[str, int]:
    """(codec, BOM length): a BOM decides; else text with NULs in every other byte is BOM-less UTF-16."""
    for bom, codec in BOMS:
        if data.startswith(bom):
            return codec, len(bom)
    sample = data[:4096]
    if len(sample) >= 8 and b"\x00\x00" not in sample[: len(sample) & ~1]:
        even, odd = sample[0::2].count(0), sample[1::2].count(0)
        if odd > 0.4 * len(sample) / 2 and even < 0.05 * len(sample) / 2:
            return "utf-16-le", 0  # ASCII-range text from PowerShell's Out-File without its BOM
        if even > 0.4 * len(sample) / 2 and odd < 0.05 * len(sample) / 2:
            return "utf-16-be", 0
    return "utf-8", 0


_NOT_TEXT = dict.fromkeys([0xFFFD, *(c for c in range(32) if chr(c) not in "\t\n\r\f\v\x1b")])


def _garbage_share(text: str) -> float:
    """Share of characters no text file holds: U+FFFD from undecodable bytes, NUL and other control codes."""
    if not text or ("\ufffd" not in text and "\x00" not in text):  # clean text: skip the full count
        return 0.0
    return (len(text) - len(text.translate(_NOT_TEXT))) / len(text)


def read_text(path: Path, errors: str = "replace") -> str:
    """Read a text file: UTF-8 (or UTF-16/32 with a BOM, or BOM-less UTF-16). Invalid bytes are replaced with
    U+FFFD (with a warning) or rejected; a file that is mostly not text (an image, random bytes) is a DataError."""
    check_file(path)
    data = path.read_bytes()
    for magic, kind in MAGIC:
        if data.startswith(magic):
            raise DataError(f"file '{path}' is {kind}, not text; give text files (.txt, .jsonl, .csv)")
    codec, skip = _encoding(data)
    try:
        text = data[skip:].decode(codec)
    except UnicodeDecodeError as error:
        if errors == "strict":
            raise DataError(f"file '{path}' is not valid {codec.upper()} (first bad byte at offset {error.start + skip}); "
                            "convert it to UTF-8, or set data.encoding_errors='replace'") from None
        text = data[skip:].decode(codec, errors="replace")
        bad = text.count("\ufffd") - data.count("\ufffd".encode())
        if _garbage_share(text) <= GARBAGE_SHARE:
            warnings.warn(f"file '{path}': {bad} invalid {codec.upper()} byte sequence(s) replaced with U+FFFD "
                          "(set data.encoding_errors='strict' to reject such files)", stacklevel=2)
    share = _garbage_share(text)
    if share > GARBAGE_SHARE:
        raise DataError(f"file '{path}' does not look like text: {share:.0%} of it decodes to replacement characters, "
                        f"NULs or control codes (read as {codec.upper()}); is it binary or in another encoding? "
                        "Convert it to UTF-8 text")
    return text


def allow_long_csv_fields() -> None:
    """Let a CSV cell be as long as memory allows (the csv module stops at 131,072 characters by default)."""
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:  # a C long is 32 bits on Windows
            limit //= 2


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


def parse_json_record(path: Path, number: int, line: str) -> dict:
    """One line of a .jsonl file as a dict, with an error naming file and line for anything else."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{number}: not valid JSON ({error.msg})") from None
    except RecursionError:
        raise DataError(f"{path}:{number}: JSON nested too deeply to read; each line must be a flat "
                        "object such as {\"text\": \"...\"}") from None
    if not isinstance(row, dict):
        raise DataError(f"{path}:{number}: each line must be a JSON object, got {type(row).__name__}")
    return row


def read_records(path: Path, errors: str = "replace") -> Iterator[dict]:
    """Rows of a .jsonl, .csv or .tsv file as dicts, with clear errors naming file and line. The file is streamed
    line by line, so reading it holds only the rows a caller keeps, never a second copy of the whole file."""
    lines = _checked_lines(path, errors)
    if path.suffix.lower() == ".jsonl":
        for number, line in enumerate(lines, 1):
            if line.strip():
                yield parse_json_record(path, number, line)
        return
    allow_long_csv_fields()
    reader = csv.DictReader(lines, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    try:
        if reader.fieldnames is None:
            raise DataError(f"'{path}' is empty: a header row naming the columns is needed")
        yield from reader
    except csv.Error as error:
        raise DataError(f"{path}:{reader.line_num}: not valid CSV ({error})") from None


def _checked_lines(path: Path, errors: str) -> Iterator[str]:
    """The lines of a text file (ends kept) decoded as read_text would, one at a time: a binary or mostly
    undecodable file is a DataError (judged on its first 64 KiB, then on the whole), a few bad bytes a warning."""
    check_file(path)
    with open(path, "rb") as raw:
        head = raw.read(1 << 16)
        for magic, kind in MAGIC:
            if head.startswith(magic):
                raise DataError(f"file '{path}' is {kind}, not text; give text files (.txt, .jsonl, .csv)")
        codec, skip = _encoding(head)
        sample = codecs.getincrementaldecoder(codec)("replace").decode(head[skip:])
        if _garbage_share(sample) > GARBAGE_SHARE:
            raise _not_text(path, _garbage_share(sample), codec)
        raw.seek(skip)
        stream = io.TextIOWrapper(raw, encoding=codec, errors="strict" if errors == "strict" else "replace", newline="")
        chars = garbage = replaced = 0
        try:
            for line in stream:
                chars += len(line)
                if "\ufffd" in line or "\x00" in line:
                    garbage += round(_garbage_share(line) * len(line))
                    replaced += line.count("\ufffd")
                yield line
        except UnicodeDecodeError:
            raise DataError(f"file '{path}' is not valid {codec.upper()} (first bad byte at offset "
                            f"{_first_bad_byte(path, codec, skip)}); convert it to UTF-8, or set "
                            "data.encoding_errors='replace'") from None
    if chars and garbage / chars > GARBAGE_SHARE:
        raise _not_text(path, garbage / chars, codec)
    if replaced:
        warnings.warn(f"file '{path}': {replaced} invalid {codec.upper()} byte sequence(s) replaced with U+FFFD "
                      "(set data.encoding_errors='strict' to reject such files)", stacklevel=3)


def _first_bad_byte(path: Path, codec: str, skip: int) -> int:
    """The file offset of the first byte that does not decode as `codec` (read again, in blocks, to find it)."""
    decoder, offset = codecs.getincrementaldecoder(codec)("strict"), skip
    with open(path, "rb") as raw:
        raw.seek(skip)
        while block := raw.read(1 << 20):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as error:
                return offset + error.start
            offset += len(block)
    return offset


def _not_text(path: Path, share: float, codec: str) -> DataError:
    return DataError(f"file '{path}' does not look like text: {share:.0%} of it decodes to replacement characters, "
                     f"NULs or control codes (read as {codec.upper()}); is it binary or in another encoding? "
                     "Convert it to UTF-8 text")


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
