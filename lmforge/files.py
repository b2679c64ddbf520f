"""Atomic file and directory writes: a kill never leaves a half-written file under the final name."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file under `path`, then the directories, so a rename publishes complete data."""
    for root, _, names in os.walk(path):
        for name in names:
            with open(Path(root) / name, "rb+") as handle:
                os.fsync(handle.fileno())
        fsync_dir(Path(root))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write text to `path` through a temp file, fsync and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes 0600; a saved file is as readable as any other
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


@contextlib.contextmanager
def atomic_directory(path: str | Path):
    """Yield a temp directory beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(temp, 0o777 & ~_umask())  # mkdtemp makes 0700: teammates and servers could not read the model
        yield temp
        fsync_tree(temp)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(temp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temp, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
