"""Train/test contamination: the share of each evaluation item's word n-grams that also occur in the training
text, streamed over the training corpus; items above a threshold are reported and can be dropped."""
from __future__ import annotations

import json
from pathlib import Path

from ..progress import Progress
from .corpus import DataError
from .dedup import words
from .stream import (RecordWriter, numbered_lines, check_text_file, corpus_files, csv_header, is_records,
                     iter_records, iter_text_chunks, output_file)


def read_eval_items(path: str | Path, text_field: str = "text") -> list[tuple[str, object]]:
    """(text, row) of every evaluation item: a record of a .csv/.tsv/.jsonl file, or a line of a text file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"evaluation file '{path}' does not exist")
    check_text_file(path)
    if path.suffix.lower() in (".csv", ".tsv"):
        header = csv_header(path)
        if text_field not in header:
            raise DataError(f"evaluation file '{path}' has no column '{text_field}' (columns: {', '.join(header)}); "
                            "name the text column with --text-field")
    if is_records(path):
        items = [(str(row[text_field] or ""), row) for row in iter_records(path, text_field)]
    else:
        items = [(line.rstrip("\r\n"), line) for _, line in numbered_lines(path) if line.strip()]
    if not items:
        raise DataError(f"evaluation file '{path}' holds no items")
    return items


def _grams(tokens: list[str], n: int) -> list[str]:
    if len(tokens) < n:  # a short item is one gram: the whole item must appear
        return [" ".join(tokens)] if tokens else []
    return [" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def _training_texts(train, text_field: str):
    """Training text in pieces, each with its carried-over context so n-grams across piece borders are seen."""
    for path, _ in corpus_files(train):
        if is_records(path):
            for row in iter_records(path, text_field):
                yield str(row[text_field] or ""), True
        else:
            for index, chunk in enumerate(iter_text_chunks(path)):
                yield chunk, index == 0


def find_contamination(train, eval_path, *, n: int = 8, threshold: float = 0.5, text_field: str = "text",
                       eval_text_field: str | None = None, progress: bool = False) -> dict:
    """Per evaluation item, the share of its word n-grams found in the training corpus; items with a share of
    at least `threshold` count as contaminated. Returns a report (no item text beyond the first 200 characters)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    items = read_eval_items(eval_path, eval_text_field or text_field)
    item_grams = [set(_grams(words(text), n)) for text, _ in items]
    wanted: dict[str, list[int]] = {}
    for index, grams in enumerate(item_grams):
        for gram in grams:
            wanted.setdefault(gram, []).append(index)
    lengths = {len(g.split()) for g in wanted}
    firsts = {g.split()[0] for g in wanted}
    found: set[str] = set()
    show = Progress(label="contamination", enabled=progress)
    carry: list[str] = []
    characters = 0
    for text, starts in _training_texts(train, text_field):
        tokens = words(text) if starts else carry + words(text)
        for i, token in enumerate(tokens):
            if token in firsts:
                for length in lengths:
                    gram = " ".join(tokens[i:i + length])
                    if gram in wanted:
                        found.add(gram)
        carry = tokens[-(n - 1):] if n > 1 else []
        characters += len(text)
        show.show(f"{characters / 1e6:,.1f}M characters of training text, {len(found):,} shared n-grams")
    if characters == 0:
        raise DataError(f"the training corpus is empty: no text in {train}")
    overlaps = [len(g & found) / len(g) if g else 0.0 for g in item_grams]
    flagged = [i for i, share in enumerate(overlaps) if share >= threshold]
    show.done(f"{len(flagged)} of {len(items)} evaluation items contaminated")
    return {"eval": str(eval_path), "items": len(items), "contaminated": len(flagged),
            "contaminated_fraction": len(flagged) / len(items),
            "mean_overlap": sum(overlaps) / len(overlaps),
            "parameters": {"n": n, "threshold": threshold},
            "flagged": [{"index": i, "overlap": round(overlaps[i], 4), "text": items[i][0][:200]} for i in flagged],
            "overlaps": [round(x, 4) for x in overlaps]}


def drop_contaminated(eval_path, report: dict, out, *, text_field: str = "text", overwrite: bool = False) -> int:
    """Write the evaluation file without its contaminated items to `out` (same format); returns how many stay."""
    eval_path = Path(eval_path)
    flagged = {item["index"] for item in report["flagged"]}
    items = read_eval_items(eval_path, text_field)
    with output_file(out, overwrite) as temp:
        writer = RecordWriter(temp, eval_path)
        kept = 0
        for index, (_, row) in enumerate(items):
            if index not in flagged:
                writer.write(row if is_records(eval_path) else (row if row.endswith("\n") else row + "\n"))
                kept += 1
        writer.close()
    return kept


def write_report(report: dict, path) -> None:
    """The report as JSON, written atomically."""
    from ..files import atomic_write_text

    atomic_write_text(path, json.dumps(report, indent=1, ensure_ascii=False))
