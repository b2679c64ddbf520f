"""The GPT family: GPT-2-style decoders (learned positions, LayerNorm, GELU, biases). The module is shared by
the Llama and Qwen2 families, which only switch its parts."""
from ..family import DECODER, Family
from .hf import GPT2Names
from .model import GPT, Block

FAMILY = Family(name="gpt", archs=("gpt",), kind=DECODER, module=GPT, card="GPT-2-style decoder",
                defaults={"bias": True, "norm": "layernorm", "mlp": "gelu", "position": "learned"},
                hf=GPT2Names())

__all__ = ["FAMILY", "GPT", "Block"]
