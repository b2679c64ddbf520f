"""The BERT family: bidirectional encoders with a masked-LM head, a pooler and a classification head."""
from ..family import ENCODER, Family
from .hf import BertNames
from .model import BERT, EncoderBlock

FAMILY = Family(name="bert", archs=("bert",), kind=ENCODER, module=BERT, card="BERT-style encoder",
                tokenizer="wordpiece",
                defaults={"bias": True, "norm": "layernorm", "mlp": "gelu", "position": "learned"},
                hf=BertNames())

__all__ = ["BERT", "FAMILY", "EncoderBlock"]
