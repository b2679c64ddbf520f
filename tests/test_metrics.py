"""Metrics: TensorBoard events read back by TensorBoard's own reader, per-layer gradient norms, `lmforge plot`,
and reduced precision (bfloat16, float16 with a gradient scaler) training as well as float32."""
import json
import math

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lmforge import LM
from lmforge.cli import main
from lmforge.train.health import gradient_warnings

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32)
FAST = dict(batch_size=8, lr=3e-3, min_lr=3e-4, warmup_steps=5, eval_every=10, eval_steps=2, log_every=1)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from tests.conftest import small_corpus

    root = tmp_path_factory.mktemp("metrics")
    corpus = root / "corpus.txt"
    corpus.write_text(small_corpus())
    lm = LM.new("gpt", corpus=corpus, **TINY)
    lm.fit(corpus, run_dir=root / "run", max_steps=20, grad_norms_every=5, progress=False, **FAST)
    return root / "run"


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_reads_back_the_logged_metrics(run):
    events = EventAccumulator(str(run))
    events.Reload()
    records = _records(run)
    logged = {r["step"]: r["loss"] for r in records if "lr" in r}
    read = {e.step: e.value for e in events.Scalars("train/loss")}
    assert read.keys() == logged.keys() and all(read[s] == pytest.approx(logged[s], rel=1e-6) for s in logged)
    val = {e.step: e.value for e in events.Scalars("val/loss")}
    assert val == pytest.approx({r["step"]: r["val_loss"] for r in records if "val_loss" in r}, rel=1e-6)
    assert "grad_norms/h.0" in events.Tags()["scalars"]


def test_per_layer_gradient_norms_add_up_to_the_total(run):
    records = _records(run)
    for step in (5, 10, 15, 20):
        layers = next(r for r in records if r["step"] == step and "grad_norm/h.1" in r)
        total = next(r for r in records if r["step"] == step and "lr" in r)["grad_norm"]  # before clipping
        norms = [v for k, v in layers.items() if k.startswith("grad_norm/")]
        assert {"grad_norm/wte", "grad_norm/h.0", "grad_norm/h.1"} <= layers.keys()
        assert math.sqrt(sum(v * v for v in norms)) == pytest.approx(total, rel=1e-4)


def test_vanishing_and_exploding_gradients_are_named():
    warnings = gradient_warnings({"h.0": 3e-9, "h.1": 0.5, "h.2": 250.0}, clip=1.0, step=7)
    assert len(warnings) == 2
    assert "layer h.0 vanish" in warnings[0] and "layer h.2 explode" in warnings[1] and "step 7" in warnings[0]


def test_plot_overlays_runs_into_a_png(run, tmp_path, capsys):
    out = tmp_path / "both.png"
    assert main(["plot", str(run), str(run), "--out", str(out)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG") and out.stat().st_size > 20000
    assert main(["plot", str(run)]) == 0 and (run / "curves.png").is_file()
    assert main(["plot", str(tmp_path / "nothing")]) == 2
    assert "has no metrics.jsonl" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_reduced_precision_ends_within_a_few_percent_of_float32(corpus_file, dtype):
    losses = {}
    for kind in ("float32", dtype):
        lm = LM.new("gpt", corpus=corpus_file, **TINY)
        seen = []
        lm.fit(corpus_file, max_steps=60, dtype=kind, progress=False, hooks=[lambda s, r: seen.append(r.get("loss"))],
               **{**FAST, "eval_every": 0})
        losses[kind] = sum(seen[-10:]) / 10
    assert losses[dtype] == pytest.approx(losses["float32"], rel=0.05), losses
    assert losses["float32"] < 2.0  # it learned (the first loss is ~3.3)
