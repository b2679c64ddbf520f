"""`lmforge compare`: the table's numbers are the directories' real ones (size, parameters, nonzero, quality)."""
import json

import pytest
import torch

from lmforge.api import LM
from lmforge.cli import main
from lmforge.app.workflows.compare import compare_dirs, format_table
from lmforge.app.workflows.quantize import quantize_dir


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    from conftest import small_corpus

    folder = tmp_path_factory.mktemp("compare")
    data = folder / "held_out.txt"
    data.write_text(small_corpus(120, seed=3), encoding="utf-8")
    torch.manual_seed(0)
    lm = LM.new("gpt", tokenizer="char", corpus=data, n_layer=2, n_head=4, n_embd=32, block_size=32)
    lm.save(folder / "plain")
    with torch.no_grad():  # a hand-pruned copy: the first 100 weights of one matrix set to zero
        weight = lm.model.h[0].mlp.up.weight
        assert int(torch.count_nonzero(weight.view(-1)[:100])) == 100
        weight.view(-1)[:100] = 0.0
    lm.save(folder / "pruned")
    quantize_dir(folder / "plain", folder / "q8", "dynamic-int8")
    lora = LM.from_pretrained(folder / "plain")
    lora.fit(data, max_steps=3, batch_size=4, lora={"rank": 2}, eval_every=0, run_dir=folder / "lora-run",
             progress=False)
    return folder, data


def test_every_kind_of_directory_loads_lora_too(dirs):
    """A LoRA run's model directory (base weights + adapters) is measured like any other; quantizing it unmerged
    is refused."""
    folder, data = dirs
    lora_dir = folder / "lora-run" / "final"
    plain, lora = compare_dirs([str(folder / "plain"), str(lora_dir)], str(data), batch_size=2, rounds=1,
                               new_tokens=4, progress=False)
    assert lora["compression"].startswith("lora") and lora["parameters"] > plain["parameters"]
    assert lora["quality"] == pytest.approx(LM.from_pretrained(lora_dir).evaluate(str(data), batch_size=2)["perplexity"])
    with pytest.raises(ValueError, match="merge them first"):
        quantize_dir(lora_dir, folder / "never", "dynamic-int8")
    assert not (folder / "never").exists()


def test_table_values_are_the_directories_own(dirs):
    folder, data = dirs
    rows = compare_dirs([str(folder / "plain"), str(folder / "pruned"), str(folder / "q8")], str(data),
                        batch_size=2, rounds=1, new_tokens=4, progress=False)
    plain, pruned, q8 = rows
    for row in rows:
        assert row["weights_bytes"] == (folder / row["model"] / "model.safetensors").stat().st_size
        lm = LM.from_pretrained(row["model"])
        assert row["quality_metric"] == "perplexity" and not row["higher_is_better"]
        assert row["quality"] == pytest.approx(lm.evaluate(str(data), batch_size=2)["perplexity"], rel=1e-9)
        assert row["scoring_tokens_per_s"] > 0 and row["generation_tokens_per_s"] > 0
    unique = {id(p): p for p in LM.from_pretrained(folder / "plain").model.parameters()}.values()
    assert plain["parameters"] == sum(p.numel() for p in unique)
    assert plain["nonzero"] == sum(int((p != 0).sum()) for p in unique)
    assert pruned["parameters"] == plain["parameters"] and pruned["nonzero"] == plain["nonzero"] - 100
    assert q8["parameters"] == plain["parameters"] and q8["compression"] == "quantize:dynamic-int8"
    assert q8["weights_bytes"] < plain["weights_bytes"]
    table = format_table(rows)
    assert table.count("\n") == 4 and "quantize:dynamic-int8" in table and f"{plain['parameters']:,}" in table


def test_cli_json_and_png(dirs, tmp_path, capsys):
    folder, data = dirs
    out = tmp_path / "plots" / "compare.png"
    assert main(["compare", str(folder / "plain"), str(folder / "q8"), "--data", str(data), "--out", str(out),
                 "--json", "--rounds", "1", "--batch-size", "2", "--new-tokens", "4", "--quiet"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == [str(folder / "plain"), str(folder / "q8")]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_input(dirs, tmp_path, capsys):
    folder, data = dirs
    out = tmp_path / "c.png"
    assert main(["compare", str(folder / "plain"), str(tmp_path), "--data", str(data), "--out", str(out)]) == 2
    assert "is not a model directory" in capsys.readouterr().err and not out.exists()
    assert main(["compare", str(folder / "plain"), "--data", str(tmp_path / "missing.txt"), "--out", str(out)]) == 2
    assert "--data" in capsys.readouterr().err and not out.exists()
    assert main(["compare", str(folder / "plain"), str(folder / "plain"), "--data", str(data)]) == 2
    assert "listed twice" in capsys.readouterr().err
    classifier = LM.new("bert", tokenizer="char", corpus=data, n_layer=1, n_head=2, n_embd=16, block_size=16,
                        labels=["a", "b"])
    classifier.save(tmp_path / "classifier")
    with pytest.raises(ValueError, match="classifiers and language models"):
        compare_dirs([str(folder / "plain"), str(tmp_path / "classifier")], str(data), progress=False)
