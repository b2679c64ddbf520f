"""The baselines: RNN language models (LSTM, GRU, tanh RNN) and the TextCNN classifier with batch norm."""
import json

import pytest
import torch

from lmforge import LM
from lmforge.app.training import train_from_config
from lmforge.cli import main
from lmforge.config import ConfigError, ModelConfig, build_config, load_config
from lmforge.infer.generate import SamplingConfig, generate
from lmforge.models import build_model
from lmforge.tokenizer import Tokenizer

from conftest import small_corpus
from test_classify import reviews, write_csv

RNN_ARCHS = ["lstm", "gru", "rnn"]


def rnn_model(arch, vocab_size=50, **overrides):
    torch.manual_seed(0)
    options = dict(arch=arch, n_layer=2, n_embd=32, block_size=16, vocab_size=vocab_size)
    return build_model(ModelConfig(**{**options, **overrides})).eval()


@pytest.mark.parametrize("arch", RNN_ARCHS)
def test_rnn_logits_have_the_right_shape_and_ignore_the_future(arch):
    model = rnn_model(arch)
    ids = torch.randint(0, 50, (3, 16))
    logits = model(ids)
    assert logits.shape == (3, 16, 50)
    for t in (0, 7, 14):
        changed = ids.clone()
        changed[:, t + 1:] = torch.randint(0, 50, changed[:, t + 1:].shape)
        torch.testing.assert_close(model(changed)[:, :t + 1], logits[:, :t + 1], atol=0, rtol=0)
        assert not torch.allclose(model(changed)[:, t + 1:], logits[:, t + 1:])  # the past does matter


def test_truncated_bptt_keeps_the_forward_pass_and_cuts_gradients_at_chunk_edges():
    whole, cut = rnn_model("lstm", dropout=0.0).train(), rnn_model("lstm", dropout=0.0, bptt=4).train()
    ids = torch.randint(0, 50, (2, 16))
    grads = []
    for model in (whole, cut):
        embedded = []
        model.wte.register_forward_hook(lambda m, i, out: embedded.append(out) or out.retain_grad())
        logits = model(ids)
        logits[:, -1].logsumexp(-1).sum().backward()  # a loss at the last step only
        grads.append(embedded[0].grad.norm(dim=-1))  # (B, T): d loss / d input at each step
        if model is cut:
            torch.testing.assert_close(logits, whole(ids))
    assert (grads[0][:, :12] > 0).all()  # the whole window: gradients reach every step
    assert (grads[1][:, :12] == 0).all() and (grads[1][:, 12:] > 0).all()  # truncated: only the last chunk


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train("char", [small_corpus(50)])


@pytest.mark.parametrize("arch", RNN_ARCHS)
def test_stateful_generation_equals_recomputing_from_the_start(tokenizer, arch):
    # 40 new tokens after the prompt run far past block_size=16: the state has no window to slide
    model = rnn_model(arch, vocab_size=tokenizer.vocab_size)
    greedy = SamplingConfig(max_new_tokens=40, temperature=0, ignore_eos=True)
    prompts = ["the cat sees", "a", "my friend likes the"]
    cached = generate(model, tokenizer, prompts, greedy, use_cache=True)
    recomputed = generate(model, tokenizer, prompts, greedy, use_cache=False)
    alone = [generate(model, tokenizer, [p], greedy)[0] for p in prompts]  # left padding leaves the state alone
    assert cached == recomputed == alone and all(len(text) == 40 for text in cached)
    # and the chain itself: each token is the argmax of a plain forward over everything before it
    ids = tokenizer.encode(prompts[0])
    for _ in range(40):
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert tokenizer.decode(ids[-40:]) == cached[0]


def test_an_lstm_trains_saves_and_generates_through_the_usual_commands(tmp_path, corpus_file, capsys):
    config = tmp_path / "lstm.toml"
    config.write_text(f"""[model]\narch = "lstm"\nn_layer = 1\nn_embd = 64\nblock_size = 32\n
[data]\npaths = ["{corpus_file}"]\n[train]\nmax_steps = 120\nbatch_size = 16\nlr = 1e-2\nwarmup_steps = 10
eval_every = 120\neval_steps = 5\nsave_every = 0\n[run]\ndir = "{tmp_path / 'run'}"\n""")
    losses = []
    lm, result = train_from_config(load_config(config), progress=False, hooks=[lambda s, r: losses.append(r)])
    train = [r["loss"] for r in losses if "lr" in r]
    assert train[-1] < 0.5 * train[0] and result.eval["val_loss"] < 1.3, (train[0], train[-1], result.eval)
    final = tmp_path / "run" / "final"
    assert "LSTM language model" in (final / "README.md").read_text()
    assert main(["generate", str(final), "--prompt", "the cat", "--max-new-tokens", "30", "--temperature", "0"]) == 0
    assert main(["eval", str(final), "--data", str(corpus_file), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scored["loss"] < 1.3


def test_a_resumed_lstm_run_ends_exactly_like_an_uninterrupted_one(tmp_path, corpus_file):
    options = dict(max_steps=20, save_every=10, progress=False, batch_size=8, lr=3e-3, warmup_steps=5,
                   eval_every=0, log_every=1)
    model = dict(n_layer=2, n_embd=32, block_size=24, dropout=0.1, bptt=8)

    class Stop(Exception):
        pass

    def kill_at_15(step, record):
        if step == 15:
            raise Stop

    whole, losses = LM.new("lstm", corpus=corpus_file, **model), []
    whole.fit(corpus_file, run_dir=tmp_path / "whole", hooks=[lambda s, r: losses.append(r["loss"])], **options)
    with pytest.raises(Stop):
        LM.new("lstm", corpus=corpus_file, **model).fit(corpus_file, run_dir=tmp_path / "broken",
                                                        hooks=[kill_at_15], **options)
    resumed, resumed_losses = LM.new("lstm", corpus=corpus_file, **model), []
    resumed.fit(corpus_file, run_dir=tmp_path / "broken", resume=True,
                hooks=[lambda s, r: resumed_losses.append(r["loss"])], **options)
    assert resumed_losses == losses[10:]
    for name, value in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, atol=0, rtol=0)


def cnn_model(batch_norm=True, **overrides):
    torch.manual_seed(0)
    options = dict(arch="textcnn", n_embd=16, block_size=20, vocab_size=50, labels=["a", "b"], n_filters=8,
                   kernel_sizes=[2, 3], batch_norm=batch_norm, dropout=0.0)
    return build_model(ModelConfig(**{**options, **overrides}))


def test_textcnn_batch_norm_differs_between_train_and_eval_and_ignores_padding():
    model = cnn_model().train()
    ids = torch.randint(1, 50, (4, 9))
    mask = torch.ones(4, 9, dtype=torch.bool)
    mask[1, 4:] = False
    first = model.classify(ids, pad_mask=mask)
    # train mode: each row is normalised with its batch's statistics, so a row's logits depend on the others
    assert not torch.allclose(model.classify(ids[:2], pad_mask=mask[:2])[0], first[0])
    # ... but not on padding: the batch statistics count real positions only
    wider, wide_mask = torch.cat([ids, ids[:, :5]], 1), torch.cat([mask, torch.zeros(4, 5, dtype=torch.bool)], 1)
    torch.testing.assert_close(model.classify(wider, pad_mask=wide_mask), first)
    model.eval()  # eval mode: running statistics, so each row stands alone
    torch.testing.assert_close(model.classify(ids[:2], pad_mask=mask[:2]), model.classify(ids, pad_mask=mask)[:2])
    assert not torch.allclose(model.classify(ids, pad_mask=mask), first)
    norm = model.norms[0]
    assert int(norm.num_batches_tracked) == 3 and not torch.allclose(norm.running_mean, torch.zeros(8))


def test_textcnn_without_batch_norm_has_none_and_is_the_same_in_train_and_eval():
    model = cnn_model(batch_norm=False)
    assert model.norms is None and all(conv.bias is not None for conv in model.convs)
    ids = torch.randint(1, 50, (3, 7))
    torch.testing.assert_close(model.train().classify(ids), model.eval().classify(ids))


def test_textcnn_embedding_dropout_changes_the_output_in_train_mode_only():
    plain, dropped = cnn_model(batch_norm=False), cnn_model(batch_norm=False, embd_dropout=0.5)
    assert plain.config.embd_dropout == 0.0  # off unless asked for
    dropped.load_state_dict(plain.state_dict())  # dropout has no weights: the same model otherwise
    ids = torch.randint(1, 50, (6, 9))
    torch.testing.assert_close(dropped.eval().classify(ids), plain.eval().classify(ids))
    torch.testing.assert_close(plain.train().classify(ids), plain.eval().classify(ids))
    seen = []
    dropped.embd_drop.register_forward_hook(lambda module, args, out: seen.append((args[0], out)))
    first, second = dropped.train().classify(ids), dropped.classify(ids)
    assert not torch.allclose(first, plain.classify(ids)) and not torch.allclose(first, second)
    embedded, out = seen[0]
    torch.testing.assert_close(embedded, plain.wte(ids))  # it drops the token embeddings themselves
    zeroed = (out == 0).float().mean().item()
    assert 0.4 < zeroed < 0.6  # about half the entries zeroed, the rest scaled by 1 / (1 - p)
    torch.testing.assert_close(out[out != 0], 2 * embedded[out != 0])


def test_textcnn_handles_sentences_shorter_than_its_widest_kernel():
    model = cnn_model(kernel_sizes=[2, 5]).eval()
    one = model.classify(torch.tensor([[7, 8]]))
    padded = model.classify(torch.tensor([[7, 8, 0, 0, 0, 0]]), pad_mask=torch.tensor([[1, 1, 0, 0, 0, 0]]).bool())
    torch.testing.assert_close(one, padded)


def test_a_wide_textcnn_is_a_zero_padded_convolution_of_each_text_alone():
    import torch.nn.functional as F

    model = cnn_model(batch_norm=False, kernel_sizes=[2, 4], wide_conv=True).eval()
    assert cnn_model(batch_norm=False).config.wide_conv is False  # off unless asked for
    ids = torch.randint(1, 50, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[1, 3:] = False
    mask[2, 1:] = False  # one token: shorter than both kernels
    got = model.features(ids, pad_mask=mask)
    for row in range(3):
        x = model.wte(ids[row][mask[row]]).T[None]  # (1, C, length): the text alone, no padding
        expected = torch.cat([F.relu(F.conv1d(x, conv.weight, conv.bias, padding=conv.kernel_size[0] - 1)).amax(-1)
                              for conv in model.convs], -1)  # windows over either end see zero vectors
        torch.testing.assert_close(got[row], expected[0])
    narrow = cnn_model(batch_norm=False, kernel_sizes=[2, 4])
    narrow.load_state_dict(model.state_dict())  # the same weights: only the windows differ
    assert not torch.allclose(narrow.eval().features(ids, pad_mask=mask), got)
    assert "zero-padded at both ends" in model.describe()


def test_textcnn_learns_a_separable_task_and_its_running_statistics_survive_save_and_load(tmp_path):
    train, test = write_csv(tmp_path / "train.csv", reviews(400, 1)), write_csv(tmp_path / "test.csv", reviews(100, 2))
    config = build_config({"model": {"arch": "textcnn", "n_embd": 32, "n_filters": 16, "block_size": 16,
                                     "dropout": 0.3},
                           "tokenizer": {"vocab_size": 200, "lowercase": True},
                           "data": {"train": str(train), "test": str(test)},
                           "train": {"max_steps": 150, "batch_size": 16, "lr": 3e-3, "warmup_steps": 10,
                                     "eval_every": 50, "save_every": 0},
                           "run": {"dir": str(tmp_path / "run")}})
    assert config.train.objective == "classify" and config.tokenizer.kind == "wordpiece"
    lm, result = train_from_config(config, progress=False)
    assert result.eval["val_accuracy"] >= 0.95, result.eval
    loaded = LM.from_pretrained(tmp_path / "run" / "final")
    for name, value in lm.model.state_dict().items():  # running_mean / running_var / num_batches_tracked too
        torch.testing.assert_close(loaded.model.state_dict()[name], value, atol=0, rtol=0)
    assert int(loaded.model.norms[0].num_batches_tracked) == 150
    texts = ["the film was wonderful and moving", "a dull and tedious plot"]
    assert [label for label, _ in loaded.classify(texts)] == ["pos", "neg"]
    assert loaded.classify(texts) == lm.classify(texts)
    assert loaded.evaluate(test)["accuracy"] >= 0.95


@pytest.mark.parametrize("overrides,message", [
    (["model.arch=\"textcnn\"", "model.kernel_sizes=[3, 40]", "model.block_size=32"], "wider than model.block_size=32"),
    (["model.arch=\"gpt\"", "model.bptt=16"], "model.bptt is a key of the baseline archs"),
    (["model.arch=\"gpt\"", "model.batch_norm=false"], "model.batch_norm is a key of the baseline archs"),
    (["model.arch=\"lstm\"", "model.n_head=8"], "arch 'lstm' does not use model.n_head"),
    (["model.arch=\"gru\"", "model.position=\"rope\"", "model.n_filters=10"], "model.position, model.n_filters"),
    (["model.arch=\"textcnn\"", "model.n_layer=3"], "arch 'textcnn' does not use model.n_layer"),
    (["model.arch=\"textcnn\"", "model.bptt=3"], "arch 'textcnn' does not use model.bptt"),
    (["model.arch=\"lstm\"", "model.bptt=500"], "model.bptt=500 is longer than model.block_size=128"),
    (["model.arch=\"textcnn\"", "train.objective=\"clm\""], "arch 'textcnn' is a classifier"),
    (["model.arch=\"textcnn\"", "model.kernel_sizes=[]"], "non-empty list of widths"),
    (["model.arch=\"gpt\"", "model.embd_dropout=0.2"], "model.embd_dropout is a key of the baseline archs"),
    (["model.arch=\"textcnn\"", "model.embd_dropout=1.0"], "embd_dropout"),
    (["model.arch=\"lstm\"", "model.wide_conv=true"], "arch 'lstm' does not use model.wide_conv"),
    (["model.arch=\"textcnn\"", "train.token_dropout=0.1", "train.objective=\"clm\""], "is a classifier"),
    (["model.arch=\"gpt\"", "train.token_dropout=0.1"], "objective 'clm' has none"),
])
def test_bad_baseline_configs_get_clear_errors(overrides, message, tmp_path, capsys):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
    config = tmp_path / "c.toml"
    config.write_text("[train]\nmax_steps = 1\n")
    assert main(["train", str(config), *overrides]) == 2
    assert message in capsys.readouterr().err


def test_a_textcnn_cannot_generate_and_says_so(tmp_path):
    lm = LM(cnn_model(), Tokenizer.train("char", ["abc"]), build_config({"model": {"arch": "textcnn"}}))
    with pytest.raises(ValueError, match="generate needs a decoder"):
        lm.generate("a")


def test_bench_arch_trains_each_arch_for_its_budget_then_tables_and_plots_and_reuses(tmp_path, corpus_file, capsys):
    out, runs = tmp_path / "arch.png", tmp_path / "runs"
    argv = ["bench-arch", "--data", str(corpus_file), "--minutes", "0.03", "--archs", "lstm,gpt", "--out", str(out),
            "--run-dir", str(runs), "--block-size", "16", "--batch-size", "8", "--set", "lstm:model.n_embd=64",
            "--set", "gpt:model.n_embd=32", "--set", "train.eval_steps=2", "--quiet"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "| lstm |" in table and "| gpt |" in table
    assert out.read_bytes().startswith(b"\x89PNG")
    results = json.loads(out.with_suffix(".json").read_text())
    assert [r["arch"] for r in results] == ["lstm", "gpt"]
    for r in results:
        losses = [loss for _, loss, _ in r["curve"]]
        assert len(losses) >= 5 and r["best_val_loss"] == min(losses) and losses[-1] < losses[0]
        assert r["settings"]["model"]["n_embd"] == (64 if r["arch"] == "lstm" else 32)
        times = [t for t, _, _ in r["curve"]]
        assert times == sorted(times) and 0 < times[-1]
    saved = (runs / "lstm" / "bench.json").read_text()
    assert main(argv) == 0  # same settings: reused, not trained again
    assert "reusing" in capsys.readouterr().err and (runs / "lstm" / "bench.json").read_text() == saved
    assert main([*argv[:-1], "--set", "lstm:model.n_layer=1"]) == 2  # other settings over a kept run
    assert "holds a run with other settings" in capsys.readouterr().err
    assert main(["bench-arch", "--data", str(corpus_file), "--archs", "lstm,transformer-xl"]) == 2


@pytest.mark.parametrize("misjudged", [20.0, 0.05])
def test_bench_arch_trains_for_its_whole_budget_even_when_the_first_speed_estimate_is_wrong(
        tmp_path, corpus_file, monkeypatch, misjudged):
    # the calibration's step time is off 20x either way; the budget clock must still fill the budget, and end
    # the schedule (its last step at min_lr, with a final evaluation) when the time is up
    from lmforge.app.workflows import bench_arch as bench

    real = bench._seconds_per_step
    monkeypatch.setattr(bench, "_seconds_per_step", lambda config: real(config) * misjudged)
    config = bench.arch_config("gpt", str(corpus_file), 16, 8, tmp_path, ["model.n_embd=32", "train.eval_steps=2"])
    budget = 4.0
    result = bench.run_arch(config, budget / 60, progress=False)
    assert 0.85 * budget <= result["train_seconds"] <= 1.2 * budget
    assert result["curve"][-1][2] == result["steps"] and 6 <= len(result["curve"]) <= 30
    records = [json.loads(line) for line in (tmp_path / "gpt" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records if "lr" in r]
    assert lrs[-1] == pytest.approx(config.train.min_lr, rel=0.05)
    assert max(lrs) == pytest.approx(config.train.lr, rel=0.05)


def test_beam_search_and_continuous_batching_refuse_a_recurrent_model_clearly(tokenizer):
    # both reorder or align KV-cache rows, which a recurrent state does not have
    from lmforge.infer.batching import BatchDecoder
    from lmforge.infer.beam import beam_search

    model = rnn_model("lstm", vocab_size=tokenizer.vocab_size)
    with pytest.raises(ValueError, match="beam search needs a Transformer decoder.*'lstm'"):
        beam_search(model, tokenizer.encode("the cat"), num_beams=2, max_new_tokens=3)
    with pytest.raises(ValueError, match="continuous batching.*'lstm'"):
        BatchDecoder(model)
