"""lmforge: pretrain, fine-tune and use GPT- and BERT-style Transformer language models."""
__version__ = "0.1.0"

from .api import LM  # noqa: E402

__all__ = ["LM", "__version__"]
