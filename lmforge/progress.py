"""The one progress reporter: a line on stderr for training (step, loss, tokens/s, elapsed, ETA) and for the data
passes (what was done so far), rewritten in place on a terminal."""
from __future__ import annotations

import sys
import time


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """Rewrites one line on a terminal; prints plain lines when output goes to a file or pipe. Training calls
    update(step, **fields) against `total` steps; a data pass, named by `label`, calls show(text) and done(text)."""

    def __init__(self, total: int | None = None, start: int = 0, stream=None, enabled: bool = True, label: str = ""):
        self.total, self.start, self.label = total, start, label
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self.began = self.shown = time.perf_counter()
        self._open_line = False

    def show(self, text: str, force: bool = False) -> None:
        """`label: text (elapsed)` on the progress line, at most twice a second unless forced."""
        now = time.perf_counter()
        if self.enabled and (force or now - self.shown >= 0.5):
            self.shown = now
            print(f"\r{self.label}: {text} ({now - self.began:.0f}s)", end="", file=self.stream, flush=True)

    def done(self, text: str) -> None:
        """The pass's last line: `label: text in N.Ns`."""
        if self.enabled:
            print(f"\r{self.label}: {text} in {time.perf_counter() - self.began:.1f}s", file=self.stream, flush=True)

    def update(self, step: int, **fields) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.began
        done = step - self.start
        eta = elapsed / done * (self.total - step) if done > 0 else 0.0
        parts = [f"step {step}/{self.total}"]
        for key, value in fields.items():
            if key == "tokens_per_s":
                parts.append(f"{value / 1000:.1f}k tok/s" if value >= 1000 else f"{value:.0f} tok/s")
            elif isinstance(value, float):
                parts.append(f"{key} {value:.4g}")
            else:
                parts.append(f"{key} {value}")
        parts.append(f"{_clock(elapsed)} elapsed, ETA {_clock(eta)}")
        line = " | ".join(parts)
        if self.tty:
            self.stream.write("\r\033[K" + line)
            self._open_line = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def note(self, message: str) -> None:
        """Print a message on its own line (evaluation results, checkpoints)."""
        if not self.enabled:
            return
        if self._open_line:
            self.stream.write("\n")
            self._open_line = False
        self.stream.write(message + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._open_line:
            self.stream.write("\n")
            self._open_line = False
