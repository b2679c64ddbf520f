"""PII scrubbing: typed placeholders ([EMAIL], [PHONE] ...) or consistent pseudonyms, over a corpus in
constant memory, in parallel, with a report of what was replaced. The detectors live in pii.py."""
from __future__ import annotations

import collections
import hashlib
import hmac
import multiprocessing
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..progress import Progress
from .card import make_card, write_card
from .corpus import DataError
from .pii import KINDS, find_pii
from .stream import RecordWriter, corpus_files, is_records, iter_rows, iter_text_chunks, output_folder

MODES = ("placeholder", "pseudonym")
BATCH_CHARS = 1 << 18  # text handed to a worker at a time: bounded, so memory does not grow with the corpus


@dataclass
class Scrubber:
    """Replaces PII in text: mode 'placeholder' gives [EMAIL]; 'pseudonym' gives [EMAIL_3f9a1c2b], the same
    tag for the same value everywhere (a keyed hash: without the salt the tag does not reveal the value)."""

    mode: str = "placeholder"
    kinds: frozenset[str] | None = None
    salt: str = ""

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"scrub mode '{self.mode}' is not one of {', '.join(MODES)}")
        if self.kinds is not None:
            unknown = set(self.kinds) - set(KINDS)
            if unknown:
                raise ValueError(f"unknown PII type(s) {', '.join(sorted(unknown))}; known: {', '.join(KINDS)}")
            self.kinds = frozenset(self.kinds)
        if self.mode == "pseudonym" and not self.salt:
            self.salt = secrets.token_hex(16)

    def replacement(self, kind: str, value: str) -> str:
        if self.mode == "placeholder":
            return f"[{kind}]"
        normal = re.sub(r"[\s\-().]", "", value).lower()  # 138-1234-5678 and 13812345678 get one pseudonym
        digest = hmac.new(self.salt.encode(), f"{kind}\0{normal}".encode(), hashlib.sha256).hexdigest()[:8]
        return f"[{kind}_{digest}]"

    def scrub(self, text: str) -> tuple[str, collections.Counter]:
        """(scrubbed text, count per PII type)."""
        spans = find_pii(text, self.kinds)
        counts = collections.Counter(kind for _, _, kind in spans)
        if not spans:
            return text, counts
        out, last = [], 0
        for start, end, kind in spans:
            out += [text[last:start], self.replacement(kind, text[start:end])]
            last = end
        out.append(text[last:])
        return "".join(out), counts

    def scrub_value(self, value, counts: collections.Counter):
        """Scrub every string inside a JSON-like value (records: all fields, nested lists and objects too)."""
        if isinstance(value, str):
            text, found = self.scrub(value)
            counts.update(found)
            return text
        if isinstance(value, dict):
            return {key: self.scrub_value(item, counts) for key, item in value.items()}
        if isinstance(value, list):
            return [self.scrub_value(item, counts) for item in value]
        return value


def scrub_text(text: str, mode: str = "placeholder", kinds=None, salt: str = "") -> str:
    """The text with its PII replaced (see Scrubber)."""
    return Scrubber(mode, kinds, salt).scrub(text)[0]


def _work(scrubber: Scrubber, kind: str, items: list) -> tuple[list, list[int]]:
    """Scrub one batch: chunks of a text file or rows of a record file; returns them and the PII count of each."""
    out, found = [], []
    for item in items:
        counts: collections.Counter = collections.Counter()
        out.append(scrubber.scrub_value(item, counts))
        found.append(counts)
    return out, found


def _batches(files) -> Iterator[tuple[int, str, list]]:
    """(file index, 'text' or 'rows', items) of bounded size, in corpus order."""
    for index, (path, _) in enumerate(files):
        kind = "rows" if is_records(path) else "text"
        source = _all_rows(path) if kind == "rows" else iter_text_chunks(path)
        batch, size = [], 0
        for item in source:
            batch.append(item)
            size += len(item) if isinstance(item, str) else sum(len(str(v)) for v in item.values())
            if size >= BATCH_CHARS:
                yield index, kind, batch
                batch, size = [], 0
        yield index, kind, batch


def _all_rows(path: Path) -> Iterator[dict]:
    for _, row in iter_rows(path):
        yield row


def scrub_corpus(inputs, out, *, mode: str = "placeholder", kinds=None, salt: str = "", workers: int = 1,
                 progress: bool = False, overwrite: bool = False) -> dict:
    """Scrub every file of `inputs` (files, folders) into folder `out`, mirroring names and formats.

    Text files are scrubbed in pieces cut at line ends, records (.jsonl/.csv/.tsv) field by field; memory stays
    bounded whatever the corpus size. Returns the report (also in out/data_card.json)."""
    scrubber = Scrubber(mode, kinds, salt)
    files = corpus_files(inputs)
    found: collections.Counter = collections.Counter()
    documents = with_pii = characters = 0
    show = Progress(label="scrub", enabled=progress)
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    pool = context.Pool(workers) if workers > 1 else None
    try:
        with output_folder(out, inputs, overwrite) as temp:
            writers: dict[int, RecordWriter] = {}
            file_has_pii: dict[int, bool] = {}
            pending: collections.deque = collections.deque()

            def finish(index: int, kind: str, result) -> None:
                nonlocal documents, with_pii, characters
                items, counts = result
                if index not in writers:
                    path, relative = files[index]
                    header = list(items[0]) if kind == "rows" and items else None
                    writers[index] = RecordWriter(temp / relative, path, header)
                for item, count in zip(items, counts):
                    writers[index].write(item)
                    found.update(count)
                    if kind == "rows":
                        documents += 1
                        with_pii += bool(count)
                        characters += sum(len(str(v)) for v in item.values())
                    else:
                        characters += len(item)
                        file_has_pii[index] = file_has_pii.get(index, False) or bool(count)
                show.show(f"{characters / 1e6:,.1f}M characters, {sum(found.values()):,} PII replaced")

            for index, kind, items in _batches(files):
                if pool is None:
                    finish(index, kind, _work(scrubber, kind, items))
                    continue
                pending.append((index, kind, pool.apply_async(_work, (scrubber, kind, items))))
                while len(pending) > 2 * workers:
                    done_index, done_kind, result = pending.popleft()
                    finish(done_index, done_kind, result.get())
            while pending:
                done_index, done_kind, result = pending.popleft()
                finish(done_index, done_kind, result.get())
            for index, (path, relative) in enumerate(files):
                if index not in writers:  # an empty file stays an empty file (with its header, for csv)
                    writers[index] = RecordWriter(temp / relative, path)
                writers[index].close()
            text_files = sum(1 for path, _ in files if not is_records(path))
            documents += text_files
            with_pii += sum(file_has_pii.values())
            if characters == 0:
                raise DataError(f"the corpus is empty: no text in {', '.join(map(str, inputs if isinstance(inputs, list) else [inputs]))}")
            report = {"files": len(files), "documents": documents, "documents_with_pii": with_pii,
                      "characters": characters, "found": dict(sorted(found.items()))}
            write_card(temp, make_card(inputs, "scrub", report, {"mode": mode, "types": sorted(kinds or KINDS)}))
    finally:
        if pool is not None:
            pool.terminate()
    show.done(f"{documents:,} documents, {sum(found.values()):,} PII replaced -> {out}")
    return report
