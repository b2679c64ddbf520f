"""Hugging Face tokenizer files in and out: tokenizer.json, GPT-2's vocab.json + merges.txt, BERT's vocab.txt."""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer as _Backend
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from ..files import atomic_write_text
from ..errors import ModelDirError
from ..tokenizer import BERT_SPECIALS, EOS, Tokenizer
from .weights import read_json

ROLES = ("bos_token", "eos_token", "unk_token", "pad_token", "cls_token", "sep_token", "mask_token")


def load_hf_tokenizer(root: Path, hf: dict) -> Tokenizer:
    """The checkpoint's tokenizer, giving the same ids as transformers' tokenizer for it."""
    settings = read_json(root / "tokenizer_config.json") if (root / "tokenizer_config.json").is_file() else {}
    if (root / "tokenizer.json").is_file():
        tokenizer = Tokenizer.load(root / "tokenizer.json")
        backend = tokenizer.backend
    elif (root / "vocab.json").is_file() and (root / "merges.txt").is_file():
        backend = byte_level_bpe(root / "vocab.json", root / "merges.txt")
    elif (root / "vocab.txt").is_file():
        backend = wordpiece(root / "vocab.txt", settings)
    else:
        raise ModelDirError(f"'{root}' has no tokenizer: expected tokenizer.json, vocab.json + merges.txt, or vocab.txt")
    # a saved truncation/padding setting would silently cut or pad what lmforge encodes
    backend.no_truncation()
    backend.no_padding()
    eos = special_token(settings.get("eos_token"))
    if eos is None and isinstance(hf.get("eos_token_id"), int):
        eos = backend.id_to_token(hf["eos_token_id"])
    tokenizer = Tokenizer(backend)
    if eos is not None and eos not in (EOS, "[SEP]") and backend.token_to_id(eos) is not None:
        tokenizer.eos_token = eos
    bos = special_token(settings.get("bos_token"))
    if bos is None and isinstance(hf.get("bos_token_id"), int):
        bos = backend.id_to_token(hf["bos_token_id"])
    if bos is not None and backend.token_to_id(bos) is not None:
        tokenizer.bos_token = bos
    return tokenizer


def load_hf_chat_template(root: Path) -> str | None:
    """The checkpoint's chat template: chat_template.jinja (newer transformers write it), else
    tokenizer_config.json's `chat_template` (a string, or a list of named templates: "default" is taken)."""
    jinja = root / "chat_template.jinja"
    if jinja.is_file():
        try:
            return jinja.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ModelDirError(f"'{jinja}' is not readable UTF-8 text: {error}") from None
    config = root / "tokenizer_config.json"
    found = read_json(config).get("chat_template") if config.is_file() else None
    if isinstance(found, list):
        named = {entry.get("name"): entry.get("template") for entry in found if isinstance(entry, dict)}
        if "default" not in named:
            raise ModelDirError(f"'{config}' has named chat templates {sorted(map(str, named))} but no 'default' one")
        found = named["default"]
    if found is not None and not isinstance(found, str):
        raise ModelDirError(f"'{config}': chat_template must be a string or a list of {{name, template}} objects, "
                            f"got {type(found).__name__}")
    return found or None


def special_token(value) -> str | None:
    """tokenizer_config.json writes a special token as a string or as {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def byte_level_bpe(vocab: Path, merges: Path) -> _Backend:
    """GPT-2's byte-level BPE from its two files, with <|endoftext|> as a special token."""
    try:
        backend = _Backend(models.BPE.from_file(str(vocab), str(merges)))
    except Exception as error:  # tokenizers raises a bare Exception on bad files
        raise ModelDirError(f"'{vocab}' / '{merges}' are not a valid BPE vocabulary and merge list: {error}") from None
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    if backend.token_to_id(EOS) is not None:
        backend.add_special_tokens([EOS])
    return backend


def wordpiece(vocab: Path, settings: dict) -> _Backend:
    """BERT's WordPiece from vocab.txt, honouring do_lower_case, strip_accents and tokenize_chinese_chars."""
    try:
        backend = _Backend(models.WordPiece.from_file(str(vocab), unk_token="[UNK]", max_input_chars_per_word=100))
    except Exception as error:
        raise ModelDirError(f"'{vocab}' is not a valid WordPiece vocabulary: {error}") from None
    lowercase = bool(settings.get("do_lower_case", True))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=bool(settings.get("tokenize_chinese_chars", True)),
        strip_accents=settings.get("strip_accents"), lowercase=lowercase)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    present = [t for t in BERT_SPECIALS if backend.token_to_id(t) is not None]
    backend.add_special_tokens(present)
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    if cls_id is not None and sep_id is not None:
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return backend


def special_tokens(tokenizer: Tokenizer) -> dict[str, str]:
    """role -> token for the tokenizer_config.json / special_tokens_map.json of an export."""
    found: dict[str, str] = {}
    if tokenizer.kind == "wordpiece":
        for role, token in zip(("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"), BERT_SPECIALS):
            if tokenizer.token_to_id(token) is not None:
                found[role] = token
        return found
    eos = tokenizer.eos_token or EOS
    if tokenizer.token_to_id(eos) is not None:
        found.update(bos_token=eos, eos_token=eos, pad_token=eos)
    bos = getattr(tokenizer, "bos_token", None)
    if bos is not None and tokenizer.token_to_id(bos) is not None:
        found["bos_token"] = bos
    if tokenizer.token_to_id("<|unk|>") is not None:
        found["unk_token"] = "<|unk|>"
    if tokenizer.kind == "word":  # whole words have their own padding and unknown-word tokens
        found.update(pad_token="[PAD]", unk_token="[UNK]")
    return found


def save_hf_tokenizer(tokenizer: Tokenizer, directory: Path, max_length: int,
                      chat_template: str | None = None) -> dict[str, int]:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json (and the chat template, in
    tokenizer_config.json and as chat_template.jinja); return role -> id."""
    tokenizer.save(directory / "tokenizer.json")
    specials = special_tokens(tokenizer)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length,
              "clean_up_tokenization_spaces": False, **specials}
    if chat_template:  # older transformers read it from tokenizer_config.json, newer from chat_template.jinja
        config["chat_template"] = chat_template
        atomic_write_text(directory / "chat_template.jinja", chat_template)
    atomic_write_text(directory / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False))
    atomic_write_text(directory / "special_tokens_map.json", json.dumps(specials, indent=2, ensure_ascii=False))
    return {role: tokenizer.token_to_id(token) for role, token in specials.items()}
