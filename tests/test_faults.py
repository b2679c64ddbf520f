"""Faults: damaged checkpoints are named and skipped, NaN steps are skipped and counted, divergence stops
with an error that keeps the last good checkpoint, a torn metrics line is tolerated, resume before any checkpoint."""
import json
import math

import pytest
import torch

from lmforge import LM
from lmforge.bundle import Bundle
from lmforge.cli import main
from lmforge.files import DamagedFileError
from lmforge.modeldir import ModelDirError, load_model_dir, save_model_dir
from lmforge.tasks import make_task
from lmforge.train.checkpoint import check_checkpoint, find_resumable
from lmforge.train.trainer import RunDir, TrainingDiverged, train

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32)
FAST = dict(batch_size=8, lr=3e-3, min_lr=3e-4, warmup_steps=5, eval_every=0, log_every=1)


def _weights(lm):
    return {k: v.clone() for k, v in lm.model.state_dict().items()}


def _fit(corpus, run, **options):
    lm = LM.new("gpt", corpus=corpus, **TINY)
    settings = dict(max_steps=20, save_every=10, keep_last=3, progress=False, **FAST)
    settings.update(options)
    lm.fit(corpus, run_dir=run, **settings)
    return lm


def test_a_truncated_newest_checkpoint_is_named_and_resume_falls_back_to_the_previous(tmp_path, corpus_file):
    whole = _fit(corpus_file, tmp_path / "whole", max_steps=30)

    def killed_at_25(step, record):
        if step == 25:
            raise KeyError("killed")  # not KeyboardInterrupt: no checkpoint on the way out, as with kill -9

    with pytest.raises(KeyError):
        _fit(corpus_file, tmp_path / "run", max_steps=30, hooks=[killed_at_25])
    damaged = tmp_path / "run" / "checkpoints" / "step-20" / "optimizer.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:-100])
    with pytest.raises(DamagedFileError, match="step-20.*optimizer.safetensors.*truncated"):
        check_checkpoint(damaged.parent)
    resumed = LM.new("gpt", corpus=corpus_file, **TINY)
    with pytest.warns(UserWarning, match=r"optimizer.safetensors.*resuming from '.*step-10'"):
        resumed.fit(corpus_file, run_dir=tmp_path / "run", resume=True, max_steps=30, save_every=10, keep_last=3,
                    progress=False, **FAST)
    for name, value in _weights(whole).items():  # from step 10 it retraced the uninterrupted run exactly
        torch.testing.assert_close(_weights(resumed)[name], value, atol=0, rtol=0)


def test_a_flipped_byte_is_detected_in_checkpoints_and_model_directories(tmp_path, corpus_file):
    lm = _fit(corpus_file, tmp_path / "run", max_steps=10)
    for directory in (tmp_path / "run" / "checkpoints" / "step-10", tmp_path / "run" / "final"):
        weights = directory / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0x01
        weights.write_bytes(bytes(data))
        with pytest.raises(ModelDirError, match="model.safetensors.*checksum"):
            load_model_dir(directory)
    with pytest.raises(DamagedFileError, match="model.safetensors.*checksum"):
        check_checkpoint(tmp_path / "run" / "checkpoints" / "step-10")
    assert lm.save(tmp_path / "again") and load_model_dir(tmp_path / "again")  # an intact one loads


def test_a_corrupt_trainer_state_is_named_even_without_a_manifest(tmp_path, corpus_file):
    _fit(corpus_file, tmp_path / "run")
    newest = tmp_path / "run" / "checkpoints" / "step-20"
    (newest / "manifest.json").unlink()  # as a checkpoint written before manifests existed
    (newest / "trainer_state.json").write_text('{"step": 20, "optim')
    with pytest.warns(UserWarning, match="trainer_state.json"):
        assert find_resumable(tmp_path / "run" / "checkpoints").name == "step-10"


def test_a_torn_metrics_line_is_tolerated_and_the_file_rewritten(tmp_path, corpus_file):
    _fit(corpus_file, tmp_path / "run")
    metrics = tmp_path / "run" / "metrics.jsonl"
    with open(metrics, "a") as handle:
        handle.write('{"step": 21, "loss": 1.2')  # a crash in the middle of an append
    resumed = LM.new("gpt", corpus=corpus_file, **TINY)
    resumed.fit(corpus_file, run_dir=tmp_path / "run", resume=True, max_steps=25, save_every=10, progress=False, **FAST)
    records = [json.loads(line) for line in metrics.read_text().splitlines()]  # every line parses
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 26))


class Poisoned:
    """A task whose loss becomes NaN at the given (1-based) steps: an injected bad batch."""

    def __init__(self, task, steps):
        self.task, self.steps = task, set(steps)

    def __getattr__(self, name):
        return getattr(self.task, name)

    def train_batch(self, step, micro, batch_size):
        return {**self.task.train_batch(step, micro, batch_size), "poison": step + 1 in self.steps}

    def loss(self, model, batch):
        loss, extra = self.task.loss(model, {k: v for k, v in batch.items() if k != "poison"})
        return (loss * math.nan if batch["poison"] else loss), extra


def _run_poisoned(lm, run, steps, max_steps, resume=False, **options):
    task = Poisoned(make_task(lm.bundle, lm.config.train, lm.config.data, run)[0], steps)
    export = RunDir(run, lambda model, path: save_model_dir(path, Bundle(model, lm.tokenizer, lm.config.model)))
    cfg = lm.config.train.model_copy(update=dict(max_steps=max_steps, save_every=5, keep_last=5, **FAST, **options))
    return train(lm.model, task, cfg, export, resume=resume, progress=False)


def test_a_nan_step_is_skipped_and_counted_and_k_in_a_row_abort_naming_the_checkpoint(tmp_path, corpus_file):
    lm = LM.new("gpt", corpus=corpus_file, **TINY)
    run = tmp_path / "run"
    result = _run_poisoned(lm, run, {7}, 8, grad_norms_every=0)
    assert result.skipped_steps == 1 and math.isfinite(result.train_loss)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("skipped_step")] == [7]
    assert not any(r["step"] == 7 and "loss" in r for r in records)  # the bad loss never reaches the log
    assert all(torch.isfinite(v).all() for v in _weights(lm).values())

    lm = LM.new("gpt", corpus=corpus_file, **TINY)
    run = tmp_path / "abort"
    with pytest.raises(TrainingDiverged, match=r"3 steps in a row.*step 8.*last good checkpoint is '.*step-5'"):
        _run_poisoned(lm, run, {6, 7, 8}, 20, max_bad_steps=3)
    assert find_resumable(run / "checkpoints").name == "step-5"
    resumed = LM.from_pretrained(run / "checkpoints" / "step-5")
    result = _run_poisoned(resumed, run, set(), 12, resume=True)  # the bad batches are gone: it carries on
    assert result.step == 12 and result.skipped_steps == 0 and math.isfinite(result.train_loss)


def test_divergence_from_the_cli_is_an_error_without_traceback_and_keeps_the_checkpoint(tmp_path, corpus_file, capsys):
    run = tmp_path / "run"
    common = [f"data.paths=['{corpus_file}']", "model.n_layer=1", "model.n_embd=32", "model.n_head=2",
              "model.block_size=32", "train.batch_size=4", "train.eval_every=0", "train.save_every=5",
              "train.warmup_steps=0", f"run.dir='{run}'"]
    assert main(["train", "configs/gpt-tiny.toml", *common, "train.lr=1e-3", "train.max_steps=5", "--quiet"]) == 0
    capsys.readouterr()
    status = main(["train", "configs/gpt-tiny.toml", *common, "train.lr=1e10", "train.max_steps=40",
                   "train.grad_clip=0", "--resume", str(run)])
    err = capsys.readouterr().err
    assert status == 2 and "error: training diverged" in err and "Traceback" not in err
    assert "lower train.lr" in err and "step-5" in err, err
    assert find_resumable(run / "checkpoints").name == "step-5"
    load_model_dir(run / "checkpoints" / "step-5")  # intact and loadable


def test_resume_before_the_first_checkpoint_starts_from_step_zero_and_says_so(tmp_path, corpus_file, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0, "lr": 0.1}\n{"step": 2, "lo')  # killed early
    args = ["train", "configs/gpt-tiny.toml", f"data.paths=['{corpus_file}']", "model.n_layer=1", "model.n_embd=32",
            "model.n_head=2", "model.block_size=32", "train.batch_size=4", "train.eval_every=0",
            "train.max_steps=3", "train.log_every=1", f"run.dir='{run}'"]
    assert main([*args, "--resume", str(run)]) == 0
    assert "no complete checkpoint" in capsys.readouterr().err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3] and records[0]["loss"] != 9.0
