"""Synthetic data from a trained lmforge decoder: prompts continued by sampling, duplicates removed (exact and
near, as the dedup pass does) and PII scrubbed before anything is written."""
from __future__ import annotations

import collections
from pathlib import Path

from ...progress import Progress
from ...data.corpus import DataError
from ...data.dedup import Deduplicator
from ...data.scrub import Scrubber
from ...data.stream import RecordWriter, numbered_lines, output_file


def read_prompts(path) -> list[str]:
    """One prompt per non-empty line of a UTF-8 text file (a literal '\\n' in a line stands for a newline)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file '{path}' does not exist")
    prompts = [line.rstrip("\r\n").replace("\\n", "\n") for _, line in numbered_lines(path) if line.strip()]
    if not prompts:
        raise DataError(f"prompts file '{path}' holds no prompts")
    return prompts


def synthesize(model, prompts: list[str], n: int, out, *, max_new_tokens: int = 100, temperature: float = 0.9,
               top_p: float | None = 0.95, seed: int = 0, batch_size: int = 16, near: float | None = 0.8,
               scrub: bool = True, scrub_mode: str = "placeholder", max_tries: int = 3, overwrite: bool = False,
               progress: bool = False) -> dict:
    """Write `n` distinct generated samples as JSON lines {"prompt", "text"} to `out`; `model` is an LM or a model
    directory. Stops after max_tries * n generations if too few are distinct. Returns counts."""
    from ..facade import LM

    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not prompts:
        raise DataError("no prompts given")
    lm = model if isinstance(model, LM) else LM.from_pretrained(model)
    dedup = Deduplicator(near)
    scrubber = Scrubber(scrub_mode)
    found: collections.Counter = collections.Counter()
    counts = {"generated": 0, "exact_duplicates": 0, "near_duplicates": 0, "empty": 0, "kept": 0}
    show = Progress(label="synthesize", enabled=progress)
    with output_file(out, overwrite) as temp:
        writer = RecordWriter(temp, Path("out.jsonl"))
        batch_number = 0
        while counts["kept"] < n and counts["generated"] < max_tries * n:
            first = batch_number * batch_size
            batch = [prompts[(first + i) % len(prompts)] for i in range(batch_size)]
            texts = lm.generate(batch, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                seed=seed * 1_000_003 + batch_number)
            batch_number += 1
            for prompt, text in zip(batch, texts):
                counts["generated"] += 1
                if not text.strip():
                    counts["empty"] += 1
                    continue
                verdict = dedup.check(text)
                if verdict is not None:
                    counts[f"{verdict}_duplicates"] += 1
                    continue
                if scrub:
                    text, hits = scrubber.scrub(text)
                    found.update(hits)
                writer.write({"prompt": prompt, "text": text})
                counts["kept"] += 1
                if counts["kept"] == n:
                    break
            show.show(f"{counts['kept']:,} of {n:,} kept ({counts['generated']:,} generated)")
        writer.close()
        if counts["kept"] == 0:
            raise DataError("no distinct non-empty sample was generated; raise --max-new-tokens or --temperature")
    show.done(f"{counts['kept']:,} samples -> {out}")
    return {**counts, "pii_replaced": dict(sorted(found.items())), "scrubbed": scrub,
            "parameters": {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
                           "seed": seed, "near": near}}
