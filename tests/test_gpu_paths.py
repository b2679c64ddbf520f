"""The GPU fast paths and their plain twins (issue 23): chunked cross-entropy equals the plain loss (loss,
gradients and weights after N steps), the deferred NaN guard equals the per-step one, the static-cache decoder
gives today's greedy tokens, devices and dtypes are checked up front, generation is sized before it allocates.
The CUDA-only paths (graph capture, pinned prefetch, TF32) are tested where a GPU is present and skip elsewhere."""
import json
import math
import traceback
from unittest import mock

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lmforge import LM
from lmforge.cli import main
from lmforge.devices import check_device, check_dtype
from lmforge.errors import ConfigError
from lmforge.infer.generate import SamplingConfig, check_generation_fits, generate
from lmforge.tasks import make_task
from lmforge.tasks.chunked import chunked_cross_entropy, float32_cross_entropy, plain_cross_entropy
from lmforge.tasks.lm import CausalLMTask
from lmforge.train.trainer import train

from test_faults import Poisoned

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32)
FAST = dict(batch_size=8, lr=3e-3, min_lr=3e-4, warmup_steps=3, eval_every=0, log_every=4, save_every=0,
            grad_norms_every=0, tensorboard=False)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (this path runs only there)")


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_chunked_cross_entropy_equals_the_plain_loss_and_its_gradients(smoothing):
    torch.manual_seed(0)
    hidden = torch.randn(300, 24, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(97, 24, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 97, (300,))
    targets[[3, 77]] = -100  # ignored rows count in neither the loss nor its mean
    ours = chunked_cross_entropy(hidden, weight, targets, label_smoothing=smoothing, block_elements=97 * 64)
    ours_grads = torch.autograd.grad(ours * 1.5, (hidden, weight))
    plain = plain_cross_entropy(hidden, weight, targets, label_smoothing=smoothing)
    plain_grads = torch.autograd.grad(plain * 1.5, (hidden, weight))
    assert abs(ours.item() - plain.item()) < 1e-10
    for a, b in zip(ours_grads, plain_grads):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)
    with torch.no_grad():  # evaluation: the loss alone, no gradients made
        assert abs(chunked_cross_entropy(hidden, weight, targets, label_smoothing=smoothing).item()
                   - plain.item()) < 1e-10


def test_chunked_cross_entropy_under_bf16_autocast_matches_the_plain_one():
    torch.manual_seed(0)
    hidden, weight = torch.randn(64, 32, requires_grad=True), torch.randn(50, 32, requires_grad=True)
    targets = torch.randint(0, 50, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = chunked_cross_entropy(hidden, weight, targets, block_elements=50 * 16)
        plain = plain_cross_entropy(hidden, weight, targets)
    grads = torch.autograd.grad(ours, (hidden, weight))
    assert ours.dtype == torch.float32 and abs(ours.item() - plain.item()) < 1e-3
    assert grads[0].dtype == torch.float32 and grads[1].dtype == torch.float32


def _train(corpus_file, tmp_path, steps=12, chunked=True, task_wrapper=None, dtype=torch.float32, **options):
    lm = LM.new("gpt", corpus=corpus_file, **TINY)
    lm.model.to(dtype)
    task, _ = make_task(lm.bundle, lm.config.train, lm.config.data, tmp_path, progress=False)
    task.chunked = chunked
    if task_wrapper is not None:
        task = task_wrapper(task)
    cfg = lm.config.train.model_copy(update=dict(max_steps=steps, **{**FAST, **options}))
    records = []
    result = train(lm.model, task, cfg, None, progress=False, hooks=[lambda step, r: records.append(r)])
    return lm, result, records


def test_training_with_the_chunked_loss_gives_the_plain_losses_and_weights(tmp_path, corpus_file):
    _, _, plain_log = _train(corpus_file, tmp_path / "a", chunked=False)
    _, _, log = _train(corpus_file, tmp_path / "b", chunked=True)
    assert [r["loss"] for r in log] == pytest.approx([r["loss"] for r in plain_log], abs=1e-6)
    assert log[-1]["loss"] < log[0]["loss"]  # it learns
    # weights: in float64, where AdamW's normalised steps cannot blow float32 rounding of near-zero gradients
    # (summed in another order) up to 1e-6
    plain, _, _ = _train(corpus_file, tmp_path / "c", chunked=False, dtype=torch.float64)
    ours, _, _ = _train(corpus_file, tmp_path / "d", chunked=True, dtype=torch.float64)
    assert isinstance(make_task(ours.bundle, ours.config.train, ours.config.data, tmp_path / "e")[0], CausalLMTask)
    reference = plain.model.state_dict()
    for name, value in ours.model.state_dict().items():
        assert torch.allclose(value, reference[name], atol=1e-6, rtol=0), name


def test_compiled_training_gives_the_eager_losses(tmp_path, corpus_file):
    """train.compile (inductor's C++ backend on CPU; reduce-overhead, which only adds CUDA graphs on a GPU)
    follows the eager run's losses; a mode torch.compile does not know is refused by the config."""
    from torch._dynamo.utils import counters

    _, _, eager = _train(corpus_file, tmp_path / "a", steps=8, onednn_linear=False)
    counters.clear()
    _, _, compiled = _train(corpus_file, tmp_path / "b", steps=8, compile=True, compile_mode="reduce-overhead")
    assert counters["stats"]["unique_graphs"] >= 1  # it compiled (a failure would fall back to eager)
    assert [r["loss"] for r in compiled] == pytest.approx([r["loss"] for r in eager], abs=1e-4)
    with pytest.raises(ValueError, match="max-autotune-no-cudagraphs"):
        LM.new("gpt", **TINY).config.train.model_validate({"compile_mode": "fastest"})


def test_the_deferred_nan_guard_skips_the_same_steps_and_ends_with_the_same_weights(tmp_path, corpus_file):
    runs = {}
    for mode in ("step", "log"):
        lm, result, records = _train(corpus_file, tmp_path / mode, steps=12, nan_check=mode,
                                     task_wrapper=lambda task: Poisoned(task, {6}))
        runs[mode] = (lm.model.state_dict(), result, records)
    (step_weights, step_result, step_log), (log_weights, log_result, log_log) = runs["step"], runs["log"]
    assert step_result.skipped_steps == log_result.skipped_steps == 1
    assert [r["loss"] for r in log_log] == pytest.approx([r["loss"] for r in step_log], abs=1e-7)
    assert all(math.isfinite(r["loss"]) for r in log_log)
    for name, value in log_weights.items():
        assert torch.equal(value, step_weights[name]), name


def test_the_deferred_guard_aborts_after_max_bad_steps_naming_the_step(tmp_path, corpus_file):
    from lmforge.train.trainer import TrainingDiverged

    with pytest.raises(TrainingDiverged, match=r"3 steps in a row.*at step 7"):
        _train(corpus_file, tmp_path, steps=12, nan_check="log", max_bad_steps=3,
               task_wrapper=lambda task: Poisoned(task, {5, 6, 7}))


class ReadBacks(TorchDispatchMode):
    """Records each read of a tensor's value by the host (item, int(), bool(), tolist) with the trainer's frames
    above it: on a GPU each one makes the host wait until the device has finished all queued work."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def note(self):
        self.seen.append([frame.name for frame in traceback.extract_stack() if "lmforge" in frame.filename])

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in ("_local_scalar_dense", "is_nonzero", "equal", "nonzero"):
            self.note()
        return func(*args, **(kwargs or {}))


def _fit_reading_back(lm, data, objective):
    mode, tolist = ReadBacks(), torch.Tensor.tolist

    def noted_tolist(tensor):  # tolist reads the values without passing through the dispatcher
        mode.note()
        return tolist(tensor)

    with mode, mock.patch.object(torch.Tensor, "tolist", noted_tolist):
        lm.fit(data, objective=objective, max_steps=12, batch_size=4, eval_every=0, log_every=6, save_every=0,
               grad_norms_every=0, nan_check="log", progress=False)
    return mode.seen


@pytest.mark.parametrize("objective", ["clm", "mlm", "sft", "classify"])
def test_training_steps_read_nothing_back_from_the_device_between_log_steps(tmp_path, corpus_file, objective):
    """With the deferred guard (the CUDA default), no host read-back happens inside a training step: making a
    batch on the host (before it is copied) may read its own values, the log, checkpoint and end steps read once."""
    import test_classify
    import test_sft

    if objective == "sft":
        lm = test_sft.tiny_lm(tmp_path)
        data = test_sft.write_jsonl(tmp_path / "chat.jsonl", test_sft.as_rows("messages") * 8)
    elif objective == "classify":
        data = test_classify.write_csv(tmp_path / "train.csv", test_classify.reviews(60, 0))
        lm = LM.new("bert", tokenizer="wordpiece", vocab_size=120, corpus=data, **TINY)
    else:
        lm, data = LM.new("bert" if objective == "mlm" else "gpt", corpus=corpus_file, **TINY), corpus_file
    seen = _fit_reading_back(lm, data, objective)
    in_steps = [frames for frames in seen if "micro_steps" in frames or "update" in frames]
    assert [frames for frames in in_steps if "_load" not in frames] == []
    assert len([frames for frames in seen if "log_window" in frames]) == 2 * 3  # steps 1, 6 and 12: values, norm


def _tiny_lm(corpus_file, arch="gpt", **extra):
    lm = LM.new(arch, corpus=corpus_file, **{**TINY, **extra})
    lm.fit(corpus_file, max_steps=25, batch_size=8, eval_every=0, progress=False, lr=3e-3, warmup_steps=2)
    return lm


@pytest.mark.parametrize("arch", ["gpt", "llama"])
def test_static_cache_decoding_gives_the_same_greedy_tokens(corpus_file, arch):
    lm = _tiny_lm(corpus_file, arch, **({"n_kv_head": 1} if arch == "llama" else {}))
    sampling = SamplingConfig(max_new_tokens=70, temperature=0, ignore_eos=True)  # past block_size 32: it slides
    for prompts in (["The "], ["The ", "a longer prompt here", "x"]):
        plain = generate(lm.model, lm.tokenizer, prompts, sampling, static=False)
        static = generate(lm.model, lm.tokenizer, prompts, sampling, static=True)
        assert static == plain and any(len(text) > 0 for text in static)
    sampled = SamplingConfig(max_new_tokens=20, temperature=0.8, top_k=5, seed=3, ignore_eos=True)
    assert generate(lm.model, lm.tokenizer, ["The "], sampled, static=True) == \
        generate(lm.model, lm.tokenizer, ["The "], sampled, static=False)


def test_the_compiled_static_step_gives_the_plain_greedy_tokens(corpus_file):
    lm = _tiny_lm(corpus_file)  # torch.compile of the fixed-shape step (inductor's C++ backend on CPU)
    sampling = SamplingConfig(max_new_tokens=40, temperature=0, ignore_eos=True)
    for prompts in (["The "], ["The ", "a longer prompt here"]):
        plain = generate(lm.model, lm.tokenizer, prompts, sampling, static=False)
        assert generate(lm.model, lm.tokenizer, prompts, sampling, static=True, compile=True) == plain


def test_a_compiler_failure_leaves_decoding_eager_and_compiled_steps_use_no_packed_weights(corpus_file,
                                                                                           monkeypatch):
    """generate(compile=True) where torch.compile fails (no C++ compiler, an operation it cannot lower) warns once
    and decodes the same tokens eagerly; and a compiled step is given plain weights, since inductor cannot lower
    oneDNN's packed ones (SmolLM2's head: a LoweringException before)."""
    from lmforge.infer import generate as generation

    lm = _tiny_lm(corpus_file)
    sampling = SamplingConfig(max_new_tokens=12, temperature=0, ignore_eos=True)
    plain = generate(lm.model, lm.tokenizer, ["The "], sampling, static=False)
    calls = []

    def broken_compiler(step, **options):
        def compiled():
            calls.append(1)
            raise RuntimeError("InductorError: no working C++ compiler found")
        return compiled

    packing = []
    real_packing = generation.packed_linears
    monkeypatch.setattr(generation.torch, "compile", broken_compiler)
    monkeypatch.setattr(generation, "packed_linears",
                        lambda model, rows, enabled=True: packing.append(enabled) or real_packing(model, rows, enabled))
    with pytest.warns(UserWarning, match="torch.compile failed .*no working C.. compiler"):
        assert generate(lm.model, lm.tokenizer, ["The "], sampling, static=True, compile=True) == plain
    assert calls == [1] and packing == [False]  # tried once, then eager; nothing packed for the compiler


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_float32_loss_without_a_copy_equals_cross_entropy_of_the_float32_logits(dtype):
    torch.manual_seed(0)
    logits = torch.randn(64, 97, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, 97, (64,))
    targets[5] = -100
    ours = float32_cross_entropy(logits, targets)
    (ours_grad,) = torch.autograd.grad(ours, logits)
    reference = torch.nn.functional.cross_entropy(logits.float(), targets)
    (reference_grad,) = torch.autograd.grad(reference, logits)
    assert ours.dtype == torch.float32 and torch.equal(ours, reference) and torch.equal(ours_grad, reference_grad)
    smoothed = float32_cross_entropy(logits, targets, 0.1)
    assert torch.equal(smoothed, torch.nn.functional.cross_entropy(logits.float(), targets, label_smoothing=0.1))


@pytest.mark.parametrize("name,message", [
    ("meta", "holds shapes without data"), ("gpu7", "not a device name"), ("xla", "does not run models on"),
])
def test_bad_devices_are_one_clear_error(name, message):
    with pytest.raises(ConfigError, match=message):
        check_device(name)


def test_cuda_without_a_gpu_and_bad_dtypes_are_clear_errors():
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU is available"):
            check_device("cuda")
    assert check_device("cpu") == torch.device("cpu")
    assert check_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert check_dtype("bf16") is torch.bfloat16 and check_dtype(None) is None
    with pytest.raises(ConfigError, match="float32, bfloat16 or float16"):
        check_dtype("int8")


def test_train_device_meta_is_a_clear_error_not_a_traceback(tmp_path, corpus_file, capsys):
    common = [f"data.paths=['{corpus_file}']", "model.n_layer=1", "model.n_embd=32", "model.n_head=2",
              "model.block_size=16", "train.max_steps=2", f"run.dir={tmp_path / 'run'}"]
    assert main(["train", "configs/gpt-tiny.toml", *common, "train.device=meta", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "train.device 'meta'" in err and "Traceback" not in err


def test_commands_take_device_and_dtype_and_refuse_bad_ones(tmp_path, corpus_file, capsys):
    lm = _tiny_lm(corpus_file)
    path = lm.save(tmp_path / "model")
    assert main(["generate", str(path), "--prompt", "The ", "--temperature", "0", "--max-new-tokens", "5",
                 "--json", "--device", "cpu", "--dtype", "bfloat16"]) == 0
    assert len(json.loads(capsys.readouterr().out.splitlines()[-1])["text"]) > 0
    assert main(["generate", str(path), "--device", "meta", "--max-new-tokens", "3"]) == 2
    assert "holds shapes without data" in capsys.readouterr().err
    assert main(["eval", str(path), "--data", str(corpus_file), "--device", "cuda:9"]) == 2
    err = capsys.readouterr().err
    assert ("no CUDA GPU" in err or "CUDA GPU(s)" in err) and "Traceback" not in err
    assert LM.from_pretrained(path, device="cpu", dtype="bfloat16").model.lm_head.weight.dtype == torch.bfloat16


def test_explain_and_chat_take_device_and_dtype(tmp_path, corpus_file, capsys):
    path = _tiny_lm(corpus_file).save(tmp_path / "model")
    capsys.readouterr()
    for kind, *rest in (["attention", "--text", "The cat", "--json"], ["lens", "--text", "The cat", "--json"],
                        ["attribution", "--text", "The cat", "--target", "s", "--steps", "8", "--json"]):
        assert main(["explain", kind, str(path), *rest, "--device", "cpu", "--dtype", "bfloat16"]) == 0, kind
        numbers = json.dumps(json.loads(capsys.readouterr().out.splitlines()[-1]))
        assert "NaN" not in numbers and "Infinity" not in numbers
    assert main(["explain", "lens", str(path), "--text", "x", "--device", "meta"]) == 2
    assert "holds shapes without data" in capsys.readouterr().err
    assert main(["chat", str(path), "--device", "gpu7"]) == 2
    assert "not a device name" in capsys.readouterr().err


def test_a_huge_max_new_tokens_is_one_error_naming_the_limit(tmp_path, corpus_file, capsys):
    lm = _tiny_lm(corpus_file)
    path = lm.save(tmp_path / "model")
    assert main(["generate", str(path), "--max-new-tokens", "1000000000"]) == 2
    err = capsys.readouterr().err
    assert "max_new_tokens=1,000,000,000" in err and "new tokens fit here" in err and "Traceback" not in err
    check_generation_fits(lm.model, 2, 10, 1000)  # an ordinary request passes


@CUDA
def test_on_cuda_the_captured_decode_step_gives_the_plain_greedy_tokens(corpus_file):
    lm = _tiny_lm(corpus_file)
    lm.model.cuda()
    sampling = SamplingConfig(max_new_tokens=70, temperature=0, ignore_eos=True)
    for prompts in (["The "], ["The ", "a longer prompt", "x"]):
        plain = generate(lm.model, lm.tokenizer, prompts, sampling, static=False)
        assert generate(lm.model, lm.tokenizer, prompts, sampling) == plain  # default on CUDA: captured
        assert generate(lm.model, lm.tokenizer, prompts, sampling) == plain  # replayed from the kept capture


@CUDA
def test_on_cuda_training_prefetches_pinned_batches_defers_the_guard_and_enables_tf32(tmp_path, corpus_file):
    step_lm, step_result, _ = _train(corpus_file, tmp_path / "a", nan_check="step", device="cuda",
                                     task_wrapper=lambda task: Poisoned(task, {5}))
    lm, result, _ = _train(corpus_file, tmp_path / "b", device="cuda", task_wrapper=lambda task: Poisoned(task, {5}))
    assert torch.backends.cuda.matmul.allow_tf32
    assert result.skipped_steps == step_result.skipped_steps == 1
    reference = step_lm.model.state_dict()
    for name, value in lm.model.state_dict().items():
        assert torch.allclose(value, reference[name], atol=1e-5), name


@CUDA
def test_on_cuda_the_captured_beam_step_gives_the_growing_cache_beams(corpus_file):
    from lmforge.infer.beam import beam_search

    lm = _tiny_lm(corpus_file)
    lm.model.cuda()
    prompt = lm.tokenizer.encode("The ")
    for beams in (1, 4):
        plain = beam_search(lm.model, prompt, num_beams=beams, max_new_tokens=20, num_return=beams, static=False)
        captured = beam_search(lm.model, prompt, num_beams=beams, max_new_tokens=20, num_return=beams)
        assert [h.tokens for h in captured] == [h.tokens for h in plain]


def test_the_shared_cache_grows_with_its_rows_and_gives_the_same_logits():
    """The server's shared cache starts 256 columns wide and doubles as rows need it (never the whole context up
    front); its logits equal the fixed slots' (each a whole context wide) through the growth, a shift and a
    leave; an emptied decoder starts small again."""
    from conftest import tiny_model
    from lmforge.infer.batching import GROW, BatchDecoder
    from lmforge.infer.slots import SlotDecoder

    model = tiny_model("llama", vocab_size=40, block_size=700)
    grow, slots = BatchDecoder(model), SlotDecoder(model, slots=2, capture=False)
    assert grow.cache[0].k.size(2) == GROW
    a = grow.add([1, 2, 3] * 60)[0], slots.add([1, 2, 3] * 60)[0]
    widths = set()
    for t in range(100):  # 180 + 100 columns: past 256
        out = grow.step({a[0]: t % 40}), slots.step({a[1]: t % 40})
        assert torch.allclose(out[0][a[0]], out[1][a[1]], atol=1e-5)
        widths.add(grow.cache[0].k.size(2))
    b = grow.add([5] * 500)[0], slots.add([5] * 500)[0]  # longer than a's 280: the shared cache shifts
    for t in range(30):
        out = grow.step({a[0]: t % 40, b[0]: 7}), slots.step({a[1]: t % 40, b[1]: 7})
        for ours, theirs in (a, b):
            assert torch.allclose(out[0][ours], out[1][theirs], atol=1e-5)
        widths.add(grow.cache[0].k.size(2))
    assert widths == {256, 512, 700}  # doubled, then capped at the context
    grow.remove(a[0])
    grow.remove(b[0])
    grow.add([1])
    assert grow.cache[0].k.size(2) == GROW


@pytest.mark.parametrize("arch", ["gpt", "llama"])
def test_fixed_slots_give_the_growing_shared_cache_logits(arch):
    from conftest import tiny_model
    from lmforge.infer.batching import BatchDecoder
    from lmforge.infer.slots import SlotDecoder

    model = tiny_model(arch, vocab_size=40, block_size=24)
    grow, slots = BatchDecoder(model), SlotDecoder(model, slots=3, capture=False)
    rows = {}

    def add(name, prompt):
        a, b = grow.add(prompt), slots.add(prompt)
        assert torch.allclose(a[1], b[1], atol=1e-5)
        rows[name] = (a[0], b[0])

    def step(tokens):
        a = grow.step({rows[n][0]: t for n, t in tokens.items()})
        b = slots.step({rows[n][1]: t for n, t in tokens.items()})
        for name in tokens:
            assert torch.allclose(a[rows[name][0]], b[rows[name][1]], atol=1e-5), name

    add("a", [1, 2, 3])
    step({"a": 4})
    add("b", [5, 6, 7, 8, 9, 10])  # longer than a's history: the shared cache shifts, the slots do not care
    for t in range(3):
        step({"a": 11 + t, "b": 20 + t})
    grow.remove(rows["a"][0])
    slots.remove(rows["a"][1])
    del rows["a"]
    add("c", [7])
    add("d", [3, 3])
    for t in range(14):  # b reaches 6 + 3 + 14 = 23 tokens, one short of the context
        step({"b": t % 40, "c": (3 * t) % 40, "d": (5 * t + 1) % 40})
    with pytest.raises(ValueError, match="all 3 slots are taken"):
        slots.add([1])
    step({"b": 1, "c": 2, "d": 3})
    with pytest.raises(ValueError, match="fills the context"):
        slots.step({rows[n][1]: 1 for n in ("b", "c", "d")})


@CUDA
def test_on_cuda_the_captured_slot_step_gives_the_eager_one():
    from conftest import tiny_model
    from lmforge.infer.slots import SlotDecoder

    model = tiny_model("gpt", vocab_size=40, block_size=24).cuda()
    eager, captured = SlotDecoder(model, 2, capture=False), SlotDecoder(model, 2, capture=True)
    a, b = eager.add([1, 2, 3])[0], captured.add([1, 2, 3])[0]
    for t in range(6):
        x, y = eager.step({a: t}), captured.step({b: t})
        assert torch.allclose(x[a], y[b], atol=1e-4)
