"""The GPT family: GPT-2-style decoders (and, with switches, Llama and Qwen2)."""
from .model import GPT, Block

__all__ = ["GPT", "Block"]
