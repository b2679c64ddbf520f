"""Kim's TextCNN classifier baseline."""
from ..family import CLASSIFIER, Family
from .model import MaskedBatchNorm1d, TextCNN

FAMILY = Family(name="cnn", archs=("textcnn",), kind=CLASSIFIER, module=TextCNN, card="convolutional classifier",
                transformer=False, tokenizer="wordpiece")

__all__ = ["FAMILY", "MaskedBatchNorm1d", "TextCNN"]
