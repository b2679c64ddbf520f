"""Metric sinks: metrics.jsonl (one JSON object a line) and TensorBoard event files in the run directory."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

from ..files import atomic_write_text


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl; a line torn by a crash during an append (always the last) is skipped."""
    if not Path(path).is_file():
        return []
    records = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the records up to `step` (later ones belong to the part of a run that a resume replays) and drop a
    torn line; the file is rewritten atomically so that a crash now cannot lose the kept lines."""
    if not Path(path).is_file():
        return
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


class MetricsLog:
    """Appends records to metrics.jsonl and mirrors their numbers to TensorBoard (`tensorboard --logdir runs/`)."""

    def __init__(self, run_path: Path, start: int, tensorboard: bool = True):
        run_path.mkdir(parents=True, exist_ok=True)
        self.path = run_path / "metrics.jsonl"
        truncate_metrics(self.path, start)
        self.file = open(self.path, "a", encoding="utf-8")
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides the events a crashed run wrote after the checkpoint this run resumes from
            self.writer = SummaryWriter(str(run_path), purge_step=start + 1 if start else None)

    def log(self, record: dict) -> None:
        """Write one record (it has a `step`); numbers also go to TensorBoard, grouped by what they are."""
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            step = record["step"]
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(_tag(key), value, step)

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            try:
                self.writer.close()
            except OSError as error:  # a full disk must not hide the training result
                warnings.warn(f"could not finish the TensorBoard events in {self.path.parent}: {error}", stacklevel=2)


def _tag(key: str) -> str:
    if key.startswith("grad_norm/"):
        return "grad_norms/" + key.split("/", 1)[1]
    if key.startswith("val_"):
        return "val/" + key[4:]
    return "train/" + key
