"""Atomic file and directory writes: a kill never leaves a half-written file under the final name."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import tomllib
from pathlib import Path

from .errors import parse_failure


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


@contextlib.contextmanager
def atomic_file(path: str | Path, suffix: str = ".tmp"):
    """Yield a temp file path beside `path` (with the umask's permissions); on success it is fsynced and
    replaces `path` in one rename, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes 0600; a saved file is as readable as any other
        yield Path(temp)
        with open(temp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write text to `path` through a temp file, fsync and rename."""
    with atomic_file(path) as temp:
        temp.write_text(text, encoding="utf-8")


def check_destination(destination: str | Path, force: bool = False) -> Path:
    """Refuse an existing output directory unless `force` (the commands that write a new model directory)."""
    destination = Path(destination)
    if destination.exists() and not force:
        raise FileExistsError(f"'{destination}' exists; choose another destination or pass --force to replace it")
    return destination


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


MANIFEST = "manifest.json"


class DamagedFileError(ValueError):
    """A file whose size or checksum differs from what was recorded when it was written."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path) -> None:
    """Record every file's size and SHA-256 in directory/manifest.json (call last, before the rename)."""
    directory = Path(directory)
    files = {p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
             for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST}
    (directory / MANIFEST).write_text(json.dumps({"files": files}, indent=1))


def verify_manifest(directory: Path, suffixes: tuple[str, ...] | None = None) -> bool:
    """Check each file (or those ending in `suffixes`) against directory/manifest.json; raise DamagedFileError
    naming the first bad file. False when the directory has no manifest (older): nothing to check."""
    directory = Path(directory)
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return False
    try:
        files = json.loads(manifest.read_text())["files"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise DamagedFileError(f"'{manifest}' is damaged ({error})") from None
    for name, expected in files.items():
        if suffixes is not None and not name.endswith(suffixes):
            continue
        path = directory / name
        if not path.is_file():
            raise DamagedFileError(f"'{path}' is missing (listed in {MANIFEST})")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise DamagedFileError(f"'{path}' is damaged: {size} bytes, {expected['bytes']} were written (truncated?)")
        if file_sha256(path) != expected["sha256"]:
            raise DamagedFileError(f"'{path}' is damaged: its SHA-256 checksum differs from the one recorded "
                                   "when it was written (flipped bytes?)")
    return True


def read_json(path: str | Path, error: type[Exception] = ValueError, encoding: str = "utf-8"):
    """Parse a JSON file; an empty, non-UTF-8 or malformed one raises `error` saying so in words, with its name."""
    path = Path(path)
    text = None
    try:
        text = path.read_text(encoding=encoding)
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as failure:
        raise error(parse_failure(path, failure, "JSON", text)) from None


def read_toml(path: str | Path, error: type[Exception] = ValueError) -> dict:
    """Parse a TOML file (a leading BOM allowed); a non-UTF-8 or malformed one raises `error` saying so in words."""
    path = Path(path)
    text = None
    try:
        text = path.read_text(encoding="utf-8-sig")  # Windows editors may write a BOM
        return tomllib.loads(text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as failure:
        raise error(parse_failure(path, failure, "TOML", text)) from None
