"""MkDocs hook (mkdocs.yml `hooks:`): a page in docs/ that the nav does not name is listed under "More", so a new
page needs no edit of mkdocs.yml to be reachable (naming it in the nav places it better)."""
from __future__ import annotations

from pathlib import Path


def _named(entries) -> set[str]:
    """Every file path the nav (a list of strings and {title: path or list} dicts) mentions."""
    found: set[str] = set()
    for entry in entries or []:
        values = entry.values() if isinstance(entry, dict) else [entry]
        for value in values:
            found |= _named(value) if isinstance(value, list) else {str(value)}
    return found


def on_config(config):
    """Append the docs/ pages missing from the nav, sorted by file name, under "More"."""
    docs = Path(config["docs_dir"])
    named = _named(config["nav"])
    missing = sorted(str(p.relative_to(docs).as_posix()) for p in docs.rglob("*.md")
                     if not any(part.startswith((".", "_")) for part in p.relative_to(docs).parts)
                     and p.relative_to(docs).as_posix() not in named)
    if config["nav"] is not None and missing:
        config["nav"].append({"More": missing})
    return config
