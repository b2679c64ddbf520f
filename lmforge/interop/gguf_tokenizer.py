"""GGUF tokenizer metadata (llama.cpp's `tokenizer.ggml.*` keys) <-> lmforge's Tokenizer over `tokenizers`:
"gpt2" is byte-level BPE with its merges, "llama" is SentencePiece-style BPE with scores and byte fallback."""
from __future__ import annotations

import json

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as _Backend

from ..errors import ModelDirError
from ..tokenizer import Tokenizer

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # llama.cpp's token types
# the pre-tokenizer splits some `tokenizer.ggml.pre` names stand for; any other name gets GPT-2's own split
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLITS = {"llama3": _LLAMA3, "llama-v3": _LLAMA3, "llama-bpe": _LLAMA3, "smaug-bpe": _LLAMA3, "dbrx": _LLAMA3,
          "qwen2": _QWEN2, "deepseek-r1-qwen": _QWEN2}


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's printable spelling of each byte (the alphabet byte-level vocabularies are written in)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    spelling, extra = {b: chr(b) for b in printable}, 0
    for byte in range(256):
        if byte not in spelling:
            spelling[byte] = chr(256 + extra)
            extra += 1
    return spelling


BYTES = _byte_alphabet()
ALPHABET = set(BYTES.values())


def tokenizer_from_gguf(meta: dict, where: str) -> Tokenizer:
    """The tokenizer a GGUF file's metadata describes, giving the ids transformers' GGUF tokenizer gives."""
    kind = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens:
        raise ModelDirError(f"{where}: the metadata has no tokenizer.ggml.tokens, so there is no tokenizer")
    types = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    if len(types) != len(tokens):
        raise ModelDirError(f"{where}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")
    if kind == "gpt2":
        backend = _byte_level(meta, tokens, where)
    elif kind == "llama":
        backend = _sentencepiece(meta, tokens, where)
    else:
        raise ModelDirError(f"{where}: tokenizer.ggml.model={kind!r} is not supported (lmforge reads 'gpt2', byte-level "
                            "BPE, and 'llama', SentencePiece-style BPE)")
    spelled = (lambda t: set(t) <= ALPHABET) if kind == "gpt2" else (lambda t: True)
    vocab = backend.get_vocab()
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                for t, k in zip(tokens, types) if k == CONTROL and spelled(t)])
    backend.add_tokens([AddedToken(t, normalized=False, special=False)
                        for t, k in zip(tokens, types) if k == USER_DEFINED and t in vocab])
    role = {name: _token(meta, tokens, f"tokenizer.ggml.{name}_token_id")
            for name in ("bos", "eos", "padding")}
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", kind == "llama"))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    _post_processor(backend, role["bos"] if add_bos else None, role["eos"] if add_eos else None)
    tokenizer = Tokenizer(backend, eos_token=role["eos"])
    tokenizer.bos_token, tokenizer.pad_token = role["bos"], role["padding"]
    return tokenizer


def _token(meta: dict, tokens: list[str], key: str) -> str | None:
    index = meta.get(key)
    return tokens[index] if isinstance(index, int) and 0 <= index < len(tokens) else None


def _merges(meta: dict, where: str) -> list[tuple[str, str]]:
    merges = []
    for merge in meta.get("tokenizer.ggml.merges") or []:
        parts = merge.split(" ")
        if len(parts) != 2:
            raise ModelDirError(f"{where}: the merge {merge!r} is not two tokens separated by one space")
        merges.append((parts[0], parts[1]))
    return merges


def _byte_level(meta: dict, tokens: list[str], where: str) -> _Backend:
    """Byte-level BPE: tokens in GPT-2's byte alphabet (others respelled byte by byte), merges from the file."""
    vocab = {t if set(t) <= ALPHABET else "".join(BYTES[b] for b in t.encode("utf-8")): i for i, t in enumerate(tokens)}
    try:
        backend = _Backend(models.BPE(vocab, _merges(meta, where), continuing_subword_prefix="",
                                      end_of_word_suffix="", fuse_unk=False))
    except Exception as error:  # tokenizers raises a bare Exception on a merge of unknown tokens
        raise ModelDirError(f"{where}: the byte-level vocabulary and merges do not fit together: {error}") from None
    split = SPLITS.get(meta.get("tokenizer.ggml.pre"))
    if split:
        backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                         pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                                  use_regex=False)])
    else:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return backend


def _sentencepiece(meta: dict, tokens: list[str], where: str) -> _Backend:
    """SentencePiece-style BPE with byte fallback: merges from the file, or recovered from the token scores
    (a merge's rank is its result's score, best first)."""
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = _merges(meta, where)
    if not merges:
        scores = meta.get("tokenizer.ggml.scores")
        if not isinstance(scores, list) or len(scores) != len(tokens):
            raise ModelDirError(f"{where}: a 'llama' tokenizer needs tokenizer.ggml.merges or one score per token")
        merges = _merges_from_scores(tokens, scores, vocab)
    backend = _Backend(models.BPE(vocab, merges, fuse_unk=True, byte_fallback=True))
    prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first" if prefix else "never",
                                                     split=False)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    backend.decoder = decoders.Sequence(steps + ([decoders.Strip(content=" ", left=1)] if prefix else []))
    return backend


def _merges_from_scores(tokens: list[str], scores: list[float], vocab: dict[str, int]) -> list[tuple[str, str]]:
    found = []
    for token, score in zip(tokens, scores):
        splits = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in vocab and token[i:] in vocab]
        splits.sort(key=lambda pair: (vocab[pair[0]], vocab[pair[1]]))
        found += [(left, right, score) for left, right in splits]
    found.sort(key=lambda m: (-m[2], -len(m[0]), -len(m[1])))  # stable: ties keep vocabulary order
    return [(left, right) for left, right, _ in found]


def _post_processor(backend: _Backend, bos: str | None, eos: str | None) -> None:
    """Add BOS/EOS around encoded text (encode(..., add_special_tokens=True)) as the file's add_*_token say."""
    if bos is None and eos is None:
        return
    pieces = [p for p in (bos, "$A", eos) if p is not None]
    pair = [p for p in (bos, "$A", eos, bos, "$B:1", eos) if p is not None]
    specials = [(t, backend.token_to_id(t)) for t in {bos, eos} if t is not None]
    backend.post_processor = processors.TemplateProcessing(single=" ".join(pieces), pair=" ".join(pair),
                                                           special_tokens=specials)


def gguf_tokenizer_metadata(tokenizer: Tokenizer, vocab_size: int, pre: str | None) -> dict:
    """`tokenizer.ggml.*` keys for a byte-level BPE tokenizer padded to the model's `vocab_size`; other kinds
    (characters, words, WordPiece) have no GGUF form and are refused."""
    backend = tokenizer.backend
    state = json.loads(backend.to_str())
    model, pre_tok = state.get("model") or {}, json.dumps(state.get("pre_tokenizer"))
    if model.get("type") != "BPE" or "ByteLevel" not in pre_tok:
        raise ValueError(f"cannot export a {tokenizer.kind} tokenizer to GGUF: llama.cpp reads byte-level BPE "
                         "('gpt2') or SentencePiece vocabularies, and this is neither; train the model with "
                         "tokenizer.kind='bpe' to export it")
    added = {entry["id"]: entry for entry in state.get("added_tokens") or []}
    tokens, types = [], []
    for index in range(vocab_size):
        token = backend.id_to_token(index)
        if token is None:
            tokens.append(f"<unused{index}>")
            types.append(UNUSED)
        else:
            tokens.append(token)
            types.append((CONTROL if added[index]["special"] else USER_DEFINED) if index in added else NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    ids = backend.encode("a", add_special_tokens=True).ids
    plain = backend.encode("a", add_special_tokens=False).ids
    eos = tokenizer.eos_id
    bos = tokenizer.token_to_id(tokenizer.bos_token) if getattr(tokenizer, "bos_token", None) else eos
    pad = tokenizer.pad_id
    out = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre or "gpt-2", "tokenizer.ggml.tokens": tokens,
           "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": merges,
           "tokenizer.ggml.add_bos_token": len(ids) > len(plain) and ids[0] == bos,
           "tokenizer.ggml.add_eos_token": len(ids) > len(plain) and ids[-1] == eos}
    for key, value in (("bos", bos), ("eos", eos), ("padding", pad)):
        if value is not None:
            out[f"tokenizer.ggml.{key}_token_id"] = value
    return out
