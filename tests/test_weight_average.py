"""train.ema: the weight average follows its formula, leaves the optimization alone, is what is evaluated and
saved, and resumes bitwise."""
import json

import pytest
import torch
from safetensors.torch import load_file

from lmforge import LM
from lmforge.config import ConfigError, load_config
from lmforge.train.average import WeightAverage

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32)
FAST = dict(batch_size=8, lr=3e-3, min_lr=3e-4, warmup_steps=10, log_every=1, eval_every=10, eval_steps=2,
            max_steps=30, save_every=10, progress=False)


def test_the_average_follows_its_formula_and_is_applied_only_inside_its_block():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(model, decay=0.5)
    assert average.names == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"]
    expected = model[0].weight.detach().clone()
    for step in range(12):
        with torch.no_grad():
            model[0].weight.add_(torch.randn_like(model[0].weight))
        average.update(step)
        decay = min(0.5, (1 + step) / (10 + step))  # low at first, then the decay asked for
        expected = decay * expected + (1 - decay) * model[0].weight.detach()
    raw = model[0].weight.detach().clone()
    with average.applied():
        torch.testing.assert_close(model[0].weight.detach(), expected)
    assert torch.equal(model[0].weight.detach(), raw)  # its own weights back after the block
    average.keep()
    torch.testing.assert_close(model[0].weight.detach(), expected)


def _fit(corpus, tmp_path, name, hooks=(), resume=False, **extra):
    lm = LM.new("gpt", corpus=corpus, tokenizer_path=str(tmp_path / "tokenizer.json"), **TINY)
    lm.fit(corpus, run_dir=tmp_path / name, hooks=list(hooks), resume=resume, **FAST, **extra)
    return lm


def test_a_run_with_ema_steps_the_same_weights_and_evaluates_saves_and_resumes_the_average(tmp_path, corpus_file):
    LM.new("gpt", corpus=corpus_file, **TINY).tokenizer.save(tmp_path / "tokenizer.json")
    plain = _fit(corpus_file, tmp_path, "plain")
    averaged = _fit(corpus_file, tmp_path, "ema", ema=0.9)
    # the optimizer steps the raw weights exactly as without the average (kept in every checkpoint)
    raw = load_file(str(tmp_path / "ema" / "checkpoints" / "step-30" / "model.safetensors"))
    for name, value in load_file(str(tmp_path / "plain" / "checkpoints" / "step-30" / "model.safetensors")).items():
        assert torch.equal(raw[name], value), name
    # ... and the run ends on the average, which the checkpoint holds beside the optimizer state
    state = load_file(str(tmp_path / "ema" / "checkpoints" / "step-30" / "optimizer.safetensors"))
    final = load_file(str(tmp_path / "ema" / "final" / "model.safetensors"))
    assert final.keys() == raw.keys() and all(not torch.equal(final[name], raw[name]) for name in final)
    for name, value in averaged.model.named_parameters():
        assert torch.equal(state["ema." + name], value.detach())
        assert name not in final or torch.equal(final[name], value.detach())  # a tied weight is saved once
    # the evaluation logged is the average's
    logged = [json.loads(line) for line in (tmp_path / "ema" / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r["val_loss"] for r in logged if "val_loss" in r}
    plain_evals = [json.loads(line) for line in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    assert evals[30] != [r["val_loss"] for r in plain_evals if "val_loss" in r][-1]
    from lmforge.tasks import make_task
    task, _ = make_task(averaged.bundle, averaged.config.train, averaged.config.data, tmp_path / "ema")
    assert task.evaluate(averaged.model, 2, 8, "cpu")["val_loss"] == pytest.approx(evals[30], rel=1e-5)

    class Stop(Exception):
        pass

    def kill_at_15(step, record):
        if step == 15:
            raise Stop

    with pytest.raises(Stop):
        _fit(corpus_file, tmp_path, "broken", hooks=[kill_at_15], ema=0.9)
    resumed = _fit(corpus_file, tmp_path, "broken", resume=True, ema=0.9)
    for name, value in averaged.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    with pytest.raises(ValueError, match="written with train.ema=0"):
        _fit(corpus_file, tmp_path, "plain", resume=tmp_path / "plain" / "checkpoints" / "step-20", ema=0.9)


def test_ema_settings_are_checked():
    with pytest.raises(ConfigError, match="train.ema is not available with train.parallel=fsdp"):
        load_config(None, ["train.ema=0.999", 'train.parallel="fsdp"'])
    with pytest.raises(ConfigError, match="train.ema"):
        load_config(None, ["train.ema=1.0"])
