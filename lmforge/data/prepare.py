"""The data passes inside training's data preparation: data.scrub, data.dedup and data.contamination of the
config run before tokenization, into the run directory, and what they found goes into the model card."""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from ..files import atomic_write_text
from .card import make_card, read_card
from .contamination import find_contamination
from .corpus import DataError
from .tokens import source_signature

if TYPE_CHECKING:
    from ..config import DataConfig


def _source_name(paths) -> str:
    return ", ".join(map(str, paths)) if paths else "built-in corpus (CPython documentation topics, pydoc_data)"


def prepare_corpus(data: DataConfig, work_dir, progress: bool = False) -> tuple[list[str], dict]:
    """Run the passes `data` asks for over data.paths into work_dir/data/prepared (reused while the sources and
    options are unchanged). Returns the paths to train on and the data card (a model's meta['data'])."""
    from .dedup import dedup_corpus
    from .scrub import scrub_corpus

    paths = list(data.paths)
    options = {"scrub": data.scrub, "dedup": data.dedup, "near": data.dedup_near, "text_field": data.text_field}
    card = make_card([_source_name(paths)], "sources", {}, {})
    card["passes"] = []
    prepared = list(paths)
    if (data.scrub or data.dedup) and not paths:
        raise ValueError("data.scrub / data.dedup need data.paths (the built-in corpus has no personal data to scrub)")
    if data.scrub or data.dedup:
        root = Path(work_dir) / "data" / "prepared"
        signature = hashlib.sha256(json.dumps([source_signature(paths, data.text_field), options]).encode()).hexdigest()[:16]
        final = root / ("dedup" if data.dedup else "scrub")
        existing = read_card(final)
        if existing is None or existing.get("signature") != signature:
            current = list(paths)
            if data.scrub:
                scrub_corpus(current, root / "scrub", progress=progress, overwrite=True)
                current = [str(root / "scrub")]
            if data.dedup:
                dedup_corpus(current, root / "dedup", near=data.dedup_near, text_field=data.text_field,
                             progress=progress, overwrite=True)
            existing = read_card(final)
            existing["signature"] = signature
            atomic_write_text(final / "data_card.json", json.dumps(existing, indent=1, ensure_ascii=False))
        card = existing
        prepared = [str(final)]
    for eval_path in data.contamination:
        report = find_contamination(prepared, eval_path, text_field=data.text_field, progress=progress)
        card["passes"].append({"pass": "contamination", "eval": str(eval_path), "items": report["items"],
                               "contaminated": report["contaminated"], "parameters": report["parameters"]})
    return prepared, {"sources": [_source_name(paths)] if not (data.scrub or data.dedup) else card["sources"],
                      "passes": card["passes"]}


def check_labeled_contamination(data: DataConfig, train_path, eval_paths: list[str], progress: bool = False) -> dict:
    """Classification: the data card (a model's meta['data']) saying how many items of `eval_paths` and
    data.contamination share most of their word 8-grams with training rows (the model card shows it)."""
    passes = []
    for eval_path in [*eval_paths, *data.contamination]:
        try:
            report = find_contamination([train_path], eval_path, text_field=data.text_field, progress=progress)
        except DataError as error:  # e.g. a UTF-16 file that the labeled reader decodes but the passes do not
            warnings.warn(f"no contamination check of {eval_path} against {train_path}: {error}", stacklevel=2)
            continue
        passes.append({"pass": "contamination", "eval": str(eval_path), "items": report["items"],
                       "contaminated": report["contaminated"], "parameters": report["parameters"]})
    return {"sources": [str(train_path)], "passes": passes}
