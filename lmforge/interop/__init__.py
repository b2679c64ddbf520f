"""Hugging Face checkpoints (gpt2, bert, llama, qwen2) and GGUF files (llama, gpt2) in and out: the file
formats' readers and writers live here, the per-family name tables in models/<family>/hf.py (found through the
family registry). The `gguf` package is imported only when a GGUF file is read or written."""
from .export import save_hf_dir
from .gguf_export import GGUF_TYPES, save_gguf
from .gguf_file import is_gguf_file
from .gguf_load import load_gguf
from .load import is_hf_dir, load_hf_dir

__all__ = ["GGUF_TYPES", "is_gguf_file", "is_hf_dir", "load_gguf", "load_hf_dir", "save_gguf", "save_hf_dir"]
