"""The Qwen2 family: the GPT module with Qwen2's switches (biases on the q/k/v projections only, RMSNorm,
SwiGLU, rotary positions with base 1e6, grouped-query attention) and its Hugging Face name table."""
from ..family import DECODER, Family
from ..gpt.model import GPT
from .hf import Qwen2Names

FAMILY = Family(name="qwen2", archs=("qwen2",), kind=DECODER, module=GPT, card="Qwen2-style decoder",
                defaults={"bias": False, "qkv_bias": True, "norm": "rmsnorm", "mlp": "swiglu", "position": "rope",
                          "rope_theta": 1e6},
                hf=Qwen2Names())

__all__ = ["FAMILY"]
