"""Data cards: what a prepared corpus was made from and what each pass did to it, from recorded facts only.

Every pass writes `data_card.json` (the facts) and `DATA_CARD.md` (the same, for people) into its output
folder; a pass over a folder that has a card carries the earlier passes forward, so the card of a corpus
that went through scrub then dedup lists both. The readers skip these two files.
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path

from .._version import __version__
from ..files import atomic_write_text

CARD_JSON, CARD_MD = "data_card.json", "DATA_CARD.md"


def read_card(folder: str | Path) -> dict | None:
    """The data card of a prepared corpus folder, or None when it has none."""
    path = Path(folder) / CARD_JSON
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def make_card(inputs, pass_name: str, stats: dict, parameters: dict) -> dict:
    """A card for the output of `pass_name` over `inputs`: the inputs' earlier passes, then this one."""
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    sources, passes = [], []
    for entry in inputs:
        earlier = read_card(entry) if Path(entry).is_dir() else None
        if earlier:
            sources += earlier.get("sources", [])
            passes += earlier.get("passes", [])
        else:
            sources.append(str(entry))
    record = {"pass": pass_name, "lmforge_version": __version__,
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "parameters": parameters, **stats}
    return {"format": "lmforge-data-card", "sources": sources, "passes": passes + [record]}


def write_card(folder: str | Path, card: dict) -> None:
    """Write data_card.json and DATA_CARD.md into `folder`."""
    folder = Path(folder)
    atomic_write_text(folder / CARD_JSON, json.dumps(card, indent=1, ensure_ascii=False))
    atomic_write_text(folder / CARD_MD, card_markdown(card))


def pass_summary(record: dict) -> str:
    """One line for a pass: what went in, what came out, what was found."""
    name = record["pass"]
    if name == "scrub":
        found = ", ".join(f"{kind} {count}" for kind, count in sorted(record.get("found", {}).items())) or "none"
        return (f"scrub ({record['parameters'].get('mode')}): {record['documents']} documents, "
                f"{record['documents_with_pii']} with PII; replaced: {found}")
    if name == "dedup":
        return (f"dedup (near-duplicate threshold {record['parameters'].get('near')}): {record['documents_in']} "
                f"documents in, {record['exact_duplicates']} exact and {record['near_duplicates']} near duplicates "
                f"removed, {record['documents_out']} kept")
    if name == "contamination":
        return (f"contamination against {record['eval']}: {record['contaminated']} of {record['items']} evaluation "
                f"items share at least {record['parameters'].get('threshold'):.0%} of their "
                f"{record['parameters'].get('n')}-grams with the training text")
    return f"{name}: " + ", ".join(f"{k} {v}" for k, v in record.items() if k not in ("pass", "parameters", "date"))


def card_markdown(card: dict) -> str:
    """The data card as Markdown."""
    lines = ["# Data card", "", "Written by lmforge from what its data passes recorded.", "", "## Sources", ""]
    lines += [f"- {source}" for source in card.get("sources", [])] or ["- (none recorded)"]
    lines += ["", "## Passes, in order", ""]
    for record in card.get("passes", []):
        lines.append(f"- {record.get('date', '')} {pass_summary(record)}")
    lines += ["", "## Limits", "",
              "Scrubbing is rule-based: it finds the formats it knows (listed in the scrub report) and misses",
              "names, addresses and free-form personal facts. Near-duplicate removal is approximate (MinHash).", ""]
    return "\n".join(lines)


def model_card_data_lines(info: dict) -> list[str]:
    """The '## Data' section of a model card from the facts recorded in a model's info (may be empty)."""
    data = info.get("data")
    if not data:
        return []
    lines = ["## Data", ""]
    lines += [f"- source: {source}" for source in data.get("sources", [])]
    for record in data.get("passes", []):
        lines.append(f"- {pass_summary(record)}")
    if "passes" in data and not any(r["pass"] == "scrub" for r in data["passes"]):
        lines.append("- not scrubbed of personal data by lmforge")
    if "passes" in data and not any(r["pass"] == "contamination" for r in data["passes"]):
        lines.append("- no contamination check against evaluation data was recorded")
    return lines + [""]
