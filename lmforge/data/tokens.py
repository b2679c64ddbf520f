"""Token files: a corpus tokenized once into a flat np.memmap on disk, then random LM windows from it."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_write_text
from ..tokenizer import Tokenizer
from .corpus import DataError, iter_documents, resolve_paths

BATCH_CHARS = 1 << 20


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


def source_signature(paths, text_field: str) -> str:
    """Names, sizes and modification times of the sources: the token file is rebuilt when they change."""
    if not paths:
        return f"builtin:{sys.version_info[:2]}"
    parts = [f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in resolve_paths(paths)]
    return hashlib.sha256("\n".join([text_field, *parts]).encode()).hexdigest()[:16]


def build_token_file(paths, tokenizer: Tokenizer, out_dir: str | Path, text_field: str = "text",
                     errors: str = "replace", add_special_tokens: bool = False, progress: bool = False) -> Path:
    """Tokenize every document into `out_dir/tokens.bin` (reused when sources and tokenizer are unchanged)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"sources": source_signature(paths, text_field), "tokenizer": tokenizer.fingerprint(),
            "dtype": np.dtype(token_dtype(tokenizer.vocab_size)).name, "special": add_special_tokens}
    bin_path, meta_path = out_dir / "tokens.bin", out_dir / "tokens.json"
    if bin_path.is_file() and meta_path.is_file():
        old = json.loads(meta_path.read_text())
        if {k: old.get(k) for k in meta} == meta and bin_path.stat().st_size == old["n_tokens"] * np.dtype(meta["dtype"]).itemsize:
            return bin_path
    dtype, eos = token_dtype(tokenizer.vocab_size), tokenizer.eos_id
    temp = bin_path.with_suffix(f".bin.{os.getpid()}.tmp")  # torchrun ranks may build the same file at once
    total, chars, began = 0, 0, time.perf_counter()
    with open(temp, "wb") as handle:
        pending: list[tuple[str, bool]] = []
        size = 0

        def flush():
            nonlocal total
            ids = tokenizer.encode_batch([t for t, _ in pending], add_special_tokens=add_special_tokens)
            for (_, starts), piece in zip(pending, ids):
                if starts and total > 0 and eos is not None and not add_special_tokens:
                    piece = [eos, *piece]
                array = np.asarray(piece, dtype=dtype)
                handle.write(array.tobytes())
                total += len(array)
            pending.clear()

        for text, starts in iter_documents(paths, text_field, errors):
            pending.append((text, starts))
            size += len(text)
            if size >= BATCH_CHARS:
                flush()
                chars, size = chars + size, 0
                if progress:
                    print(f"\rtokenizing: {chars / 1e6:.0f}M characters -> {total:,} tokens", end="", file=sys.stderr)
        flush()
        handle.flush()
        os.fsync(handle.fileno())
    if total == 0:
        temp.unlink()
        raise DataError("the corpus is empty: no text was found in " + (", ".join(map(str, paths)) or "the built-in corpus"))
    os.replace(temp, bin_path)
    if progress:
        print(f"\rtokenized the corpus: {total:,} tokens in {time.perf_counter() - began:.1f}s -> {bin_path}",
              file=sys.stderr)
    atomic_write_text(meta_path, json.dumps({**meta, "n_tokens": total}, indent=1))
    return bin_path


def open_tokens(bin_path: str | Path) -> np.memmap:
    meta = json.loads(Path(bin_path).with_suffix(".json").read_text())
    return np.memmap(bin_path, dtype=np.dtype(meta["dtype"]), mode="r", shape=(meta["n_tokens"],))


class TokenWindows:
    """Random windows of block_size+1 tokens from a train/validation split of one token array.

    As nanoGPT does, the first (1 - val_fraction) of the tokens train and the rest validate.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, val_fraction: float):
        self.tokens, self.block_size = tokens, block_size
        split = int(len(tokens) * (1 - val_fraction))
        self.splits = {"train": (0, split), "val": (split, len(tokens))}
        need = block_size + 1
        for name, (start, end) in self.splits.items():
            if name == "val" and val_fraction == 0:
                continue
            if end - start < need:
                raise DataError(
                    f"the corpus is too short: the {name} split has {end - start} tokens, but one training window "
                    f"needs block_size+1 = {need}; add text, lower model.block_size"
                    + (", or lower data.val_fraction" if name == "val" else ""))

    def has(self, split: str) -> bool:
        start, end = self.splits[split]
        return end - start > self.block_size

    def sample(self, split: str, batch_size: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-token targets, each (batch_size, block_size) int64."""
        start, end = self.splits[split]
        offsets = rng.integers(start, end - self.block_size, size=batch_size)
        rows = np.stack([self.tokens[o:o + self.block_size + 1] for o in offsets]).astype(np.int64)
        rows = torch.from_numpy(rows)
        return rows[:, :-1], rows[:, 1:]
