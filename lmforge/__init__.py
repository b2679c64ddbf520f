"""lmforge: pretrain, fine-tune and use GPT- and BERT-style Transformer language models.

`from lmforge import LM` loads the facade (and torch) on first use; `import lmforge.errors` and other
leaves stay light, so `lmforge --help` does not pay for torch.
"""
from ._version import __version__

__all__ = ["LM", "__version__"]


def __getattr__(name: str):
    if name == "LM":
        from .app.facade import LM
        return LM
    raise AttributeError(f"module 'lmforge' has no attribute {name!r}")
