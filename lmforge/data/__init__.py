"""Data: corpus readers, token files and LM windows, MLM masking, labeled sets, and the data passes (scrub, dedup,
contamination, augment, synthesize; see their modules)."""
from .corpus import DataError, builtin_corpus, iter_documents, iter_texts, read_text, resolve_paths
from .tokens import TokenWindows, build_token_file, open_tokens

__all__ = ["DataError", "builtin_corpus", "iter_documents", "iter_texts", "read_text", "resolve_paths",
           "TokenWindows", "build_token_file", "open_tokens"]
