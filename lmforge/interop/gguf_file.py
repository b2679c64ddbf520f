"""GGUF files at the byte level: a header check that refuses a damaged or hostile file before anything is
allocated, then metadata and dequantized tensors read through the `gguf` package (llama.cpp's own reader)."""
from __future__ import annotations

import mmap
import struct
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelDirError

MAGIC = b"GGUF"
MAX_DIMS = 4  # ggml's GGML_MAX_DIMS
DEFAULT_ALIGNMENT = 32
# value type id -> byte size of a scalar (8 = string and 9 = array are walked separately)
SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
STRING, ARRAY = 8, 9
# the tensor types lmforge dequantizes (by ggml id): floats, the classic block quants and the k-quants
SUPPORTED_TYPES = {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
                   "Q6_K"}


def require_gguf():
    """The `gguf` package, or an error that says how to install it."""
    try:
        import gguf
    except ModuleNotFoundError:
        raise ModuleNotFoundError("reading or writing GGUF files needs the 'gguf' package: "
                                  "pip install 'lmforge[gguf]' (or pip install gguf)") from None
    return gguf


def is_gguf_file(path: str | Path) -> bool:
    """Whether `path` is a file that starts with the GGUF magic (or is named .gguf)."""
    path = Path(path)
    if not path.is_file():
        return False
    if path.suffix.lower() == ".gguf":
        return True
    with open(path, "rb") as handle:
        return handle.read(4) == MAGIC


class _Walker:
    """Reads the header's fields in order, checking every length against what is left of the file."""

    def __init__(self, data: mmap.mmap | bytes, path: Path):
        self.data, self.pos, self.size, self.path = data, 0, len(data), path

    def fail(self, message: str):
        raise ModelDirError(f"'{self.path}' is not a usable GGUF file: {message}")

    def take(self, fmt: str):
        width = struct.calcsize(fmt)
        if self.pos + width > self.size:
            self.fail(f"it ends at byte {self.size}, inside its header (truncated?)")
        value = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += width
        return value[0] if len(value) == 1 else value

    def count(self, what: str, smallest: int) -> int:
        """A count of items each at least `smallest` bytes long, refused if the rest of the file cannot hold them."""
        value = self.take("<Q")
        if value * smallest > self.size - self.pos:
            self.fail(f"it claims {value} {what}, more than its {self.size} bytes can hold (damaged or hostile)")
        return value

    def string(self) -> bytes:
        length = self.count("string bytes", 1)
        value = bytes(self.data[self.pos:self.pos + length])
        self.pos += length
        return value

    def value(self, kind: int, depth: int = 0):
        if kind == STRING:
            return self.string()
        if kind in SCALAR_SIZES:
            fmt = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                   12: "<d"}[kind]
            return self.take(fmt)
        if kind == ARRAY and depth < 2:
            inner = self.take("<I")
            if inner != STRING and inner not in SCALAR_SIZES and inner != ARRAY:
                self.fail(f"an array has the unknown value type {inner}")
            length = self.count("array items", SCALAR_SIZES.get(inner, 8))
            if inner in SCALAR_SIZES:  # skipped: the gguf reader reads numbers as views of the file
                self.pos += length * SCALAR_SIZES[inner]
                return None
            for _ in range(length):
                self.value(inner, depth + 1)
            return None
        self.fail(f"a metadata value has the unknown type {kind}")


def check_gguf_file(path: Path) -> None:
    """Walk the whole header (magic, version, counts, every key and tensor record) and check each tensor's data
    lies inside the file, so a truncated, foreign or hostile file is refused before the reader allocates."""
    gguf = require_gguf()
    size = path.stat().st_size
    if size < 24:
        raise ModelDirError(f"'{path}' is not a usable GGUF file: only {size} bytes, less than a GGUF header")
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        walk = _Walker(data, path)
        magic = bytes(data[:4])
        if magic != MAGIC:
            walk.fail(f"it starts with {magic!r}, not the GGUF magic b'GGUF'")
        walk.pos = 4
        version = walk.take("<I")
        if version not in (2, 3):
            walk.fail(f"GGUF version {version} is not supported (versions 2 and 3 are; a big-endian file "
                      "shows a huge version number)")
        tensor_count = walk.take("<Q")
        kv_count = walk.take("<Q")
        if kv_count * 13 + tensor_count * 24 > size:  # the smallest key-value pair and tensor record
            walk.fail(f"it claims {tensor_count} tensors and {kv_count} metadata keys, more than its {size} bytes "
                      "can hold (damaged or hostile)")
        alignment = DEFAULT_ALIGNMENT
        for _ in range(kv_count):
            key = walk.string()
            value = walk.value(walk.take("<I"))
            if key == b"general.alignment":
                if not isinstance(value, int) or value <= 0 or value & (value - 1) or value > 1 << 20:
                    walk.fail(f"general.alignment={value!r} is not a power of two")
                alignment = value
        tensors = [_tensor_record(walk, gguf) for _ in range(tensor_count)]
        start = -(-walk.pos // alignment) * alignment
        for name, offset, nbytes in tensors:
            if start + offset + nbytes > size:
                walk.fail(f"tensor '{name}' needs bytes up to {start + offset + nbytes} but the file has {size} "
                          "(truncated?)")


def _tensor_record(walk: _Walker, gguf) -> tuple[str, int, int]:
    """(name, data offset, byte size) of one tensor record, with its rank, dims and type checked."""
    name = walk.string().decode("utf-8", errors="replace")
    n_dims = walk.take("<I")
    if not 1 <= n_dims <= MAX_DIMS:
        walk.fail(f"tensor '{name}' has {n_dims} dimensions (1 to {MAX_DIMS} are possible)")
    dims = [walk.take("<Q") for _ in range(n_dims)]
    kind = walk.take("<I")
    offset = walk.take("<Q")
    try:
        qtype = gguf.GGMLQuantizationType(kind)
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        walk.fail(f"tensor '{name}' has the unknown tensor type {kind}")
    elements = 1
    for dim in dims:
        elements *= dim
    if elements == 0 or dims[0] % block:
        walk.fail(f"tensor '{name}' has the shape {dims}, which a {qtype.name} tensor cannot have")
    nbytes = elements // block * type_size
    if nbytes > walk.size:
        walk.fail(f"tensor '{name}' claims the shape {dims}: {nbytes} bytes, more than the whole file")
    return name, offset, nbytes


def read_gguf(path: Path) -> tuple[dict, dict]:
    """(metadata key -> value, tensor name -> the gguf reader's tensor) of a checked GGUF file."""
    check_gguf_file(path)
    gguf = require_gguf()
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as error:  # the header passed the walk, so this is damage the walk cannot see
        raise ModelDirError(f"'{path}' is not a usable GGUF file: {error}") from None
    metadata = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        value = field.contents()
        metadata[key] = value
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    if len(tensors) != len(reader.tensors):
        raise ModelDirError(f"'{path}' is not a usable GGUF file: two tensors share a name")
    return metadata, tensors


def dequantize(tensor, path: Path) -> torch.Tensor:
    """A float32 torch tensor (rows, columns) from one GGUF tensor of a supported type."""
    gguf = require_gguf()
    kind = tensor.tensor_type.name
    if kind not in SUPPORTED_TYPES:
        raise ModelDirError(f"'{path}': tensor '{tensor.name}' is stored as {kind}, which lmforge cannot "
                            f"dequantize; supported: {', '.join(sorted(SUPPORTED_TYPES))}")
    if kind == "F32":
        values = np.array(tensor.data, dtype=np.float32)
    else:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)
    shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
    return torch.from_numpy(np.ascontiguousarray(values).reshape(shape))
