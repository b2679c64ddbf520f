"""The BERT family: bidirectional encoders with a masked-LM head, a pooler and a classification head."""
from .model import BERT, EncoderBlock

__all__ = ["BERT", "EncoderBlock"]
