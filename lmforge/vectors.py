"""Pretrained vectors for a fresh model's token embeddings (`model.vectors`): Kim (2014)'s CNN-non-static is his
CNN-rand with its word embeddings started from word2vec. Two kinds of source:

- a text file of word vectors, one `word v1 ... vd` a line (GloVe; word2vec's and fastText's .vec text format,
  whose first line is `count dim`). It is streamed, and only the vocabulary's words are kept, so a 5 GB file costs
  one read and the memory of the rows used.
- a model (an lmforge model directory, a Hugging Face directory, a GGUF file), read through its own tokenizer.
  `model.vectors_layer = "input"`: its input embedding table; a token of ours that the source's vocabulary holds
  as it is takes that row, any other the mean of the rows of the pieces the source splits it into. "output": the
  model reads each token's text alone and its final hidden states, mean-pooled, are the vector (a sentence
  encoder's embedding of the word; reduced so, contextual models give better static word vectors than their
  input layer, Bommasani et al. 2020).

The vectors found are scaled so their standard deviation is that of the rows the model drew at random (the arch's
own initial scale, e.g. TextCNN's uniform +-0.25 as Kim's unknown words); tokens without a vector keep their random
rows, and so do special tokens unless the source is a model with the same special token.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ConfigError, DataError
from .tokenizer import Tokenizer

WHAT = ("a text file of word vectors (GloVe; word2vec or fastText .vec text format) or a model (model directory, "
        "Hugging Face directory or GGUF file)")


@dataclass
class Started:
    """What start_embeddings did: `found` of `total` token rows came from `source` (its `layer` for a model)."""

    source: str
    found: int
    total: int
    layer: str | None = None

    def as_meta(self) -> dict:
        return {"source": self.source, "tokens": self.found, "of": self.total,
                **({"layer": self.layer} if self.layer else {})}


class TextVectors:
    """A word-vectors text file: its dimension is read at once, the rows only for the words asked for."""

    def __init__(self, path: Path):
        self.path = path
        self.header, self.dim = _text_layout(path)

    def rows(self, tokenizer: Tokenizer, tokens: dict[int, tuple[str, str]]) -> dict[int, torch.Tensor]:
        """Vectors for those of `tokens` (id -> (piece, text)) the file holds: the piece, else its text, else the
        text lowercased."""
        found = self.lookup({key for piece, text in tokens.values() for key in (piece, text, text.lower())})
        return {i: row for i, (piece, text) in tokens.items()
                if (row := found.get(piece, found.get(text, found.get(text.lower())))) is not None}

    def lookup(self, words: set[str]) -> dict[str, torch.Tensor]:
        """The vectors of those of `words` the file holds (the first row of a word listed twice)."""
        rows: dict[str, torch.Tensor] = {}
        with open(self.path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if number == 1 and self.header:
                    continue
                parts = line.rstrip("\n\r").rstrip(" ").split(" ")
                word = " ".join(parts[:-self.dim])  # a few GloVe words hold spaces
                if word in words and word not in rows:
                    rows[word] = _numbers(parts[-self.dim:], self.path, number, self.dim, len(parts) - 1)
        return rows


def _text_layout(path: Path) -> tuple[bool, int]:
    """(whether the first line is word2vec's `count dim` header, the vectors' dimension)."""
    try:
        with open(path, encoding="utf-8") as handle:
            first = handle.readline().split()
            second = handle.readline().split()
    except UnicodeDecodeError:
        raise DataError(f"model.vectors: '{path}' is not UTF-8 text. Binary word2vec files are not read: convert it "
                        "to text first (gensim: KeyedVectors.load_word2vec_format(path, binary=True)"
                        ".save_word2vec_format('vectors.txt', binary=False))") from None
    header = len(first) == 2 and all(part.isdigit() for part in first)
    row = second if header else first
    if len(row) < 2:
        raise DataError(f"model.vectors: '{path}' has no 'word v1 v2 ...' line at its start; expected {WHAT}")
    dim = int(first[1]) if header else len(row) - 1
    _numbers(row[-dim:], path, 2 if header else 1, dim, len(row) - 1)
    return header, dim


def _numbers(parts: list[str], path: Path, line: int, dim: int, found: int) -> torch.Tensor:
    try:
        if found < dim:
            raise ValueError
        return torch.tensor([float(part) for part in parts], dtype=torch.float32)
    except ValueError:
        raise DataError(f"model.vectors: line {line} of '{path}' is not a word and {dim} numbers") from None


class ModelVectors:
    """A model's vectors for our tokens, read through its own tokenizer. `layer` 'input': its input embedding rows
    (a token it holds as it is: that row; any other: the mean of the rows of the pieces it splits into);
    'output': its final hidden states for each token's text read alone, mean-pooled (a sentence encoder's
    embedding of the word, as `infer/embed.py` makes them, unit length)."""

    def __init__(self, path: Path, layer: str = "input"):
        # imported here: a model is loaded only where one is the source
        from .modeldir import load_model_dir

        with warnings.catch_warnings():  # e.g. "no masked-LM head": only the embeddings are read
            warnings.simplefilter("ignore")
            bundle = load_model_dir(path)
        self.model, self.tokenizer, self.layer = bundle.model, bundle.tokenizer, layer
        self.table = bundle.model.wte.weight.detach().float().cpu()
        self.dim = self.table.size(1)
        added = self.tokenizer.backend.get_added_tokens_decoder()
        self.special = self.tokenizer.special_ids | {i for i, token in added.items() if token.special}

    def _pieces(self, text: str) -> list[int]:
        """The source's ids for `text`, unknown and special pieces left out."""
        return [i for i in self.tokenizer.encode(text) if i not in self.special and i != self.tokenizer.unk_id]

    def rows(self, tokenizer: Tokenizer, tokens: dict[int, tuple[str, str]]) -> dict[int, torch.Tensor]:
        """Vectors for those of `tokens` (id -> (piece, text)) the source can read; special tokens of ours that
        the source holds too take its input row ([CLS] from a BERT) in layer 'input'."""
        if self.layer == "output":
            from .infer.embed import embed_ids, encode_for_embedding

            limit, readable = self.model.config.block_size, {}
            for i, (_, text) in tokens.items():  # kept where a piece is neither unknown nor special
                ids = encode_for_embedding(self.model, self.tokenizer, text)[:limit] if text else []
                if any(j not in self.special and j != self.tokenizer.unk_id for j in ids):
                    readable[i] = ids
            if not readable:
                return {}
            return dict(zip(readable, embed_ids(self.model, list(readable.values()), batch_size=256)))
        rows = {}
        for i in tokenizer.special_ids:
            j = self.tokenizer.token_to_id(tokenizer.id_to_token(i))
            if j is not None:
                rows[i] = self.table[j]
        for i, (piece, text) in tokens.items():
            index = self.tokenizer.token_to_id(piece)
            if index is not None and index not in self.special:
                rows[i] = self.table[index]
            elif text and (pieces := self._pieces(text)):
                rows[i] = self.table[pieces].mean(0)
        return rows


def open_vectors(path: str | Path, layer: str = "input") -> TextVectors | ModelVectors:
    """The source `model.vectors` names, checked (it exists, it reads, its dimension is known) before anything
    is trained; `layer` (model.vectors_layer) says which vectors of a model are read."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"model.vectors: '{path}' does not exist; it takes {WHAT}")
    from .interop import is_gguf_file, is_hf_dir

    if path.is_dir() or is_gguf_file(path) or is_hf_dir(path):
        return ModelVectors(path, layer)
    if layer != "input":
        raise ConfigError(f"model.vectors_layer='{layer}' reads a model's hidden states, but '{path}' is a file of "
                          "word vectors: leave model.vectors_layer unset (or give a model)")
    return TextVectors(path)


def check_dim(vectors: TextVectors | ModelVectors, n_embd: int, source: str) -> None:
    if vectors.dim != n_embd:
        raise ConfigError(f"model.vectors: the vectors in '{source}' have {vectors.dim} dimensions but model.n_embd="
                          f"{n_embd}: set model.n_embd={vectors.dim}")


def _surface(tokenizer: Tokenizer, index: int) -> tuple[str, str]:
    """(the token as the vocabulary spells it, the text it stands for): '##ing' -> 'ing', 'Ġcat' -> 'cat'."""
    piece = tokenizer.id_to_token(index) or ""
    text = piece[2:] if piece.startswith("##") else tokenizer.decode([index], skip_special_tokens=False)
    return piece, text.strip()


@torch.no_grad()
def start_embeddings(model: torch.nn.Module, tokenizer: Tokenizer, vectors: TextVectors | ModelVectors,
                     source: str) -> Started:
    """Overwrite the rows of `model.wte` whose token has a vector in `vectors` (scaled to the random rows'
    standard deviation); the others keep their random rows. Raises when no token has a vector."""
    weight = model.wte.weight
    check_dim(vectors, weight.size(1), source)
    tokens = {i: _surface(tokenizer, i) for i in range(weight.size(0)) if i not in tokenizer.special_ids}
    rows = vectors.rows(tokenizer, tokens)
    if not rows:
        raise ConfigError(f"model.vectors: none of the vocabulary's {weight.size(0):,} tokens has a vector in "
                          f"'{source}' (a cased file for a lowercased vocabulary, or another language?)")
    if len(rows) < weight.size(0) / 2:
        warnings.warn(f"model.vectors: only {len(rows):,} of the vocabulary's {weight.size(0):,} tokens have a vector "
                      f"in '{source}'; the others start at random (a cased file for a lowercased vocabulary?)",
                      stacklevel=2)
    index = torch.tensor(sorted(rows))
    matrix = torch.stack([rows[i] for i in index.tolist()])
    spread = matrix.std()
    scale = weight.float().std() / spread if spread > 0 else 1.0
    weight[index] = (matrix * scale).to(weight.dtype).to(weight.device)
    return Started(source, len(rows), weight.size(0), getattr(vectors, "layer", None))
