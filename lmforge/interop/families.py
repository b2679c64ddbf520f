"""Which name table reads and writes each foreign form, looked up in the family registry: every family folder
in models/ that has a Hugging Face name table (models/<family>/hf.py) registers it as `Family.hf`; a table with
a `gguf_arch` also reads and writes that GGUF architecture. The tables themselves live with their families."""
from __future__ import annotations

from ..errors import ModelDirError
from ..models import ARCHS
from ..models.foreign import CONCAT, COPY, ROPE_CONCAT, TRANSPOSE, Pair  # noqa: F401  (the table vocabulary, re-exported)
from ..models.foreign import ForeignNames as Family

FOR_ARCH: dict[str, Family] = {arch: spec.hf for arch, spec in ARCHS.items() if spec.hf is not None}
# messages list the model types with the first three tables lmforge had (gpt2, bert, llama) leading, as they
# always have; the registry's others follow in its order
_LEADING = ("gpt2", "bert", "llama")
FAMILIES: dict[str, Family] = {table.model_type: table for table in sorted(
    FOR_ARCH.values(), key=lambda table: _LEADING.index(table.model_type) if table.model_type in _LEADING else 3)}
GGUF_FAMILIES: dict[str, Family] = {f.gguf_arch: f for f in FAMILIES.values() if f.gguf_arch}


def family(model_type: object, where: str) -> Family:
    """The Family of a config.json's model_type, or a clear error listing the supported ones."""
    if model_type not in FAMILIES:
        raise ModelDirError(f"{where}: model_type={model_type!r} is not supported; lmforge reads "
                            f"{', '.join(FAMILIES)} checkpoints")
    return FAMILIES[model_type]
