"""Trainer: loss falls, resume is exact, early stopping, checkpoints and logs."""
import json

import pytest
import torch
from safetensors.torch import load_file

from lmforge import LM
from lmforge.config import TrainConfig
from lmforge.train.optim import learning_rate, parameter_groups

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32)
FAST = dict(batch_size=8, lr=3e-3, min_lr=3e-4, warmup_steps=10, eval_every=0, log_every=1)


def test_loss_falls_well_below_its_start(corpus_file):
    lm = LM.new("gpt", corpus=corpus_file, **TINY)
    losses = []
    lm.fit(corpus_file, max_steps=200, progress=False, hooks=[lambda s, r: losses.append(r["loss"])], **FAST)
    start, end = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
    assert start > 2.5 and end < 0.55 * start, (start, end)


class Stop(Exception):
    pass


def _weights(lm):
    return {k: v.clone() for k, v in lm.model.state_dict().items()}


@pytest.mark.parametrize("arch,dropout", [("gpt", 0.1), ("llama", 0.0), ("bert", 0.1)])
def test_a_resumed_run_ends_exactly_like_an_uninterrupted_one(tmp_path, corpus_file, arch, dropout):
    options = dict(max_steps=30, save_every=10, progress=False, **FAST)
    # one tokenizer for all three runs (trained once: quicker)
    LM.new(arch, corpus=corpus_file, **TINY).tokenizer.save(tmp_path / "tokenizer.json")
    tiny_tok = dict(TINY, tokenizer_path=str(tmp_path / "tokenizer.json"))
    whole = LM.new(arch, corpus=corpus_file, dropout=dropout, **tiny_tok)
    whole_losses = []
    whole.fit(corpus_file, run_dir=tmp_path / "whole", hooks=[lambda s, r: whole_losses.append(r["loss"])], **options)

    def kill_at_15(step, record):
        if step == 15:
            raise Stop  # dies between checkpoints, as a killed process would

    broken = LM.new(arch, corpus=corpus_file, dropout=dropout, **tiny_tok)
    with pytest.raises(Stop):
        broken.fit(corpus_file, run_dir=tmp_path / "broken", hooks=[kill_at_15], **options)
    resumed = LM.new(arch, corpus=corpus_file, dropout=dropout, **tiny_tok)
    resumed_losses = []
    resumed.fit(corpus_file, run_dir=tmp_path / "broken", resume=True,
                hooks=[lambda s, r: resumed_losses.append(r["loss"])], **options)
    assert resumed_losses == whole_losses[10:]
    for name, value in _weights(whole).items():
        torch.testing.assert_close(_weights(resumed)[name], value, atol=0, rtol=0)
    logged = [json.loads(line) for line in (tmp_path / "broken" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == list(range(1, 31))  # replayed steps are not logged twice


def test_checkpoints_are_complete_and_only_the_last_ones_kept(tmp_path, corpus_file):
    lm = LM.new("gpt", corpus=corpus_file, **TINY)
    run = tmp_path / "run"
    lm.fit(corpus_file, run_dir=run, max_steps=40, save_every=10, keep_last=2, progress=False, **FAST)
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["step-30", "step-40"]  # no temp directories left behind either
    for name in names:
        files = {p.name for p in (run / "checkpoints" / name).iterdir()}
        assert {"model.safetensors", "optimizer.safetensors", "trainer_state.json", "config.json", "tokenizer.json"} <= files
    state = load_file(str(run / "checkpoints" / "step-40" / "optimizer.safetensors"))
    assert "rng.cpu" in state and any(k.endswith("exp_avg") for k in state)
    assert (run / "config.toml").is_file() and (run / "final" / "README.md").is_file()
    assert (run / "loss.png").read_bytes().startswith(b"\x89PNG")


def test_save_and_load_give_identical_logits(tmp_path, corpus_file):
    lm = LM.new("llama", corpus=corpus_file, n_kv_head=1, **TINY)
    lm.fit(corpus_file, max_steps=5, progress=False, **FAST)
    lm.save(tmp_path / "model")
    again = LM.from_pretrained(tmp_path / "model")
    ids = torch.tensor([lm.tokenizer.encode("the cat sees the blue sea")])
    torch.testing.assert_close(again.model(ids), lm.model(ids), atol=0, rtol=0)
    assert again.tokenizer.encode("the dog") == lm.tokenizer.encode("the dog")
    assert again.config.model == lm.config.model


def test_early_stopping_stops_and_keeps_the_best_weights(tmp_path, corpus_file):
    lm = LM.new("gpt", corpus=corpus_file, **TINY)
    evals = []
    # a learning rate this high makes validation loss climb after the first evaluations
    result = lm.fit(corpus_file, run_dir=tmp_path / "run", max_steps=400, batch_size=8, lr=0.05, min_lr=0.05,
                    warmup_steps=0, grad_clip=0, eval_every=5, eval_steps=2, patience=2, progress=False,
                    hooks=[lambda s, r: evals.append(r["val_loss"]) if "val_loss" in r else None])
    assert result.stopped_early and result.step < 400
    assert result.best == min(evals)
    from lmforge.tasks import make_task
    task, _ = make_task(lm.bundle, lm.config.train, lm.config.data, tmp_path / "run")
    assert task.evaluate(lm.model, 2, 8, "cpu")["val_loss"] == pytest.approx(result.best, rel=1e-5)
    saved = LM.from_pretrained(tmp_path / "run" / "final")
    ids = torch.tensor([lm.tokenizer.encode("the cat")])
    torch.testing.assert_close(saved.model(ids), lm.model(ids), atol=0, rtol=0)


def test_weight_decay_only_on_matrices(corpus_file):
    lm = LM.new("gpt", corpus=corpus_file, **TINY)
    groups = parameter_groups(lm.model, TrainConfig(weight_decay=0.1))
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in lm.model.named_parameters():
        assert (id(p) in decayed) == (p.dim() >= 2), name


def test_schedule_warms_up_then_decays_to_min_lr():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=100)
    rates = [learning_rate(s, cfg) for s in range(100)]
    assert rates[0] < rates[5] < rates[10] == pytest.approx(1e-3, rel=0.01)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:])) and rates[-1] == pytest.approx(1e-4, rel=0.01)


def test_a_diverging_loss_stops_with_advice(corpus_file):
    lm = LM.new("gpt", corpus=corpus_file, **TINY)
    with torch.no_grad():
        lm.model.wte.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="lower train.lr"):
        lm.fit(corpus_file, max_steps=3, progress=False, **FAST)
