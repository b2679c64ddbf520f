"""Bad input never crashes, never trains on garbage, never locks a user out (issue 16).

The table-driven campaign (tests/hostile.py) runs the real command line on ~75 hostile inputs in a subprocess;
the tests below pin each defect it found, and hypothesis throws random configs, sampling settings and bytes at
the library's entry points.
"""
import json
import math
import os
import stat
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.cli import _overrides_anywhere, _parser
from lmforge.config import Config, ConfigError, ModelConfig, build_config, load_config
from lmforge.data.corpus import DataError, iter_documents, read_records, read_text, resolve_paths
from lmforge.files import atomic_directory, atomic_write_text
from lmforge.infer.generate import SamplingConfig, next_token
from lmforge.models import build_model, count_parameters
from lmforge.preflight import check_fits, check_run_dir, estimate_parameters

ROOT = Path(__file__).resolve().parents[1]
TEXT = "the cat sees the sea.\n" * 40


def _campaign(*flags: str) -> list[dict]:
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "hostile.py"), "--json", *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def _assert_all_ok(rows: list[dict]) -> None:
    bad = [f"{r['outcome']}: {r['name']}\n{r['stderr'][-400:]}" for r in rows if r["outcome"] != "ok"]
    assert not bad, "\n\n".join(bad)


def test_hostile_campaign_fast():
    """Every fast case: refused with `error: <culprit>`, exit != 0, nothing written; good inputs succeed."""
    rows = _campaign()
    assert len(rows) >= 70
    _assert_all_ok(rows)


@pytest.mark.slow
def test_hostile_campaign_full_sweep():
    rows = _campaign("--slow")
    assert len(rows) >= 110
    _assert_all_ok(rows)


def test_real_entry_point_with_raw_bytes_and_late_overrides(tmp_path):
    """Through `python -m lmforge` itself: non-UTF-8 argv bytes and an override after --resume."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "lmforge", "generate", "nomodel", "--prompt", b"caf\xe9"],
                          cwd=tmp_path, capture_output=True, env=env, timeout=120)
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 2 and done.stdout == b"" and "Traceback" not in err
    assert err.startswith("error: argument --prompt is not valid UTF-8") and "0xe9" in err
    (tmp_path / "cfg.toml").write_text("[train]\nmax_steps = 2\n")
    done = subprocess.run([sys.executable, "-m", "lmforge", "train", "cfg.toml", "--resume", "gone",
                           "train.max_steps=3"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "unrecognized" not in done.stderr
    assert done.stderr.startswith("error: cannot resume: 'gone'")


# -- command line ---------------------------------------------------------------------------------------
def test_overrides_are_accepted_anywhere_but_other_strays_are_not(capsys):
    args = _overrides_anywhere(_parser(), ["train", "c.toml", "a.b=1", "--resume", "runs/x", "train.max_steps=3000",
                                           "--quiet", "run.name=y"])
    assert args.overrides == ["a.b=1", "train.max_steps=3000", "run.name=y"] and args.resume == "runs/x"
    for argv in (["train", "c.toml", "--resume", "r", "stray"], ["eval", "m", "--data", "d", "x.y=1"]):
        with pytest.raises(SystemExit):
            _overrides_anywhere(_parser(), argv)
        assert capsys.readouterr().err.splitlines()[-1].startswith("error: lmforge")


# -- config ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, words", [
    (["train.lrr=1"], ["unknown key 'train.lrr' (did you mean 'train.lr'?)"]),
    (["model.n_layers=2"], ["did you mean 'model.n_layer'?"]),
    (["trian.lr=1"], ["unknown section 'trian'", "did you mean 'train'?"]),
    (["train.lr=1e-3", "train.min_lr=1e-2"], ["train.min_lr=0.01 is above train.lr=0.001"]),
    (["train.lr=inf"], ["train.lr", "finite", "inf"]),
    (["model.dropout=nan"], ["model.dropout", "nan"]),
    (["train.patience=3", "train.eval_every=0"], ["train.patience=3", "train.eval_every=0"]),
    (["train.patience=3", "data.val_fraction=0"], ["train.patience=3 needs validation data", "data.val_fraction=0"]),
    ([f"train.seed={2**70}"], ["train.seed", str(2**70)]),
    (["train.seed=-1"], ["train.seed", "-1"]),
    (["tokenizer.vocab_size=1e20"], ["tokenizer.vocab_size", "1e+20"]),
    (["tokenizer.vocab_size=1e9"], ["tokenizer.vocab_size", "less than or equal to 2097152"]),
])
def test_config_refusals_name_the_key(overrides, words):
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    assert all(word in str(error.value) for word in words), str(error.value)


def test_config_accepts_a_utf8_bom_and_lowers_an_unset_min_lr(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes("\ufeff[train]\nlr = 5e-5\n".encode())
    cfg = load_config(path)
    assert cfg.train.lr == 5e-5 and cfg.train.min_lr == pytest.approx(5e-6)  # was 1e-4: the rate climbed
    # patience with a test set is fine for classification
    assert load_config(None, ["train.objective='classify'", "data.test='t.csv'", "data.val_fraction=0",
                              "train.patience=2"]).train.patience == 2
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path)


# -- sizes ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch, extra", [("gpt", {}), ("llama", {"n_kv_head": 2}), ("bert", {}),
                                         ("gpt", {"tie_embeddings": False})])
def test_parameter_estimate_matches_the_built_model(arch, extra):
    cfg = ModelConfig(arch=arch, n_layer=3, n_head=4, n_embd=64, block_size=32, vocab_size=300, **extra)
    real = count_parameters(build_model(cfg))
    assert abs(estimate_parameters(cfg, 300) - real) / real < 0.03


@pytest.mark.parametrize("overrides, culprit", [(["model.n_layer=200000"], "model.n_layer=200000"),
                                                (["model.n_embd=1000000000"], "model.n_embd=1000000000"),
                                                (["train.batch_size=1000000000"], "train.batch_size=1000000000")])
def test_preflight_refuses_what_cannot_fit_without_allocating(overrides, culprit):
    config = load_config(None, [*overrides, "train.device='cpu'"])
    with pytest.raises(ConfigError) as error:
        check_fits(config)
    assert "not enough memory" in str(error.value) and culprit in str(error.value)
    check_fits(load_config(None, ["train.device='cpu'"]))  # the defaults fit


def test_run_dir_that_is_a_file(tmp_path):
    (tmp_path / "taken").write_text("x")
    for path in (tmp_path / "taken", tmp_path / "taken" / "run"):
        with pytest.raises(ConfigError, match="taken' is a file"):
            check_run_dir(path)
    check_run_dir(tmp_path / "new" / "run")


# -- data -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("encode", [
    lambda t: b"\xff\xfe" + t.encode("utf-16-le"),  # PowerShell's `>`
    lambda t: b"\xfe\xff" + t.encode("utf-16-be"),
    lambda t: t.encode("utf-16-le"),  # no BOM
    lambda t: t.encode("utf-32"),  # BOM from the codec
    lambda t: b"\xef\xbb\xbf" + t.encode(),
])
def test_unicode_encodings_are_decoded(tmp_path, encode):
    path = tmp_path / "doc.txt"
    text = "naïve café ünïcode text.\n" * 20
    path.write_bytes(encode(text))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_text(path) == text


@pytest.mark.parametrize("content, words", [
    (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8, ["a PNG image"]),
    (os.urandom(4000), ["does not look like text"]),
    (b"header\n" + b"\0" * 4000, ["does not look like text"]),
])
def test_binary_files_are_refused_by_name(tmp_path, content, words):
    path = tmp_path / "blob.txt"
    path.write_bytes(content)
    with pytest.raises(DataError) as error:
        read_text(path)
    assert "blob.txt" in str(error.value) and all(word in str(error.value) for word in words)


def test_a_few_bad_bytes_still_warn_and_read(tmp_path):
    path = tmp_path / "mostly.txt"
    path.write_bytes(TEXT.encode() + b"\xff\xfe!\n")
    with pytest.warns(UserWarning, match="2 invalid UTF-8"):
        assert read_text(path).startswith(TEXT)


def test_long_csv_cells_and_deep_jsonl(tmp_path):
    csv = tmp_path / "long.csv"
    csv.write_text("text,label\n" + "a" * 200_000 + ",x\nshort,y\n")
    assert [len(row["text"]) for row in read_records(csv)] == [200_000, 5]
    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"text": "ok"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(DataError, match=r"deep.jsonl:2: JSON nested too deeply"):
        list(read_records(deep))


def test_empty_path_and_folder_for_a_file(tmp_path):
    with pytest.raises(DataError, match=r"empty data path"):
        resolve_paths([""])
    (tmp_path / "folder.txt").mkdir()
    with pytest.raises(DataError, match=r"is a folder, but a file is expected"):
        read_text(tmp_path / "folder.txt")


# -- sampling -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("options, word", [({"temperature": math.nan}, "temperature"),
                                           ({"temperature": 1e-40}, "temperature"),
                                           ({"temperature": math.inf}, "temperature"),
                                           ({"repetition_penalty": math.nan}, "repetition_penalty"),
                                           ({"repetition_penalty": math.inf}, "repetition_penalty"),
                                           ({"top_p": math.nan}, "top_p"),
                                           ({"seed": 2**70}, "seed"), ({"seed": -1}, "seed")])
def test_sampling_check_refuses_nan_inf_and_tiny(options, word):
    with pytest.raises(ValueError, match=word):
        SamplingConfig(**options).check()


def test_tiny_top_p_keeps_the_most_likely_token():
    logits = torch.randn(3, 40, generator=torch.Generator().manual_seed(0)) * 3
    cfg = SamplingConfig(top_p=1e-300)
    chosen = next_token(logits, torch.zeros(3, 1, dtype=torch.long), torch.zeros(3, 1, dtype=torch.bool), cfg, None)
    assert torch.equal(chosen, logits.argmax(-1))


# -- permissions and Python -----------------------------------------------------------------------------
@pytest.mark.parametrize("umask, folder_mode, file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_saved_files_respect_the_umask(tmp_path, umask, folder_mode, file_mode):
    old = os.umask(umask)
    try:
        with atomic_directory(tmp_path / "model") as temp:
            (temp / "config.json").write_text("{}")
        atomic_write_text(tmp_path / "model" / "card.md", "hi")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "model") == folder_mode
    assert mode(tmp_path / "model" / "card.md") == file_mode == mode(tmp_path / "model" / "config.json")


def test_python_requirement_is_what_the_code_needs():
    """tomllib is Python 3.11+; the claim in pyproject must not promise less."""
    claim = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert claim.startswith(">=")
    oldest = tuple(int(part) for part in claim[2:].split(".")[:2])
    assert oldest >= (3, 11) and sys.version_info[:2] >= oldest


# -- properties -----------------------------------------------------------------------------------------
KEYS = [f"{section}.{key}" for section, model in Config.model_fields.items()
        for key in model.annotation.model_fields]
HOSTILE_VALUES = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1e20", str(2**70), "''", "[]", "['']", "true", "{}", "1.5",
                     "'x'", "[1, 2]", "\"\\u0000\"", "1e-300"]),
    st.integers(min_value=-2**80, max_value=2**80).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=12))


OVERRIDES = st.lists(st.tuples(st.sampled_from(KEYS + ["train.lrr", "modle.n_layer", "x"]), HOSTILE_VALUES),
                     min_size=1, max_size=4)


def _override_property(pairs):
    """Any overrides give a valid config (a sane schedule) or a ConfigError naming one of the keys."""
    overrides = [f"{key}={value}" for key, value in pairs]
    try:
        config = load_config(None, overrides)
    except ConfigError as error:
        message = str(error)
        assert any(key.split(".")[0] in message or key in message for key, _ in pairs), message
        return
    assert config.train.min_lr <= config.train.lr and math.isfinite(config.train.lr)


SAMPLING = dict(temperature=st.floats(allow_nan=True, allow_infinity=True),
                top_p=st.none() | st.floats(allow_nan=True, allow_infinity=True),
                penalty=st.floats(allow_nan=True, allow_infinity=True),
                top_k=st.none() | st.integers(-3, 60))


def _sampling_property(temperature, top_p, penalty, top_k):
    """Sampling settings are refused by check(), or next_token picks a real token with them."""
    cfg = SamplingConfig(temperature=temperature, top_p=top_p, repetition_penalty=penalty, top_k=top_k)
    try:
        cfg.check()
    except ValueError:
        return
    logits = torch.randn(2, 50, generator=torch.Generator().manual_seed(1)) * 10
    history = torch.tensor([[1, 2, 3], [4, 5, 6]])
    chosen = next_token(logits, history, torch.ones_like(history, dtype=torch.bool), cfg, torch.Generator().manual_seed(0))
    assert chosen.shape == (2,) and bool(((chosen >= 0) & (chosen < 50)).all())


BYTES = dict(content=st.binary(max_size=3000), suffix=st.sampled_from([".txt", ".jsonl", ".csv", ".tsv"]))


def _bytes_property(folder: Path, content: bytes, suffix: str):
    """Any bytes in a data file give text (mostly real text) or a DataError naming the file."""
    path = folder / f"input{suffix}"
    path.write_bytes(content)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            texts = [text for text, _ in iter_documents([str(path)])]
        assert all(isinstance(text, str) for text in texts)
        if suffix == ".txt":  # what is accepted is mostly text: a quarter at most is replacement characters or NULs
            whole = "".join(texts)
            assert whole.count("\ufffd") + whole.count("\0") <= 0.25 * len(whole)
    except DataError as error:
        assert "input" in str(error)


def _properties(examples: int):
    fixture_ok = dict(deadline=None, max_examples=examples, suppress_health_check=[HealthCheck.function_scoped_fixture])
    overrides = settings(max_examples=examples, deadline=None)(given(OVERRIDES)(_override_property))
    sampling = settings(max_examples=examples, deadline=None)(given(**SAMPLING)(_sampling_property))

    @settings(**fixture_ok)
    @given(**BYTES)
    def data(tmp_path, content, suffix):
        _bytes_property(tmp_path, content, suffix)

    return overrides, sampling, data


test_property_overrides, test_property_sampling, test_property_data_bytes = _properties(100)
_sweep = [pytest.mark.slow(test) for test in _properties(2000)]
test_property_overrides_sweep, test_property_sampling_sweep, test_property_data_bytes_sweep = _sweep
