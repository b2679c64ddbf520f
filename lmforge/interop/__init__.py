"""Hugging Face checkpoints in and out (gpt2, bert, llama): the only part of lmforge that knows their names."""
from .export import save_hf_dir
from .load import is_hf_dir, load_hf_dir

__all__ = ["is_hf_dir", "load_hf_dir", "save_hf_dir"]
