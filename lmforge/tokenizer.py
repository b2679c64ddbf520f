"""One Tokenizer over the `tokenizers` library: character-level, byte-level BPE, WordPiece and whole words."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as _Backend

EOS = "<|endoftext|>"
UNK_CHAR = "<|unk|>"
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
KINDS = ("char", "bpe", "wordpiece", "word")
WORD_SPECIALS = ["[PAD]", "[UNK]", EOS]
# words (with inner hyphens), English clitics apart as the treebanks write them ("do n't", "it 's"), each other
# symbol alone: raw text gets the tokens of already tokenized corpora such as SST
WORD_PATTERN = r"(?i)\w+(?=n't\b)|n't\b|\w+(?:-\w+)*|'\w+|[^\w\s]"


class Tokenizer:
    """Text <-> ids. Saved as a standard tokenizer.json that `tokenizers` (and transformers) can read."""

    def __init__(self, backend: _Backend, eos_token: str | None = None, bos_token: str | None = None):
        self.backend = backend
        # a checkpoint from elsewhere may end texts with its own token (Llama's "</s>"); saved in config.json
        self.eos_token = eos_token
        self.bos_token = bos_token  # the token chat templates write first ({{ bos_token }}), when the vocabulary has one
        self.pad_token: str | None = None  # a GGUF or Hugging Face vocabulary may name its own padding token
        self.kind = {"WordLevel": "char", "BPE": "bpe", "WordPiece": "wordpiece"}.get(type(backend.model).__name__, "bpe")
        if self.kind == "char" and backend.model.unk_token == "[UNK]":  # the char kind's unknown is UNK_CHAR
            self.kind = "word"

    # -- building -------------------------------------------------------------------------------
    @classmethod
    def train(cls, kind: str, texts: Iterable[str], vocab_size: int = 4096, lowercase: bool = False) -> "Tokenizer":
        """Train a tokenizer of `kind` ('char', 'bpe', 'wordpiece', 'word') on an iterable of texts; 'word' keeps
        the `vocab_size` most frequent words and maps the rest to [UNK]. 'wordpiece' reads the texts twice (a
        one-shot iterator is kept in a list; pass a TextSource to read files again instead)."""
        if kind == "char":
            return cls._train_char(texts, lowercase)
        if kind == "bpe":
            backend = _Backend(models.BPE())
            if lowercase:
                backend.normalizer = normalizers.Lowercase()
            backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            backend.decoder = decoders.ByteLevel()
            trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        elif kind == "wordpiece":
            backend = _Backend(models.WordPiece(unk_token="[UNK]"))
            backend.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase or None)
            backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
            backend.decoder = decoders.WordPiece()
            if iter(texts) is texts:  # a one-shot iterator: the continuation pieces need a first pass of their own
                texts = list(texts)
            pieces = _continuation_pieces(backend, texts)
            trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=BERT_SPECIALS + pieces,
                                                show_progress=False)
        elif kind == "word":
            backend = _Backend(models.WordLevel(unk_token="[UNK]"))
            if lowercase:
                backend.normalizer = normalizers.Lowercase()
            backend.pre_tokenizer = pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="removed", invert=True)
            trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=WORD_SPECIALS,
                                                show_progress=False)
        else:
            raise ValueError(f"unknown tokenizer kind '{kind}'; choose one of {', '.join(KINDS)}")
        texts = _Counting(texts)
        backend.train_from_iterator(texts, trainer=trainer)
        if texts.count == 0:
            raise ValueError("cannot train a tokenizer on an empty corpus")
        if kind == "wordpiece":
            backend = _without_added(backend, BERT_SPECIALS)
            cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
            backend.post_processor = processors.TemplateProcessing(
                single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
        return cls(backend)

    @classmethod
    def _train_char(cls, texts: Iterable[str], lowercase: bool) -> "Tokenizer":
        chars: set[str] = set()
        for text in texts:
            chars.update(text.lower() if lowercase else text)
        if not chars:
            raise ValueError("cannot train a tokenizer on an empty corpus")
        vocab = {ch: i for i, ch in enumerate(sorted(chars))}
        vocab[UNK_CHAR] = len(vocab)
        vocab[EOS] = len(vocab)
        backend = _Backend(models.WordLevel(vocab, unk_token=UNK_CHAR))
        if lowercase:
            backend.normalizer = normalizers.Lowercase()
        backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        backend.decoder = decoders.Fuse()
        backend.add_special_tokens([EOS, UNK_CHAR])
        return cls(backend)

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer at '{path}'")
        try:
            return cls(_Backend.from_file(str(path)))
        except Exception as error:  # tokenizers raises a bare Exception on bad JSON
            raise ValueError(f"'{path}' is not a valid tokenizer.json: {error}") from None

    def save(self, path: str | Path) -> None:
        from .files import atomic_write_text

        atomic_write_text(path, self.backend.to_str(pretty=True))

    # -- using ----------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, index: int) -> str | None:
        return self.backend.id_to_token(index)

    @property
    def eos_id(self) -> int | None:
        if self.eos_token is not None:
            return self.token_to_id(self.eos_token)
        return self.token_to_id(EOS) if self.kind != "wordpiece" else self.token_to_id("[SEP]")

    @property
    def pad_id(self) -> int:
        if self.pad_token is not None and self.token_to_id(self.pad_token) is not None:
            return self.token_to_id(self.pad_token)
        pad = self.token_to_id("[PAD]")
        return pad if pad is not None else (self.eos_id or 0)

    @property
    def unk_id(self) -> int | None:
        """The unknown token's id (WordPiece and word: [UNK]; char: <|unk|>), None when the model has none."""
        token = getattr(self.backend.model, "unk_token", None)
        return self.token_to_id(token) if token else None

    @property
    def mask_id(self) -> int | None:
        return self.token_to_id("[MASK]")

    @property
    def cls_id(self) -> int | None:
        return self.token_to_id("[CLS]")

    @property
    def sep_id(self) -> int | None:
        return self.token_to_id("[SEP]")

    @property
    def special_ids(self) -> set[int]:
        return {i for i in (self.token_to_id(t) for t in [*BERT_SPECIALS, EOS, UNK_CHAR]) if i is not None}

    def encode(self, text: str, pair: str | None = None, add_special_tokens: bool = False) -> list[int]:
        return self.backend.encode(text, pair, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=add_special_tokens)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def fingerprint(self) -> str:
        """A short hash of the tokenizer, to know whether a token file was made with it."""
        import hashlib

        return hashlib.sha256(self.backend.to_str().encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"


class _Counting(Iterator[str]):
    """Wrap an iterable and count what passes through (tokenizers' trainer does not tell)."""

    def __init__(self, texts: Iterable[str]):
        self._it, self.count = iter(texts), 0

    def __next__(self) -> str:
        text = next(self._it)
        self.count += bool(text)
        return text

    def __iter__(self):
        return self


class TextSource:
    """Texts that can be read more than once: each iteration calls `make` for a fresh iterator (files read again)."""

    def __init__(self, make):
        self.make = make

    def __iter__(self):
        return iter(self.make())


def _continuation_pieces(backend: _Backend, texts: Iterable[str]) -> list[str]:
    """'##c' for every character c that can continue a word of `texts` (after the normalizer; not whitespace, not
    split off by the pre-tokenizer), in sorted order. Given to the WordPiece trainer up front, they get fixed ids:
    left to the trainer, it numbers them in hash-map order, which breaks ties between equally frequent merges
    differently in every process (huggingface/tokenizers#1794), so the same text gave different vocabularies."""
    chars: set[str] = set()
    for text in texts:
        chars.update(text)
    normalize, split = backend.normalizer.normalize_str, backend.pre_tokenizer.pre_tokenize_str
    normalized = {c for raw in chars for c in normalize(raw) if not c.isspace()}
    # a character the normalizer spaces apart (Chinese) or the pre-tokenizer splits off (punctuation) begins every
    # word it is in: no piece for it
    return [f"##{c}" for c in sorted(normalized) if len(split(normalize(f"a{c}"))) == 1]


def _without_added(backend: _Backend, specials: list[str]) -> _Backend:
    """The trained WordPiece backend with only `specials` as added tokens (the trainer also registered the
    continuation pieces it was given as special tokens, which would make decoding skip them)."""
    rebuilt = _Backend(models.WordPiece(backend.get_vocab(with_added_tokens=False), unk_token="[UNK]"))
    rebuilt.normalizer, rebuilt.pre_tokenizer = backend.normalizer, backend.pre_tokenizer
    rebuilt.decoder = backend.decoder
    rebuilt.add_special_tokens(specials)
    return rebuilt
