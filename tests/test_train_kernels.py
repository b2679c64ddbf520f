"""The faster training paths compute what the plain ones do: oneDNN linear layers, written-out bf16 attention."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmforge import LM
from lmforge.models import attend as attend_module
from lmforge.models.attend import attend, use_explicit
from lmforge.train.kernels import linear, onednn_available, onednn_linear

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32)
FAST = dict(batch_size=8, lr=3e-3, min_lr=3e-4, warmup_steps=5, eval_every=0, log_every=1, progress=False)
needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN")


def _grads(fn, *tensors):
    tensors = [t.detach().clone().requires_grad_(True) if t is not None else None for t in tensors]
    out = fn(*tensors)
    out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
    return out.detach(), [t.grad for t in tensors if t is not None]


@needs_onednn
@pytest.mark.parametrize("shape,bias", [((7, 33), True), ((3, 20, 48), True), ((2, 5, 16), False)])
def test_onednn_linear_matches_f_linear_values_and_gradients(shape, bias):
    torch.manual_seed(0)
    x, w = torch.randn(*shape), torch.randn(24, shape[-1])
    b = torch.randn(24) if bias else None
    ours, ours_grads = _grads(linear, x, w, b)
    ref, ref_grads = _grads(F.linear, x, w, b)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert len(ours_grads) == len(ref_grads)
    for got, want in zip(ours_grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


@needs_onednn
def test_onednn_linear_patches_only_inside_and_leaves_state_dict_alone():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    keys = list(model.state_dict())
    with onednn_linear(model) as patched:
        assert patched == 2 and "forward" in model[0].__dict__
        assert list(model.state_dict()) == keys
    assert "forward" not in model[0].__dict__ and "forward" not in model[2].__dict__
    with onednn_linear(model, enabled=False) as patched:
        assert patched == 0


def test_onednn_linear_leaves_autocast_and_other_dtypes_to_torch():
    x, w = torch.randn(4, 8), torch.randn(3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert linear(x, w).dtype == torch.bfloat16  # autocast's own bf16 path, unchanged
    assert linear(x.double(), w.double()).dtype == torch.float64


@needs_onednn
@pytest.mark.parametrize("arch", ["gpt", "bert"])
def test_training_through_onednn_gives_the_plain_runs_losses_and_weights(corpus_file, tmp_path, arch):
    LM.new(arch, corpus=corpus_file, **TINY).tokenizer.save(tmp_path / "tokenizer.json")
    runs = {}
    for fast in (True, False):
        lm = LM.new(arch, corpus=corpus_file, tokenizer_path=str(tmp_path / "tokenizer.json"), **TINY)
        losses = []
        lm.fit(corpus_file, max_steps=12, onednn_linear=fast, hooks=[lambda s, r: losses.append(r["loss"])], **FAST)
        runs[fast] = losses, lm.model.state_dict()
        assert all("forward" not in m.__dict__ for m in lm.model.modules())  # the model comes back plain
    torch.testing.assert_close(torch.tensor(runs[True][0]), torch.tensor(runs[False][0]), rtol=1e-4, atol=0)
    for name, value in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][name], value, rtol=1e-3, atol=1e-5)


def _qkv(dtype, B=2, H=3, T=9, D=8):
    torch.manual_seed(1)
    return [torch.randn(B, H, T, D).to(dtype) for _ in range(3)]


@pytest.mark.parametrize("case", ["causal", "mask", "full"])
def test_written_out_attention_matches_sdpa_in_float32(monkeypatch, case):
    # force the written-out path in float32, where SDPA's own math is the reference to 1e-5
    monkeypatch.setattr(attend_module, "use_explicit", lambda q, k, p: True)
    q, k, v = _qkv(torch.float32)
    mask = torch.rand(2, 1, 9, 9) > 0.3 if case == "mask" else None
    if mask is not None:
        mask |= torch.eye(9, dtype=torch.bool)  # every query sees itself, as attention_mask guarantees
    causal = case == "causal"
    ours, ours_grads = _grads(lambda q, k, v: attend(q, k, v, mask=mask, is_causal=causal), q, k, v)
    ref, ref_grads = _grads(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                                           is_causal=causal), q, k, v)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(ours_grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_bf16_attention_is_written_out_and_close_to_float32():
    q, k, v = _qkv(torch.bfloat16)
    assert use_explicit(q, k, 0.0)
    assert not use_explicit(q.float(), k.float(), 0.0)  # float32: SDPA's flash kernel is as fast
    assert not use_explicit(q, k, 0.1)  # attention dropout keeps SDPA's own random stream
    assert not use_explicit(q[:, :, :1], k, 0.0)  # one query (generation): SDPA
    ours = attend(q, k, v, is_causal=True)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    assert ours.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), ref, rtol=2e-2, atol=2e-2)


def test_bf16_training_follows_the_float32_loss_curve(corpus_file, tmp_path):
    LM.new("gpt", corpus=corpus_file, **TINY).tokenizer.save(tmp_path / "tokenizer.json")
    curves = {}
    for dtype in ("float32", "bfloat16"):
        lm = LM.new("gpt", corpus=corpus_file, tokenizer_path=str(tmp_path / "tokenizer.json"), **TINY)
        losses = []
        lm.fit(corpus_file, max_steps=40, dtype=dtype, hooks=[lambda s, r: losses.append(r["loss"])], **FAST)
        curves[dtype] = torch.tensor(losses)
    assert curves["float32"][-5:].mean() < 0.8 * curves["float32"][:5].mean()  # it learned something
    gap = ((curves["bfloat16"] - curves["float32"]).abs() / curves["float32"]).max()
    assert gap < 0.02, gap


@pytest.mark.parametrize("arch,dropout", [("gpt", 0.1), ("bert", 0.0)])
def test_checkpointed_activations_train_exactly_as_kept_ones(corpus_file, tmp_path, arch, dropout):
    LM.new(arch, corpus=corpus_file, **TINY).tokenizer.save(tmp_path / "tokenizer.json")
    runs = {}
    for recompute in (True, False):
        lm = LM.new(arch, corpus=corpus_file, tokenizer_path=str(tmp_path / "tokenizer.json"), dropout=dropout, **TINY)
        losses = []
        lm.fit(corpus_file, max_steps=8, checkpoint_activations=recompute,
               hooks=[lambda s, r: losses.append(r["loss"])], **FAST)
        runs[recompute] = losses, lm.model.state_dict()
        assert all("forward" not in m.__dict__ for m in lm.model.modules())
    # the recomputation replays the dropout masks, so even with dropout the runs agree
    torch.testing.assert_close(torch.tensor(runs[True][0]), torch.tensor(runs[False][0]), rtol=1e-6, atol=0)
    for name, value in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][name], value, rtol=1e-5, atol=1e-7)


def test_checkpoint_blocks_wraps_each_block_once():
    from lmforge.train.memory import checkpoint_blocks

    inner = nn.ModuleList([nn.Linear(4, 4)])
    model = nn.ModuleDict({"h": nn.ModuleList([nn.Sequential(nn.Linear(4, 4)), nn.ModuleDict({"inner": inner})])})
    with checkpoint_blocks(model) as count:
        assert count == 2  # the inner list sits inside an already checkpointed block
        x = torch.randn(3, 4, requires_grad=True)
        model["h"][0](x).sum().backward()
        assert x.grad is not None
    assert all("forward" not in m.__dict__ for m in model.modules())
