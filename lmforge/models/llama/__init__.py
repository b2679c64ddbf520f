"""The Llama family: the GPT module with Llama's switches (no biases, RMSNorm, SwiGLU, rotary positions;
grouped-query attention through model.n_kv_head)."""
from ..family import DECODER, Family
from ..gpt.model import GPT
from .hf import LlamaNames

FAMILY = Family(name="llama", archs=("llama",), kind=DECODER, module=GPT, card="Llama-style decoder",
                defaults={"bias": False, "norm": "rmsnorm", "mlp": "swiglu", "position": "rope"},
                hf=LlamaNames())

__all__ = ["FAMILY"]
