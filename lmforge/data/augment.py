"""Label-preserving text augmentation for classification, after EDA (Wei and Zou, 2019): synonym replacement
from a bundled word list, random insertion of a synonym, random swap and random deletion. Question words and
negations are never touched (changing them could change the label); every draw comes from a seeded generator."""
from __future__ import annotations

import functools
import random
import re
from importlib import resources
from pathlib import Path

from .corpus import DataError
from .stream import RecordWriter, csv_header, is_records, iter_records, output_file

METHODS = ("synonym", "insert", "swap", "delete")
PROTECTED = {"what", "which", "who", "whom", "whose", "when", "where", "why", "how", "not", "no", "never", "nor",
             "none", "nothing", "nobody", "neither", "without", "but", "n't", "cannot", "isn't", "don't",
             "doesn't", "didn't", "wasn't", "aren't", "won't", "can't"}
EDGE = re.compile(r"^(\W*)(.*?)(\W*)$", re.S)


@functools.lru_cache(maxsize=None)
def synonym_table(path: str | None = None) -> dict[str, tuple[str, ...]]:
    """word -> its synonyms, from the bundled list (or a file of comma-separated groups, one per line)."""
    text = (Path(path).read_text(encoding="utf-8") if path else
            resources.files("lmforge.data").joinpath("resources/synonyms.txt").read_text(encoding="utf-8"))
    table: dict[str, set[str]] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        group = [w.strip().lower() for w in line.split(",") if w.strip()]
        for word in group:
            table.setdefault(word, set()).update(w for w in group if w != word)
    return {word: tuple(sorted(others)) for word, others in table.items()}


def _split(token: str) -> tuple[str, str, str]:
    """(leading punctuation, word, trailing punctuation)."""
    return EDGE.match(token).groups()


def _recase(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    return word[:1].upper() + word[1:] if like[:1].isupper() else word


def _synonyms(token: str, table) -> tuple[str, ...]:
    core = _split(token)[1]
    return () if core.lower() in PROTECTED else table.get(core.lower(), ())


def augment_text(text: str, method: str, rng: random.Random, alpha: float = 0.1, table=None) -> str:
    """One EDA operation on `text`, changing about alpha * words words (at least one)."""
    table = table if table is not None else synonym_table()
    tokens = text.split()
    if not tokens:
        return text
    changes = max(1, round(alpha * len(tokens)))
    free = [i for i, t in enumerate(tokens) if _split(t)[1].lower() not in PROTECTED]
    if method == "synonym":
        candidates = [i for i in free if _synonyms(tokens[i], table)]
        for i in rng.sample(candidates, min(changes, len(candidates))):
            lead, core, trail = _split(tokens[i])
            tokens[i] = lead + _recase(rng.choice(_synonyms(tokens[i], table)), core) + trail
    elif method == "insert":
        candidates = [t for t in tokens if _synonyms(t, table)]
        for _ in range(changes if candidates else 0):
            tokens.insert(rng.randrange(len(tokens) + 1), rng.choice(_synonyms(rng.choice(candidates), table)))
    elif method == "swap":
        for _ in range(changes if len(free) >= 2 else 0):
            a, b = rng.sample(free, 2)
            (la, ca, ta), (lb, cb, tb) = _split(tokens[a]), _split(tokens[b])
            tokens[a], tokens[b] = la + cb + ta, lb + ca + tb  # punctuation stays in place
    elif method == "delete":
        if len(free) >= 2:
            drop = set(rng.sample(free, min(changes, len(free) - 1)))
            tokens = [t if i not in drop else _split(t)[0] + _split(t)[2] for i, t in enumerate(tokens)]
            tokens = [t for t in tokens if t]
    else:
        raise ValueError(f"unknown augmentation method '{method}'; choose from {', '.join(METHODS)}")
    return " ".join(tokens)


def augment_rows(rows: list[dict], text_field: str, methods=METHODS, n: int = 1, alpha: float = 0.1, seed: int = 0,
                 keep_original: bool = True) -> list[dict]:
    """Each row (when keep_original) followed by up to `n` augmented copies with the same other fields (label).
    Copy j of row i uses method j mod len(methods) from a random start and draws from Random((seed, i, j))."""
    methods = tuple(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown augmentation method(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(METHODS)}")
    if n < 0 or not 0 < alpha <= 1:
        raise ValueError(f"need n >= 0 and 0 < alpha <= 1 (got n={n}, alpha={alpha})")
    table = synonym_table()
    out = []
    for i, row in enumerate(rows):
        if keep_original:
            out.append(row)
        text, seen = str(row[text_field]), {str(row[text_field])}
        first = random.Random(f"{seed}-{i}").randrange(len(methods))
        for j in range(n):
            rng = random.Random(f"{seed}-{i}-{j}")
            new = augment_text(text, methods[(first + j) % len(methods)], rng, alpha, table)
            if new not in seen:  # an unchanged or repeated copy adds nothing
                seen.add(new)
                out.append({**row, text_field: new})
    return out


def augment_file(source, out, *, methods=METHODS, n: int = 1, alpha: float = 0.1, seed: int = 0,
                 text_field: str = "text", label_field: str = "label", keep_original: bool = True,
                 overwrite: bool = False) -> dict:
    """Augment a labeled .csv/.tsv/.jsonl file into `out` (same format). Returns counts in and out."""
    source, out = Path(source), Path(out)
    if not source.is_file():
        raise FileNotFoundError(f"labeled file '{source}' does not exist")
    if not is_records(source):
        raise DataError(f"'{source}' is not a labeled file: augmentation reads .csv, .tsv or .jsonl with a text and "
                        "a label column")
    if out.suffix.lower() != source.suffix.lower():
        raise DataError(f"output '{out}' must have the input's format ({source.suffix})")
    if source.suffix.lower() in (".csv", ".tsv"):
        header = csv_header(source)
        for field in (text_field, label_field):
            if field not in header:
                raise DataError(f"'{source}' has no column '{field}' (columns: {', '.join(header)})")
    rows = list(iter_records(source, text_field))
    if not rows:
        raise DataError(f"'{source}' holds no rows")
    missing = [i + 1 for i, row in enumerate(rows) if label_field not in row]
    if missing:
        raise DataError(f"'{source}': record {missing[0]} has no field '{label_field}'")
    result = augment_rows(rows, text_field, methods, n, alpha, seed, keep_original)
    with output_file(out, overwrite) as temp:
        writer = RecordWriter(temp, source, list(rows[0]) if source.suffix.lower() != ".jsonl" else None)
        for row in result:
            writer.write(row)
        writer.close()
    return {"rows_in": len(rows), "rows_out": len(result), "augmented": len(result) - (len(rows) if keep_original else 0)}
