"""tokenizer.kind = "word": whole words (Kim's TextCNN tokens, word-level language models)."""
import pytest
from tokenizers import Tokenizer as Backend

from lmforge import LM
from lmforge.app.training import train_from_config
from lmforge.config import ConfigError, build_config, load_config
from lmforge.tokenizer import Tokenizer

from test_classify import reviews, write_csv


def tokens(tokenizer, text):
    return [tokenizer.id_to_token(i) for i in tokenizer.encode(text)]


def test_word_tokens_are_whole_words_with_clitics_apart_and_the_vocabulary_keeps_the_most_frequent(tmp_path):
    texts = ["The film is funny , funny and re-imagined .", "it 's a funny film", "they wo n't sit still",
             "the film is funny", "it 's that film", "rare"]
    tokenizer = Tokenizer.train("word", texts, vocab_size=9, lowercase=True)
    # [PAD] [UNK] <|endoftext|> + the 6 words seen more than once (film, funny, the, is, it, 's)
    assert tokenizer.kind == "word" and tokenizer.vocab_size == 9
    assert tokens(tokenizer, "Funny film") == ["funny", "film"]
    assert tokenizer.encode("rare") == [tokenizer.token_to_id("[UNK]")]  # seen once: not kept
    full = Tokenizer.train("word", texts, vocab_size=1000, lowercase=True)
    # raw text is split as the treebank wrote SST: "do n't", "it 's", hyphenated words whole, punctuation alone
    assert tokens(full, "They won't sit, it's re-imagined!") == [
        "they", "wo", "n't", "sit", ",", "it", "'s", "re-imagined", "[UNK]"]
    assert full.pad_id == full.token_to_id("[PAD]") and full.eos_id == full.token_to_id("<|endoftext|>")
    assert full.cls_id is None  # no [CLS]/[SEP]: a classifier reads the words alone
    full.save(tmp_path / "tokenizer.json")
    loaded = Tokenizer.load(tmp_path)
    assert loaded.kind == "word" and loaded.encode("they sit still") == full.encode("they sit still")
    # a standard tokenizer.json: the tokenizers library reads it on its own and agrees
    backend = Backend.from_file(str(tmp_path / "tokenizer.json"))
    assert backend.encode("they sit still").ids == full.encode("they sit still")
    assert Tokenizer.train("char", texts).kind == "char"  # the char kind, also a WordLevel model, stays char
    from lmforge.interop.hf_tokenizer import special_tokens
    assert special_tokens(loaded) == {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                                      "pad_token": "[PAD]", "unk_token": "[UNK]"}  # what an export declares


def test_a_textcnn_on_word_tokens_learns_a_separable_task_and_reloads_with_them(tmp_path):
    train, test = write_csv(tmp_path / "train.csv", reviews(400, 1)), write_csv(tmp_path / "test.csv", reviews(100, 2))
    config = build_config({"model": {"arch": "textcnn", "n_embd": 32, "n_filters": 16, "block_size": 16,
                                     "dropout": 0.3},
                           "tokenizer": {"kind": "word", "vocab_size": 200, "lowercase": True},
                           "data": {"train": str(train), "test": str(test)},
                           "train": {"max_steps": 120, "batch_size": 16, "lr": 3e-3, "warmup_steps": 10,
                                     "eval_every": 40, "save_every": 0},
                           "run": {"dir": str(tmp_path / "run")}})
    lm, result = train_from_config(config, progress=False)
    assert result.eval["val_accuracy"] >= 0.95, result.eval
    loaded = LM.from_pretrained(tmp_path / "run" / "final")
    assert loaded.tokenizer.kind == "word"
    texts = ["the film was wonderful and moving", "a dull and tedious plot"]
    assert [label for label, _ in loaded.classify(texts)] == ["pos", "neg"]
    assert loaded.classify(texts) == lm.classify(texts)


def test_a_word_level_lstm_language_model_trains_and_generates_words(tmp_path, corpus_file):
    lm = LM.from_config(build_config({"model": {"arch": "lstm", "n_layer": 1, "n_embd": 32, "block_size": 16},
                                      "tokenizer": {"kind": "word", "vocab_size": 100},
                                      "data": {"paths": [str(corpus_file)]}}))
    result = lm.fit(max_steps=150, batch_size=16, lr=1e-2, warmup_steps=5, eval_every=0, save_every=0, progress=False)
    assert result.train_loss < 1.3  # from ln(28 tokens) = 3.3 (about 0.7 is the corpus' own entropy per word)
    words = lm.generate("the cat", max_new_tokens=6, temperature=0, seed=0).split()
    assert len(words) >= 4 and set(words) <= set(corpus_file.read_text().replace(".", " . ").split()), words


def test_an_unknown_tokenizer_kind_lists_the_kinds():
    with pytest.raises(ConfigError, match="'char', 'bpe', 'wordpiece' or 'word'"):
        load_config(None, ['tokenizer.kind="words"'])


def test_wordpiece_training_gives_the_same_vocabulary_every_time_from_any_iterable():
    from conftest import small_corpus
    from lmforge.tokenizer import TextSource

    texts = small_corpus().splitlines()
    # the tokenizers library alone numbered its '##' pieces in hash-map order: 10 trainings, 10 vocabularies
    # (huggingface/tokenizers#1794); lmforge hands it the pieces in sorted order first
    trained = {Tokenizer.train("wordpiece", texts, 300, lowercase=True).backend.to_str() for _ in range(6)}
    trained.add(Tokenizer.train("wordpiece", iter(texts), 300, lowercase=True).backend.to_str())  # one-shot iterator
    trained.add(Tokenizer.train("wordpiece", TextSource(lambda: iter(texts)), 300, lowercase=True).backend.to_str())
    assert len(trained) == 1
    tokenizer = Tokenizer.train("wordpiece", texts, 300, lowercase=True)
    # the pieces it was handed are ordinary vocabulary: only BERT's five are special, decoding keeps the rest
    assert sorted(t.content for t in tokenizer.backend.get_added_tokens_decoder().values()) == \
        sorted(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    ids = tokenizer.encode("the reddest breadths")
    assert any(tokenizer.id_to_token(i).startswith("##") for i in ids)
    assert tokenizer.decode(ids) == "the reddest breadths"
