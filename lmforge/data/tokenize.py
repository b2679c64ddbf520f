"""Tokenizing corpora larger than memory: the sources are cut at line ends into ~32 MiB jobs, tokenized by a
pool of processes (constant memory each), written as parts that survive a kill (a rerun skips the finished
ones), then joined into tokens.bin + tokens.json, the token file that training memory-maps."""
from __future__ import annotations

import csv
import json
import multiprocessing
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..files import atomic_write_text, fsync_dir
from ..tokenizer import Tokenizer
from .corpus import DataError, allow_long_csv_fields, resolve_paths
from .tokens import source_signature, token_dtype

JOB_BYTES = 32 << 20
PIECE_CHARS = 1 << 20  # text handed to the tokenizer at once (as build_token_file does)


@dataclass(frozen=True)
class Job:
    index: int
    path: str
    start: int
    end: int
    first: bool  # the very first job: no end-of-text token before its first document


def plan_jobs(files: list[Path], job_bytes: int = JOB_BYTES) -> list[Job]:
    """Cut each file into byte ranges that end at a line end (whole files for .csv/.tsv, whose rows may span lines)."""
    jobs: list[Job] = []
    for path in files:
        size = path.stat().st_size
        if path.suffix.lower() in (".csv", ".tsv"):
            cuts = [0, size]
        else:
            cuts = [0]
            with open(path, "rb") as handle:
                while cuts[-1] + job_bytes < size:
                    handle.seek(cuts[-1] + job_bytes)
                    handle.readline()
                    cut = handle.tell()
                    if cut >= size:
                        break
                    cuts.append(cut)
            cuts.append(size)
        for start, end in zip(cuts, cuts[1:]):
            if end > start or size == 0:
                jobs.append(Job(len(jobs), str(path), start, end, not jobs))
    return jobs


_STATE: dict = {}


def _init_worker(tokenizer_json: str, text_field: str, errors: str, counter, piece_chars: int) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the pool is the parallelism; no threads inside each worker
    from tokenizers import Tokenizer as Backend

    _STATE.update(backend=Backend.from_str(tokenizer_json), text_field=text_field, errors=errors, counter=counter,
                  piece_chars=piece_chars)


def _lines(handle, start: int, end: int):
    handle.seek(start)
    while handle.tell() < end:
        line = handle.readline()
        if not line:
            break
        yield line


def _documents(job: Job):
    """(text, starts_document, bytes read) pieces of one job, in the order build_token_file would see them."""
    path, errors = Path(job.path), _STATE["errors"]
    suffix = path.suffix.lower()

    def decode(data: bytes) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as error:
            if errors == "strict":
                raise DataError(f"file '{path}' is not valid UTF-8 (bad byte near offset {job.start + error.start}); "
                                "convert it to UTF-8, or use --encoding-errors replace") from None
            return data.decode("utf-8", errors="replace")

    if suffix in (".csv", ".tsv"):
        allow_long_csv_fields()  # in this worker process too
        with open(path, encoding="utf-8-sig", errors=errors, newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
            for number, row in enumerate(reader, 1):
                value = _field(row, path, number)
                if value:
                    yield value, True, 0
        return
    with open(path, "rb") as handle:
        if suffix == ".jsonl":
            for line in _lines(handle, job.start, job.end):
                if not line.strip():
                    continue
                try:
                    row = json.loads(decode(line.removeprefix(b"\xef\xbb\xbf")))
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}: a line near byte {job.start} is not valid JSON ({error.msg})") from None
                except RecursionError:
                    raise DataError(f"{path}: a line near byte {job.start} is JSON nested too deeply to read") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}: each line must be a JSON object, got {type(row).__name__}")
                value = _field(row, path, None)
                if value:
                    yield value, True, len(line)
            return
        pending, size, starts = [], 0, job.start == 0
        for line in _lines(handle, job.start, job.end):
            pending.append(line)
            size += len(line)
            if size >= _STATE["piece_chars"]:
                yield decode(b"".join(pending).removeprefix(b"\xef\xbb\xbf")), starts, size
                pending, size, starts = [], 0, False
        if pending:
            yield decode(b"".join(pending).removeprefix(b"\xef\xbb\xbf")), starts, size


def _field(row: dict, path: Path, number: int | None) -> str:
    field = _STATE["text_field"]
    if field not in row:
        where = f"record {number}" if number else "a record"
        raise DataError(f"{path}: {where} has no field '{field}' (fields: {', '.join(map(str, row))}); "
                        "set --text-field")
    return str(row[field]) if row[field] else ""


def _run_job(args: tuple[Job, str, str, int | None]) -> tuple[int, int]:
    """Tokenize one job into parts/NNNNNN.bin (renamed into place when complete); returns (index, tokens)."""
    job, parts, dtype, eos = args
    backend, counter = _STATE["backend"], _STATE["counter"]
    final = Path(parts) / f"{job.index:06d}.bin"
    temp = final.with_suffix(".tmp")
    total, first_document, reported = 0, job.first, 0
    with open(temp, "wb") as out:
        batch: list[tuple[str, bool]] = []
        size = read = 0

        def flush():
            nonlocal total, first_document
            encoded = backend.encode_batch([t for t, _ in batch], add_special_tokens=False)
            for (_, starts), item in zip(batch, encoded):
                ids = item.ids
                if starts and eos is not None and not first_document:
                    ids = [eos, *ids]
                first_document = False
                array = np.asarray(ids, dtype=dtype)
                out.write(array.tobytes())
                total += len(array)
            batch.clear()

        for text, starts, nbytes in _documents(job):
            batch.append((text, starts))
            size, read = size + len(text), read + nbytes
            if size >= _STATE["piece_chars"]:
                flush()
                size = 0
                with counter.get_lock():
                    counter.value += read
                reported, read = reported + read, 0
        if batch:
            flush()
        out.flush()
        os.fsync(out.fileno())
    os.replace(temp, final)
    with counter.get_lock():
        counter.value += job.end - job.start - reported
    return job.index, total


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def tokenize_corpus(sources: list[str], tokenizer: Tokenizer, out_dir: str | Path, *, text_field: str = "text",
                    errors: str = "replace", workers: int | None = None, progress: bool = True,
                    job_bytes: int = JOB_BYTES, piece_chars: int = PIECE_CHARS) -> dict:
    """Tokenize `sources` into out_dir/tokens.bin + tokens.json with `workers` processes (default: all cores).

    Skipped when the token file is already there for the same sources and tokenizer; after a kill, a rerun
    keeps the finished parts. Returns the token file's metadata (n_tokens, dtype, ...) plus `skipped`."""
    out_dir = Path(out_dir)
    files = resolve_paths(sources)
    if not files:
        raise DataError("no sources to tokenize")
    dtype = np.dtype(token_dtype(tokenizer.vocab_size))
    meta = {"sources": source_signature(sources, text_field), "tokenizer": tokenizer.fingerprint(),
            "dtype": dtype.name, "special": False}
    bin_path, meta_path = out_dir / "tokens.bin", out_dir / "tokens.json"
    if bin_path.is_file() and meta_path.is_file():
        old = json.loads(meta_path.read_text())
        if {k: old.get(k) for k in meta} == meta and bin_path.stat().st_size == old["n_tokens"] * dtype.itemsize:
            if progress:
                print(f"{bin_path} is up to date ({old['n_tokens']:,} tokens): nothing to do", file=sys.stderr)
            return {**old, "skipped": True}
    jobs = plan_jobs(files, job_bytes)
    parts = out_dir / "parts"
    plan = {**meta, "jobs": [[j.path, j.start, j.end] for j in jobs]}
    plan_path = parts / "plan.json"
    if not plan_path.is_file() or json.loads(plan_path.read_text()) != plan:  # other sources: start over
        shutil.rmtree(parts, ignore_errors=True)
        parts.mkdir(parents=True)
        atomic_write_text(plan_path, json.dumps(plan))
    done = {int(p.stem) for p in parts.glob("*.bin")}
    todo = [j for j in jobs if j.index not in done]
    total_bytes = sum(j.end - j.start for j in jobs)
    kept_bytes = total_bytes - sum(j.end - j.start for j in todo)
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    began = time.perf_counter()
    context = multiprocessing.get_context("spawn")  # no fork of a parent that may hold threads (torch, rayon)
    counter = context.Value("q", 0)
    if progress and kept_bytes:
        print(f"resuming: {len(jobs) - len(todo)} of {len(jobs)} parts were already done", file=sys.stderr)
    if todo:
        with context.Pool(workers, _init_worker, (tokenizer.backend.to_str(), text_field, errors, counter,
                                                       piece_chars)) as pool:
            pending = pool.imap_unordered(_run_job, [(j, str(parts), dtype.name, tokenizer.eos_id) for j in todo])
            finished = 0
            while finished < len(todo):
                try:
                    pending.next(timeout=0.5)
                    finished += 1
                except multiprocessing.TimeoutError:
                    pass
                if progress:
                    elapsed = time.perf_counter() - began
                    done_bytes = counter.value
                    rate = done_bytes / max(elapsed, 1e-9)
                    left = (total_bytes - kept_bytes - done_bytes) / rate if rate > 0 else 0
                    print(f"\rtokenizing: {(kept_bytes + done_bytes) / 1e6:,.0f} / {total_bytes / 1e6:,.0f} MB, "
                          f"{rate / 1e6:.1f} MB/s, {workers} workers, ETA {_clock(left)}", end="", file=sys.stderr)
    n_tokens = _join(jobs, parts, bin_path) // dtype.itemsize
    if n_tokens == 0:
        raise DataError("the corpus is empty: no text was found in " + ", ".join(map(str, sources)))
    seconds = time.perf_counter() - began
    atomic_write_text(meta_path, json.dumps({**meta, "n_tokens": n_tokens}, indent=1))
    shutil.rmtree(parts, ignore_errors=True)
    if progress:
        print(f"\rtokenized {total_bytes / 1e6:,.1f} MB into {n_tokens:,} tokens in {seconds:.1f}s -> {bin_path}"
              + " " * 10, file=sys.stderr)
    return {**meta, "n_tokens": n_tokens, "seconds": seconds, "bytes": total_bytes, "skipped": False}


def _join(jobs: list[Job], parts: Path, bin_path: Path) -> int:
    """Concatenate the parts in order into bin_path (through a temp name); returns its size in bytes."""
    temp = bin_path.with_suffix(".bin.tmp")
    with open(temp, "wb") as out:
        for job in jobs:
            with open(parts / f"{job.index:06d}.bin", "rb") as part:
                shutil.copyfileobj(part, out, 16 << 20)
        out.flush()
        os.fsync(out.fileno())
        size = out.tell()
    os.replace(temp, bin_path)
    fsync_dir(bin_path.parent)
    return size
