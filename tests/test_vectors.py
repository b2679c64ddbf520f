"""model.vectors: a fresh model's token embeddings started from pretrained vectors (a word-vectors text file or a
model's input embeddings), as Kim's CNN-non-static; what the rows become, what they buy, and the bad inputs."""
import random

import pytest
import torch

from lmforge import LM
from lmforge.app.training import train_from_config
from lmforge.bundle import Bundle
from lmforge.cli import main
from lmforge.config import ConfigError, ModelConfig, build_config, load_config
from lmforge.errors import DataError
from lmforge.modeldir import save_model_dir
from lmforge.models import build_model
from lmforge.tokenizer import Tokenizer
from lmforge.vectors import open_vectors, start_embeddings

WORDS = ["cat", "dog", "Bird", "fish", "tree"]


def write_vectors(path, vectors: dict[str, list[float]], header: bool = False):
    lines = [f"{len(vectors)} {len(next(iter(vectors.values())))}"] if header else []
    lines += [" ".join([word, *(f"{x:.6f}" for x in vector)]) for word, vector in vectors.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def textcnn(tokenizer, n_embd=4, seed=0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(arch="textcnn", n_embd=n_embd, block_size=16, vocab_size=tokenizer.vocab_size,
                                   labels=["a", "b"]))


@pytest.mark.parametrize("header", [False, True], ids=["glove", "word2vec-text"])
def test_a_vectors_file_starts_the_rows_of_the_words_it_holds_at_the_random_rows_scale(tmp_path, header):
    tokenizer = Tokenizer.train("word", [" ".join(WORDS + ["unseen"])], 100, lowercase=False)
    rng = random.Random(0)
    vectors = {word: [rng.uniform(-2, 2) for _ in range(4)] for word in ["cat", "dog", "bird", "fish", "tree", "zebra"]}
    path = write_vectors(tmp_path / "vectors.txt", vectors, header)
    plain, model = textcnn(tokenizer), textcnn(tokenizer)
    started = start_embeddings(model, tokenizer, open_vectors(path), str(path))

    assert (started.found, started.total) == (5, tokenizer.vocab_size)  # 'Bird' by its lowercase; not 'unseen'
    rows = {word: model.wte.weight[tokenizer.token_to_id(word)] for word in WORDS}
    given = {word: torch.tensor(vectors[word.lower()]) for word in WORDS}
    scale = rows["cat"][0] / given["cat"][0]
    for word in WORDS:  # one scale for all: the directions and proportions of the vectors are kept
        torch.testing.assert_close(rows[word], given[word] * scale, atol=1e-5, rtol=1e-5)
    found = torch.stack(list(rows.values()))
    assert found.std().item() == pytest.approx(plain.wte.weight.std().item(), rel=1e-4)
    for token in ["unseen", "[PAD]", "[UNK]"]:  # no vector: the row the seed drew
        index = tokenizer.token_to_id(token)
        assert torch.equal(model.wte.weight[index], plain.wte.weight[index])


def char_source(tmp_path):
    """A tiny GPT over single characters saved as a model directory: (model, tokenizer, directory)."""
    source_tokenizer = Tokenizer.train("char", ["abcdefghij"])
    torch.manual_seed(1)
    source = build_model(ModelConfig(arch="gpt", n_layer=1, n_head=2, n_embd=8, block_size=16,
                                     vocab_size=source_tokenizer.vocab_size))
    return source, source_tokenizer, save_model_dir(tmp_path / "source", Bundle(source, source_tokenizer, source.config))


def test_a_models_embeddings_start_the_rows_through_its_own_tokenizer(tmp_path):
    source, source_tokenizer, source_dir = char_source(tmp_path)
    tokenizer = Tokenizer.train("word", ["ab cab j z"], 100)
    plain, model = textcnn(tokenizer, n_embd=8), textcnn(tokenizer, n_embd=8)
    started = start_embeddings(model, tokenizer, open_vectors(source_dir), str(source_dir))

    table = source.wte.weight.detach()
    row = {c: table[source_tokenizer.token_to_id(c)] for c in "abcj"}
    expected = {"ab": (row["a"] + row["b"]) / 2, "cab": (row["c"] + row["a"] + row["b"]) / 3, "j": row["j"]}
    got = {word: model.wte.weight[tokenizer.token_to_id(word)] for word in expected}
    scale = got["j"][0] / expected["j"][0]
    for word, mean in expected.items():  # a word the source splits takes the mean of its pieces' rows
        torch.testing.assert_close(got[word], mean * scale, atol=1e-5, rtol=1e-5)
    z = tokenizer.token_to_id("z")  # the source has no piece of it: the random row stays
    assert torch.equal(model.wte.weight[z], plain.wte.weight[z])
    eos = tokenizer.token_to_id("<|endoftext|>")  # a special token both vocabularies hold: the source's row
    torch.testing.assert_close(model.wte.weight[eos], table[source_tokenizer.token_to_id("<|endoftext|>")] * scale)
    assert started.found == 4


def test_a_models_output_layer_gives_each_token_its_embedding_of_the_tokens_text(tmp_path):
    from lmforge.infer.embed import embed_ids, encode_for_embedding

    source, source_tokenizer, source_dir = char_source(tmp_path)
    tokenizer = Tokenizer.train("word", ["ab cab j z"], 100)
    plain, model = textcnn(tokenizer, n_embd=8), textcnn(tokenizer, n_embd=8)
    with pytest.warns(UserWarning, match="only 3 of the vocabulary's 7 tokens have a vector"):  # said, not hidden
        started = start_embeddings(model, tokenizer, open_vectors(source_dir, "output"), str(source_dir))

    words = ["ab", "cab", "j"]
    expected = embed_ids(source, [encode_for_embedding(source, source_tokenizer, word) for word in words])
    got = torch.stack([model.wte.weight[tokenizer.token_to_id(word)] for word in words])
    scale = got[0, 0] / expected[0, 0]
    torch.testing.assert_close(got, expected * scale, atol=1e-5, rtol=1e-5)
    for token in ["z", "<|endoftext|>", "[PAD]"]:  # nothing to read / special: the random rows stay
        index = tokenizer.token_to_id(token)
        assert torch.equal(model.wte.weight[index], plain.wte.weight[index])
    assert (started.found, started.layer) == (3, "output")


def write_texts(path, rows):
    path.write_text("text,label\n" + "".join(f"{text},{label}\n" for text, label in rows), encoding="utf-8")
    return path


def test_pretrained_vectors_let_a_textcnn_classify_words_it_never_saw_in_training(tmp_path):
    # the same task twice: trained on 10 + 10 sentiment words, tested on texts whose only sentiment words are 30 + 30
    # others. Their vectors lie along one direction (+ for good, - for bad), so only a model started from them can
    # tell those apart; the one drawn at random is near chance on them.
    rng = random.Random(0)
    axis = [rng.gauss(0, 1) for _ in range(16)]
    sentiment = {f"{kind}{i}": sign for kind, sign in (("good", 1), ("bad", -1)) for i in range(40)}
    filler = [f"w{i}" for i in range(30)]
    vectors = {word: [sign * a + rng.gauss(0, 0.6) for a in axis] for word, sign in sentiment.items()}
    vectors.update({word: [rng.gauss(0, 1) for _ in axis] for word in filler})
    path = write_vectors(tmp_path / "vectors.txt", vectors)
    tokenizer = Tokenizer.train("word", [" ".join(vectors)], 200)
    tokenizer.save(tmp_path / "tokenizer.json")

    def texts(words, n):
        rows = []
        for _ in range(n):
            word = rng.choice(words)
            middle = rng.sample(filler, 4)
            middle.insert(rng.randrange(5), word)
            rows.append((" ".join(middle), "pos" if sentiment[word] > 0 else "neg"))
        return rows

    seen = [w for w in sentiment if int(w.lstrip("godba")) < 10]
    unseen = [w for w in sentiment if w not in seen]
    train = write_texts(tmp_path / "train.csv", texts(seen, 400))
    test = write_texts(tmp_path / "test.csv", texts(unseen, 300))
    accuracy = {}
    for name, extra in (("random", {}), ("vectors", {"vectors": str(path)})):
        config = build_config({"model": {"arch": "textcnn", "n_embd": 16, "n_filters": 16, "kernel_sizes": [1, 2],
                                         "block_size": 16, "dropout": 0.2, **extra},
                               "tokenizer": {"path": str(tmp_path / "tokenizer.json"), "kind": "word"},
                               "data": {"train": str(train)},
                               "train": {"max_steps": 150, "batch_size": 16, "lr": 3e-3, "warmup_steps": 10,
                                         "eval_every": 0, "save_every": 0, "seed": 1},
                               "run": {"dir": str(tmp_path / name)}})
        lm, _ = train_from_config(config, progress=False)
        accuracy[name] = lm.evaluate(test)["accuracy"]
    assert accuracy["vectors"] >= 0.9 and accuracy["random"] <= 0.75, accuracy
    saved = LM.from_pretrained(tmp_path / "vectors" / "final")
    assert saved.meta["vectors"] == {"source": str(path), "tokens": 110, "of": tokenizer.vocab_size}
    assert saved.config.model.vectors == str(path)
    tuned = LM.from_config(build_config({"model": {"init": str(tmp_path / "vectors" / "final")}}))
    assert tuned.config.model.vectors is None  # fine-tuning starts from the trained rows, not the vectors again
    card = (tmp_path / "vectors" / "final" / "README.md").read_text()
    assert f"started from pretrained vectors, the word vectors in {path}, for 110 of 113 tokens (the rest" in card


def test_bad_vectors_get_clear_errors(tmp_path, capsys):
    tokenizer = Tokenizer.train("word", ["cat dog"], 100)
    with pytest.raises(ConfigError, match="does not exist; it takes a text file of word vectors"):
        open_vectors(tmp_path / "missing.txt")
    binary = tmp_path / "vectors.bin"
    binary.write_bytes(b"2 3\ncat \xff\xfe\x00\x01\x9c\x8d")
    with pytest.raises(DataError, match="Binary word2vec files are not read: convert it to text"):
        open_vectors(binary)
    broken = tmp_path / "broken.txt"
    broken.write_text("cat 0.1 0.2 0.3 0.4\ndog 0.1 x 0.3 0.4\n")
    with pytest.raises(DataError, match="line 2 of .* is not a word and 4 numbers"):
        start_embeddings(textcnn(tokenizer), tokenizer, open_vectors(broken), str(broken))
    other = write_vectors(tmp_path / "other.txt", {"zebra": [0.1] * 4})
    with pytest.raises(ConfigError, match="none of the vocabulary's .* tokens has a vector"):
        start_embeddings(textcnn(tokenizer), tokenizer, open_vectors(other), str(other))
    with pytest.raises(ConfigError, match="model.n_embd=8: set model.n_embd=4"):
        start_embeddings(textcnn(tokenizer, n_embd=8), tokenizer, open_vectors(other), str(other))
    with pytest.raises(ConfigError, match="reads a model's hidden states, but .* is a file of word vectors"):
        open_vectors(other, "output")
    with pytest.raises(ConfigError, match="model.vectors_layer says which vectors of model.vectors are read"):
        load_config(None, ['model.vectors_layer="output"'])
    with pytest.raises(ConfigError, match="model.vectors starts a fresh model's embeddings, but model.init"):
        load_config(None, [f'model.vectors="{other}"', 'model.init="runs/x/final"'])

    # through the command line: a wrong dimension is one line before the tokenizer is trained
    train = write_texts(tmp_path / "train.csv", [("cat dog", "a"), ("dog cat", "b")])
    config = tmp_path / "c.toml"
    config.write_text(f'[model]\narch = "textcnn"\nn_embd = 8\nvectors = "{other}"\n[data]\ntrain = "{train}"\n'
                      f'[run]\ndir = "{tmp_path / "run"}"\n')
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "have 4 dimensions but model.n_embd=8" in err and "Traceback" not in err


def test_a_gguf_file_gives_the_same_vectors_as_the_model_directory_it_was_exported_from(tmp_path, corpus_file):
    pytest.importorskip("gguf")
    from lmforge.interop import save_gguf

    source = LM.new("gpt", tokenizer="bpe", vocab_size=300, corpus=corpus_file, n_layer=1, n_head=2, n_embd=16,
                    block_size=16)
    folder = save_model_dir(tmp_path / "source", source.bundle)
    gguf = save_gguf(tmp_path / "source.gguf", source.model, source.tokenizer, source.config.model, gguf_type="f32")
    tokenizer = Tokenizer.train("word", [corpus_file.read_text()], 200)
    from_folder, from_gguf = textcnn(tokenizer, n_embd=16), textcnn(tokenizer, n_embd=16)
    for model, path in ((from_folder, folder), (from_gguf, gguf)):
        started = start_embeddings(model, tokenizer, open_vectors(path), str(path))
    assert started.found > tokenizer.vocab_size / 2
    assert torch.equal(from_folder.wte.weight, from_gguf.wte.weight)
