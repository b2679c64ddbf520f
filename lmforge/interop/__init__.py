"""Hugging Face checkpoints in and out (gpt2, bert, llama, qwen2): files in and out here;
the per-family name tables in models/<family>/ (gpt2, bert and llama still in families.py)."""
from .export import save_hf_dir
from .load import is_hf_dir, load_hf_dir

__all__ = ["is_hf_dir", "load_hf_dir", "save_hf_dir"]
