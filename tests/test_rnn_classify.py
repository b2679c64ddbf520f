"""RNN classifiers: (bi)directional LSTM / GRU / RNN with final-state, mean or max pooling over the real tokens."""
import pytest
import torch

from lmforge import LM
from lmforge.app.training import train_from_config
from lmforge.cli import main
from lmforge.config import ConfigError, ModelConfig, build_config, load_config
from lmforge.models import build_model

from test_classify import reviews, write_csv


def classifier(arch="lstm", bidirectional=True, pooling="cls", **overrides):
    torch.manual_seed(0)
    options = dict(arch=arch, n_layer=2, n_embd=16, block_size=16, vocab_size=40, labels=["a", "b", "c"],
                   bidirectional=bidirectional, pooling=pooling, dropout=0.0)
    return build_model(ModelConfig(**{**options, **overrides})).eval()


@pytest.mark.parametrize("arch", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("pooling", ["cls", "mean", "max"])
def test_padding_never_changes_a_texts_prediction(arch, bidirectional, pooling):
    model = classifier(arch, bidirectional, pooling)
    rows = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17], [18]]
    width = max(map(len, rows))
    ids = torch.tensor([row + [0] * (width - len(row)) for row in rows])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows]).bool()
    batched = model.classify(ids, pad_mask=mask)
    for i, row in enumerate(rows):
        alone = model.classify(torch.tensor([row]), pad_mask=torch.ones(1, len(row), dtype=torch.bool))
        torch.testing.assert_close(batched[i:i + 1], alone, atol=1e-6, rtol=1e-5)
        # what the padding holds does not matter either
        noisy = ids.clone()
        noisy[i, len(row):] = 33
        torch.testing.assert_close(model.classify(noisy, pad_mask=mask)[i], batched[i], atol=1e-6, rtol=1e-5)


def test_pooled_features_are_what_each_pooling_says():
    rows = torch.tensor([[5, 6, 7, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0, 0]]).bool()
    for bidirectional in (False, True):
        model = classifier(bidirectional=bidirectional, n_layer=1, pooling="mean")
        outputs, _ = model.rnn(model.wte(rows[:, :3]))  # the real tokens only: (1, 3, width * directions)
        width = model.config.n_embd
        torch.testing.assert_close(model.features(rows, pad_mask=mask), outputs.mean(1))
        model.config = model.config.model_copy(update={"pooling": "max"})
        torch.testing.assert_close(model.features(rows, pad_mask=mask), outputs.amax(1))
        model.config = model.config.model_copy(update={"pooling": "cls"})
        final = outputs[:, -1, :width]  # forward: after the last real token
        if bidirectional:  # backward: after reading back to the first token
            final = torch.cat([final, outputs[:, 0, width:]], -1)
        torch.testing.assert_close(model.features(rows, pad_mask=mask), final)
        assert model.feature_size == width * (2 if bidirectional else 1)


def test_a_one_way_classifier_reads_the_last_real_tokens_state_as_the_language_model_does():
    model = build_model(ModelConfig(arch="lstm", n_layer=2, n_embd=16, block_size=16, vocab_size=40,
                                    labels=["a", "b"])).eval()
    ids, mask = torch.tensor([[5, 6, 7, 0], [8, 9, 10, 11]]), torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]).bool()
    hidden = model.hidden_states(ids)
    expected = model.classifier(torch.stack([hidden[0, 2], hidden[1, 3]]))
    torch.testing.assert_close(model.classify(ids, pad_mask=mask), expected)


def test_a_bidirectional_rnn_has_no_language_model_head_and_says_so():
    model = classifier()
    assert model.lm_head is None and not model.is_causal
    with pytest.raises(ValueError, match="a bidirectional lstm is a classifier"):
        model(torch.tensor([[1, 2]]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bilstm")
    train = write_csv(folder / "train.tsv", reviews(400, 1), fields=("text", "label"))
    train.write_text(train.read_text().replace(",", "\t"))  # a TSV with a header line
    test = write_csv(folder / "test.csv", reviews(100, 2))
    config = load_config(None, ['model.arch="lstm"', "model.bidirectional=true", 'model.pooling="max"',
                                "model.n_layer=1", "model.n_embd=32", "model.block_size=16", "model.dropout=0.2",
                                'tokenizer.kind="word"', "tokenizer.vocab_size=200", f'data.train="{train}"',
                                "data.val_fraction=0.2", "train.max_steps=150", "train.batch_size=16", "train.lr=3e-3",
                                "train.warmup_steps=10", "train.eval_every=50", "train.save_every=0",
                                f'run.dir="{folder / "run"}"'])
    assert config.train.objective == "classify"  # a bidirectional RNN classifies by default
    lm, result = train_from_config(config, progress=False)
    return folder, test, lm, result


def test_a_bilstm_learns_a_separable_task_with_a_falling_loss(trained):
    folder, test, lm, result = trained
    losses = [row["loss"] for row in _metrics(folder / "run") if "loss" in row]
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, losses
    assert result.eval["val_accuracy"] >= 0.95, result.eval
    assert lm.evaluate(test)["accuracy"] >= 0.95


def test_a_saved_bilstm_predicts_identically_and_works_from_the_cli(trained, capsys):
    folder, test, lm, _ = trained
    final = folder / "run" / "final"
    loaded = LM.from_pretrained(final)
    assert loaded.config.model.bidirectional and loaded.config.model.pooling == "max"
    texts = ["the film was wonderful and moving", "a dull and tedious plot", "wonderful"]
    assert loaded.classify(texts) == lm.classify(texts)
    assert [label for label, _ in loaded.classify(texts[:2])] == ["pos", "neg"]
    assert "bidirectional LSTM classifier" in (final / "README.md").read_text()
    assert main(["classify", str(final), "--text", texts[0]]) == 0
    assert "pos" in capsys.readouterr().out
    assert main(["eval", str(final), "--data", str(test)]) == 0
    assert "accuracy" in capsys.readouterr().out
    with pytest.raises(ValueError, match="generate needs a decoder"):
        loaded.generate("the")


@pytest.mark.parametrize("overrides,message", [
    (['model.arch="lstm"', "model.bidirectional=true", 'train.objective="clm"'], "cannot predict the next token"),
    (['model.arch="gpt"', "model.bidirectional=true"], "model.bidirectional is a key of the baseline archs"),
    (['model.arch="textcnn"', "model.bidirectional=true"], "arch 'textcnn' does not use model.bidirectional"),
    (['model.arch="textcnn"', 'model.pooling="mean"'], "arch 'textcnn' does not use model.pooling"),
    (['model.arch="bert"', 'model.pooling="max"'], "arch 'bert' pools 'cls' or 'mean'"),
    (['model.arch="gpt"', 'model.pooling="mean"'], r"pooling is an arch 'bert' switch \(and the RNNs'\)"),
])
def test_bad_rnn_classifier_configs_get_clear_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_rnn_embedding_dropout_defaults_to_model_dropout_and_can_be_set_apart():
    default, apart = classifier(dropout=0.3), classifier(dropout=0.3, embd_dropout=0.0)
    assert default.config.embd_dropout == 0.3 and default.embd_drop.p == 0.3  # as before the option existed
    ids = torch.randint(1, 40, (4, 6))
    torch.testing.assert_close(default.classify(ids), apart.classify(ids))  # eval: no dropout anywhere
    default.train(), apart.train()
    torch.manual_seed(1)
    first = default.classify(ids)
    torch.manual_seed(1)
    assert not torch.allclose(first, apart.classify(ids))  # the embeddings dropped by one only
    seen = []
    apart.embd_drop.register_forward_hook(lambda module, args, out: seen.append(torch.equal(args[0], out)))
    apart.classify(ids)
    assert seen == [True]  # embd_dropout=0 leaves the embeddings as they are in training too


def test_one_way_rnn_configs_keep_their_language_model_defaults():
    config = build_config({"model": {"arch": "gru"}})
    assert config.train.objective == "clm" and config.model.bidirectional is False
    assert build_config({"model": {"arch": "gpt"}}).model.bidirectional is None


def _metrics(run):
    import json
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("recipe", ["configs/textcnn-sst2.toml", "configs/lstm-classify.toml"])
def test_the_sst2_recipes_run_on_a_users_own_tsv(recipe, tmp_path, capsys):
    rows = [{"sentence": r["text"], "label": r["label"]} for r in reviews(120, 4)]
    train = write_csv(tmp_path / "train.tsv", rows, fields=("sentence", "label"))
    train.write_text(train.read_text().replace(",", "\t"))
    dev = write_csv(tmp_path / "dev.tsv", rows[:20], fields=("sentence", "label"))
    dev.write_text(dev.read_text().replace(",", "\t"))
    run = tmp_path / "run"
    assert main(["train", recipe, f"data.train={train}", f"data.test={dev}", "model.n_embd=16",
                 "tokenizer.vocab_size=100", "train.max_steps=4", "train.eval_every=2", f"run.dir={run}",
                 "--quiet"]) == 0
    assert main(["eval", str(run / "final"), "--data", str(dev)]) == 0
    assert "accuracy" in capsys.readouterr().out
