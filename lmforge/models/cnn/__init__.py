"""Kim's TextCNN classifier baseline."""
from .model import MaskedBatchNorm1d, TextCNN

__all__ = ["MaskedBatchNorm1d", "TextCNN"]
