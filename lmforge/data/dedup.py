"""Deduplication: exact (a hash of the normalized text) and near duplicates (MinHash signatures over word
shingles, banded into an LSH index, candidates confirmed by their estimated Jaccard similarity). The first
occurrence is kept. Memory grows with the number of kept documents (about 1.5 KB each), not their length."""
from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..progress import Progress
from .card import make_card, write_card
from .corpus import DataError
from .stream import RecordWriter, numbered_lines, corpus_files, is_records, iter_records, output_folder

PRIME = (1 << 61) - 1
WORDS = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\u3040-\u30ff\uac00-\ud7af]|[^\W_]+")  # a CJK character is a word


def words(text: str) -> list[str]:
    """Lowercased words; every CJK character counts as one word (Chinese has no spaces)."""
    return WORDS.findall(text.lower())


def shingles(text: str, n: int = 5) -> np.ndarray:
    """The distinct word n-grams of `text`, hashed to uint64 (CRC32: stable across processes and runs)."""
    tokens = words(text)
    if len(tokens) < n:
        grams = [" ".join(tokens)] if tokens else []
    else:
        grams = {" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}
    return np.fromiter((zlib.crc32(g.encode()) for g in grams), dtype=np.uint64, count=len(grams))


def choose_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) whose S-curve threshold (1/bands)**(1/rows) lies closest below `threshold`."""
    options = [(b, num_perm // b) for b in range(1, num_perm + 1) if num_perm // b >= 1]
    below = [(b, r) for b, r in options if (1 / b) ** (1 / r) <= threshold] or options
    return min(below, key=lambda br: threshold - (1 / br[0]) ** (1 / br[1]))


class MinHasher:
    """MinHash signatures with `num_perm` universal hash functions (a*x + b) mod 2^61-1, fixed by `seed`."""

    def __init__(self, num_perm: int = 128, seed: int = 1):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, PRIME, size=num_perm, dtype=np.uint64)
        self.b = rng.integers(0, PRIME, size=num_perm, dtype=np.uint64)
        self.num_perm = num_perm

    def signature(self, hashes: np.ndarray) -> np.ndarray:
        if len(hashes) == 0:
            return np.zeros(self.num_perm, dtype=np.uint32)
        # a and b span the prime's whole range so that each function really permutes; the product wraps modulo
        # 2^64 (numpy's unsigned arithmetic), which still mixes well (small a or x made the functions near monotone)
        with np.errstate(over="ignore"):
            values = (self.a[:, None] * hashes[None, :] + self.b[:, None]) % np.uint64(PRIME)
        return (values & np.uint64(0xFFFFFFFF)).min(axis=1).astype(np.uint32)


class Deduplicator:
    """Streaming duplicate detector: `seen(text)` says whether an earlier text was the same or near the same."""

    def __init__(self, near: float | None = 0.8, num_perm: int = 128, shingle: int = 5, seed: int = 1):
        if near is not None and not 0 < near <= 1:
            raise ValueError(f"near-duplicate threshold must be in (0, 1], got {near}")
        self.near, self.shingle = near, shingle
        self.exact: set[int] = set()
        if near is not None:
            self.hasher = MinHasher(num_perm, seed)
            self.bands, self.rows = choose_bands(near, num_perm)
            # one dict per band from a 64-bit digest of the band to the first kept document that had it: ints
            # rather than the band's bytes keep the index near 1 KB per kept document, with the signatures
            self.index: list[dict[int, int]] = [{} for _ in range(self.bands)]
            self.signatures = np.zeros((1024, num_perm), dtype=np.uint32)
            self.kept = 0

    def check(self, text: str) -> str | None:
        """None for a new text (remembered), else 'exact' or 'near' (and the text is not remembered)."""
        key = int.from_bytes(hashlib.blake2b(" ".join(text.split()).lower().encode(), digest_size=16).digest(), "little")
        if key in self.exact:
            return "exact"
        if self.near is not None:
            signature = self.hasher.signature(shingles(text, self.shingle))
            keys = [int.from_bytes(hashlib.blake2b(signature[i * self.rows:(i + 1) * self.rows].tobytes(),
                                                   digest_size=8).digest(), "little") for i in range(self.bands)]
            candidates = {self.index[i][k] for i, k in enumerate(keys) if k in self.index[i]}
            for other in candidates:
                if np.mean(self.signatures[other] == signature) >= self.near:
                    return "near"
            if self.kept == len(self.signatures):
                self.signatures = np.concatenate([self.signatures, np.zeros_like(self.signatures)])
            self.signatures[self.kept] = signature
            for i, k in enumerate(keys):
                self.index[i].setdefault(k, self.kept)
            self.kept += 1
        self.exact.add(key)
        return None


def _documents(path: Path, text_field: str, lines: bool) -> Iterator[tuple[str, object]]:
    """(text, what to write back) for each document: a record, a line (lines=True) or the whole file."""
    if is_records(path):
        for row in iter_records(path, text_field):
            yield str(row[text_field] or ""), row
    elif lines:
        for _, line in numbered_lines(path):
            yield line, line
    else:
        text = "".join(line for _, line in numbered_lines(path))
        yield text, text


def dedup_corpus(inputs, out, *, near: float | None = 0.8, text_field: str = "text", lines: bool = False,
                 num_perm: int = 128, shingle: int = 5, progress: bool = False, overwrite: bool = False) -> dict:
    """Copy `inputs` into folder `out` without exact and near duplicates (the first occurrence stays).

    A document is a record of a .jsonl/.csv/.tsv file, or a whole text file (each line with `lines`)."""
    files = corpus_files(inputs)
    dedup = Deduplicator(near, num_perm, shingle)
    counts = {"documents_in": 0, "exact_duplicates": 0, "near_duplicates": 0, "documents_out": 0}
    show = Progress(label="dedup", enabled=progress)
    with output_folder(out, inputs, overwrite) as temp:
        for path, relative in files:
            writer = None  # opened at the first kept document: a file whose documents all went is not written

            def keep(item) -> None:
                nonlocal writer
                writer = writer or RecordWriter(temp / relative, path)
                writer.write(item)

            try:
                for text, item in _documents(path, text_field, lines):
                    if not text.strip():
                        keep(item)
                        continue
                    counts["documents_in"] += 1
                    verdict = dedup.check(text)
                    if verdict is None:
                        counts["documents_out"] += 1
                        keep(item)
                    else:
                        counts[f"{verdict}_duplicates"] += 1
                    show.show(f"{counts['documents_in']:,} documents, {counts['exact_duplicates']:,} exact and "
                                f"{counts['near_duplicates']:,} near duplicates")
            finally:
                if writer is not None:
                    writer.close()
        if counts["documents_in"] == 0:
            raise DataError(f"the corpus is empty: no documents in {', '.join(str(p) for p, _ in files)}")
        write_card(temp, make_card(inputs, "dedup", counts, {"near": near, "num_perm": num_perm, "shingle": shingle,
                                                             "unit": "line" if lines else "record or file"}))
    show.done(f"{counts['documents_out']:,} of {counts['documents_in']:,} documents kept -> {out}")
    return counts
