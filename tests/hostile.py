"""A hostile-input campaign against the real `lmforge` command line (issue 16).

Each case makes its files in a fresh folder, runs `lmforge.cli.main(argv)` in this process (one interpreter
for many cases: torch is imported once) and sorts the outcome:

  ok        the bad input was refused: exit != 0, an `error: ...` line naming the culprit, nothing on stdout,
            no model or checkpoint written; or, for a good input, exit 0
  crash     an exception escaped (a user would see a Traceback)
  hang      no answer within the case's time limit
  accepted  a bad input ran to exit 0
  unclear   refused, but the message does not start with `error:` or does not name the culprit
  partial   refused after writing output or a model
  refused   a good input was refused

Run it as a script to print the outcome table (`--json` for machine-readable rows); tests/test_bad_input.py
runs it in a subprocess. `PYTHONPATH=<another checkout> python tests/hostile.py` measures another version.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

OUTCOMES = ("ok", "crash", "hang", "accepted", "unclear", "partial", "refused")


def corpus(n_lines: int = 120, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = ["the cat", "a dog", "sees", "likes", "the red apple", "some bread", "the sea"]
    return "".join(" ".join(rng.choice(words) for _ in range(4)) + ".\n" for _ in range(n_lines))


RECIPE = """[model]
n_layer = 1
n_head = 2
n_embd = 16
block_size = 16
[data]
paths = ["corpus.txt"]
[train]
max_steps = 3
batch_size = 4
warmup_steps = 1
eval_every = 0
eval_steps = 1
save_every = 0
log_every = 1
[run]
dir = "run"
"""


@dataclass
class Case:
    name: str
    argv: list  # str, or bytes (decoded as a POSIX shell would hand them to Python)
    expect: list[str] | None  # substrings the error must hold (the culprit); None: a good input, must succeed
    files: dict[str, bytes | str] = field(default_factory=dict)
    setup: Callable[[Path, Path], None] | None = None  # (case folder, fixtures folder)
    slow: bool = False
    timeout: int = 60


def _train(name, overrides, expect, files=None, recipe=RECIPE, **kw) -> Case:
    files = {"corpus.txt": corpus(), "cfg.toml": recipe, **(files or {})}
    return Case(name, ["train", "cfg.toml", *overrides, "--quiet"], expect, files, **kw)


def _copy_fixture(source: str, target: str):
    def setup(folder: Path, fixtures: Path) -> None:
        shutil.copytree(fixtures / source, folder / target)
    return setup


def _utf16(text: str, bom: bool, big: bool = False) -> bytes:
    codec = "utf-16-be" if big else "utf-16-le"
    return ((b"\xfe\xff" if big else b"\xff\xfe") if bom else b"") + text.encode(codec)


PNG = b"\x89PNG\r\n\x1a\n" + random.Random(1).randbytes(3000)
NOISE = random.Random(2).randbytes(5000)
DEEP_JSONL = '{"text": "fine"}\n' + "[" * 100_000 + "]" * 100_000 + "\n"
LONG_CSV = "text\n" + "a" * 140_000 + "\n" + corpus(50).replace(",", " ")
LABELS = "text,label\n" + "".join(f"{'good fine nice' if i % 2 else 'bad poor awful'} {i},{'pos' if i % 2 else 'neg'}\n"
                                 for i in range(40))
LONG_LABELS = "text,label\n" + "b" * 140_000 + ",neg\n" + LABELS.split("\n", 1)[1]
BAD = os.fsdecode(b"caf\xe9 \xff")  # Latin-1 bytes in an argument, as a shell passes them


def cases() -> list[Case]:
    gpt, bert, clf = "gpt/final", "bert/final", "clf/final"
    fx = "{fixtures}"
    c = [
        # -- command line and config ---------------------------------------------------------------------
        Case("override after --resume", ["train", "cfg.toml", "--quiet", "--resume", "run", "train.max_steps=4"], None,
             {"corpus.txt": corpus(), "cfg.toml": RECIPE}, setup=_copy_fixture("gpt", "run")),
        Case("override between options", ["train", "cfg.toml", "train.max_steps=2", "--quiet", "train.lr=1e-3"], None,
             {"corpus.txt": corpus(), "cfg.toml": RECIPE}),
        _train("unknown key suggests nearest", ["train.lrr=1e-3"], ["train.lrr", "did you mean", "train.lr"]),
        _train("unknown section suggests nearest", ["trian.lr=1e-3"], ["trian", "did you mean", "train"]),
        _train("unknown key in file", [], ["train.max_step", "did you mean", "max_steps"],
               recipe=RECIPE.replace("max_steps = 3", "max_step = 3")),
        _train("override without =", ["train.lr"], ["train.lr", "section.key=value"]),
        _train("min_lr above lr", ["train.lr=1e-3", "train.min_lr=1e-2"], ["min_lr", "lr"]),
        _train("lr infinite", ["train.lr=inf"], ["train.lr", "inf"]),
        _train("lr nan", ["train.lr=nan"], ["train.lr", "nan"]),
        _train("patience without validation data", ["train.patience=2", "train.eval_every=1", "data.val_fraction=0"],
               ["patience", "val_fraction"]),
        _train("patience without evaluations", ["train.patience=2", "train.eval_every=0"], ["patience", "eval_every"]),
        _train("seed 2^70", [f"train.seed={2**70}"], ["train.seed", str(2**70)]),
        _train("seed -1", ["train.seed=-1"], ["train.seed", "-1"]),
        _train("bpe vocab_size 1e20", ["tokenizer.kind='bpe'", "tokenizer.vocab_size=1e20"], ["tokenizer.vocab_size"]),
        _train("n_layer 200000", ["model.n_layer=200000"], ["memory", "n_layer"], timeout=30),
        _train("n_embd 1e9", ["model.n_embd=1e9"], ["memory", "n_embd"], timeout=30),
        _train("batch_size 1e9", ["train.batch_size=1e9"], ["memory", "batch_size"], timeout=30),
        _train("config with a UTF-8 BOM", [], None, {"cfg.toml": "\ufeff" + RECIPE}),
        Case("config is a folder", ["train", "cfgdir"], ["cfgdir", "folder"], setup=lambda f, _: (f / "cfgdir").mkdir()),
        Case("config missing", ["train", "nothere.toml"], ["nothere.toml"]),
        Case("config is a PNG", ["train", "cfg.toml"], ["cfg.toml"], {"cfg.toml": PNG}),
        _train("data.paths empty string", ["data.paths=['']"], ["data.paths", "empty"]),
        _train("data path is an empty folder", ["data.paths=['empty']"], ["empty"],
               setup=lambda f, _: (f / "empty").mkdir()),
        _train("run.dir is a file", ["run.dir='taken'"], ["run.dir", "taken"], {"taken": "x"}),
        _train("run.dir inside a file", ["run.dir='taken/run'"], ["taken"], {"taken": "x"}),
        _train("n_head does not divide n_embd", ["model.n_head=3"], ["n_head", "n_embd"]),
        _train("block_size 1", ["model.block_size=1"], ["block_size"]),
        _train("max_steps negative", ["train.max_steps=-5"], ["max_steps", "-5"]),
        _train("dropout 1", ["model.dropout=1.0"], ["dropout"]),
        # -- data files ------------------------------------------------------------------------------------
        _train("random bytes as text", ["data.paths=['noise.txt']"], ["noise.txt"], {"noise.txt": NOISE}),
        _train("a PNG as data", ["data.paths=['pic.png']"], ["pic.png", "PNG"], {"pic.png": PNG}),
        _train("mostly NUL bytes", ["data.paths=['nul.txt']"], ["nul.txt"], {"nul.txt": b"ab\n" + b"\0" * 4000}),
        _train("UTF-16 LE with BOM (PowerShell >)", ["data.paths=['ps.txt']"], None, {"ps.txt": _utf16(corpus(), True)}),
        _train("UTF-16 BE with BOM", ["data.paths=['be.txt']"], None, {"be.txt": _utf16(corpus(), True, big=True)}),
        _train("UTF-16 LE without BOM", ["data.paths=['le.txt']"], None, {"le.txt": _utf16(corpus(), False)}),
        _train("CSV cell over 131072 chars", ["data.paths=['long.csv']"], None, {"long.csv": LONG_CSV}),
        _train("JSONL nested 100k deep", ["data.paths=['deep.jsonl']"], ["deep.jsonl:2", "nest"],
               {"deep.jsonl": DEEP_JSONL}),
        _train("JSONL line not an object", ["data.paths=['list.jsonl']"], ["list.jsonl:1"], {"list.jsonl": "[1, 2]\n"}),
        _train("tokenizer.path is a folder without one", ["tokenizer.path='tok'"], ["tok"],
               setup=lambda f, _: (f / "tok").mkdir()),
        _train("classify data.train is a folder", ["train.objective='classify'", "data.train='train.csv'"],
               ["train.csv", "folder"], setup=lambda f, _: (f / "train.csv").mkdir()),
        _train("classify CSV cell over 131072 chars", ["train.objective='classify'", "data.train='long.csv'"], None,
               {"long.csv": LONG_LABELS}),
        _train("classify on a PNG", ["train.objective='classify'", "data.train='pic.csv'"], ["pic.csv"],
               {"pic.csv": PNG}),
        _train("classify with one class", ["train.objective='classify'", "data.train='one.csv'"], ["one.csv", "class"],
               {"one.csv": "text,label\na,x\nb,x\n"}),
        # -- prediction arguments --------------------------------------------------------------------------
        Case("temperature nan", ["generate", f"{fx}/{gpt}", "--temperature", "nan"], ["temperature", "nan"]),
        Case("temperature 1e-40", ["generate", f"{fx}/{gpt}", "--temperature", "1e-40"], ["temperature", "1e-40"]),
        Case("temperature inf", ["generate", f"{fx}/{gpt}", "--temperature", "inf"], ["temperature", "inf"]),
        Case("temperature negative", ["generate", f"{fx}/{gpt}", "--temperature", "-1"], ["temperature"]),
        Case("repetition penalty nan", ["generate", f"{fx}/{gpt}", "--repetition-penalty", "nan"],
             ["repetition", "nan"]),
        Case("repetition penalty inf", ["generate", f"{fx}/{gpt}", "--repetition-penalty", "inf"],
             ["repetition", "inf"]),
        Case("top-p nan", ["generate", f"{fx}/{gpt}", "--top-p", "nan"], ["top_p", "nan"]),
        Case("top-k 0", ["generate", f"{fx}/{gpt}", "--top-k", "0"], ["top_k"]),
        Case("max-new-tokens -1", ["generate", f"{fx}/{gpt}", "--max-new-tokens", "-1"], ["max_new_tokens"]),
        Case("generate seed 2^70", ["generate", f"{fx}/{gpt}", "--seed", str(2**70)], ["seed", str(2**70)]),
        Case("generate seed -1", ["generate", f"{fx}/{gpt}", "--seed", "-1"], ["seed", "-1"]),
        Case("temperature not a number", ["generate", f"{fx}/{gpt}", "--temperature", "hot"], ["--temperature", "hot"]),
        Case("prompt not UTF-8", ["generate", f"{fx}/{gpt}", "--prompt", BAD], ["--prompt", "utf-8"]),
        Case("stop not UTF-8", ["generate", f"{fx}/{gpt}", "--stop", BAD], ["--stop", "utf-8"]),
        Case("fill-mask text not UTF-8", ["fill-mask", f"{fx}/{bert}", BAD + " [MASK]"], ["text", "utf-8"]),
        Case("classify --text not UTF-8", ["classify", f"{fx}/{clf}", "--text", BAD], ["--text", "utf-8"]),
        Case("eval batch-size 0", ["eval", f"{fx}/{gpt}", "--data", "corpus.txt", "--batch-size", "0"], ["batch"],
             {"corpus.txt": corpus()}),
        Case("eval batch-size -1", ["eval", f"{fx}/{gpt}", "--data", "corpus.txt", "--batch-size", "-1"], ["batch"],
             {"corpus.txt": corpus()}),
        Case("eval classifier batch-size 0", ["eval", f"{fx}/{clf}", "--data", "l.csv", "--batch-size", "0"], ["batch"],
             {"l.csv": LABELS}),
        Case("eval data is a PNG", ["eval", f"{fx}/{gpt}", "--data", "pic.txt"], ["pic.txt"], {"pic.txt": PNG}),
        Case("eval data missing", ["eval", f"{fx}/{gpt}", "--data", "gone.txt"], ["gone.txt"]),
        Case("classify --file is a folder", ["classify", f"{fx}/{clf}", "--file", "texts"], ["texts", "folder"],
             setup=lambda f, _: (f / "texts").mkdir()),
        Case("classify --file random bytes", ["classify", f"{fx}/{clf}", "--file", "noise.txt"], ["noise.txt"],
             {"noise.txt": NOISE}),
        Case("fill-mask without [MASK]", ["fill-mask", f"{fx}/{bert}", "no mask here"], ["[MASK]"]),
        Case("fill-mask top-k 0", ["fill-mask", f"{fx}/{bert}", "a [MASK] b", "--top-k", "0"], ["top_k"]),
        Case("generate with an encoder", ["generate", f"{fx}/{bert}"], ["decoder"]),
        Case("model dir is a file", ["generate", "model.bin"], ["model.bin"], {"model.bin": b"\0" * 10}),
        Case("demo --steps 0", ["demo", "--steps", "0"], ["--steps", "0"], timeout=30),
        Case("demo --steps -3", ["demo", "--steps", "-3"], ["--steps", "-3"], timeout=30),
        Case("demo --run-dir is a file", ["demo", "--steps", "2", "--run-dir", "taken"], ["taken"], {"taken": "x"},
             timeout=30),
        Case("unknown option", ["eval", f"{fx}/{gpt}", "--data", "x", "--bogus"], ["--bogus"]),
        Case("no command", [], ["command"]),
    ]
    # a slower sweep: each hostile data file through every reader (train as text, classify, eval, classify --file)
    hostile = {"noise.txt": NOISE, "pic.txt": PNG, "nul.txt": b"\0" * 3000, "half.txt": b"ok\n" + NOISE}
    for name, content in hostile.items():
        c.append(Case(f"eval on {name}", ["eval", f"{fx}/{gpt}", "--data", name], [name], {name: content}, slow=True))
        c.append(Case(f"classify --file {name}", ["classify", f"{fx}/{clf}", "--file", name], [name], {name: content},
                      slow=True))
        csv = name.replace(".txt", ".csv")
        c.append(_train(f"classify data.train {csv}", ["train.objective='classify'", f"data.train='{csv}'"], [csv],
                        {csv: content}, slow=True))
        jsonl = name.replace(".txt", ".jsonl")
        c.append(_train(f"train on {jsonl}", [f"data.paths=['{jsonl}']"], [jsonl], {jsonl: content}, slow=True))
    for value in ["nan", "inf", "-inf", "1e-300", "1e308", "0"]:
        c.append(Case(f"top-p {value}", ["generate", f"{fx}/{gpt}", f"--top-p={value}"], ["top_p"],
                      slow=True) if value not in ("1e-300",) else
                 Case(f"top-p {value}", ["generate", f"{fx}/{gpt}", "--top-p", value, "--max-new-tokens", "3"], None,
                      slow=True))
        if value not in ("1e308",):
            good = value in ("0",)
            c.append(Case(f"temperature {value}", ["generate", f"{fx}/{gpt}", f"--temperature={value}",
                                                   "--max-new-tokens", "3"], None if good else ["temperature"],
                          slow=True))
    for key, value in [("model.n_layer", "0"), ("model.n_embd", "'wide'"), ("train.batch_size", "0"),
                       ("model.block_size", "1e12"), ("train.eval_steps", "0"),
                       ("tokenizer.vocab_size", "-1"), ("tokenizer.vocab_size", "1e9"), ("data.val_fraction", "1.0"),
                       ("train.warmup_steps", "-1"), ("train.device", "'tpu'"), ("model.arch", "'gpt5'"),
                       ("train.seed", "1.5"), ("train.keep_last", "0"), ("data.paths", "'corpus.txt'")]:
        bad_key = key.split(".")[1]
        c.append(_train(f"{key}={value}", [f"{key}={value}"], [bad_key], slow=True, timeout=30))
    return c


# -- running -----------------------------------------------------------------------------------------------
class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang()


def build_fixtures(folder: Path) -> None:
    """Tiny trained models (a GPT run with a checkpoint, a BERT, a classifier) that cases point at."""
    from lmforge.app.training import train_from_config
    from lmforge.config import build_config

    (folder / "corpus.txt").write_text(corpus(), encoding="utf-8")
    (folder / "labels.csv").write_text(LABELS, encoding="utf-8")
    small = {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16}
    train = {"max_steps": 2, "batch_size": 4, "warmup_steps": 1, "eval_every": 0, "save_every": 0, "log_every": 1}
    for name, extra in [("gpt", {"data": {"paths": [str(folder / "corpus.txt")]}}),
                        ("bert", {"model": {**small, "arch": "bert"}, "tokenizer": {"vocab_size": 120},
                                  "data": {"paths": [str(folder / "corpus.txt")]}}),
                        ("clf", {"data": {"train": str(folder / "labels.csv")}, "train": {**train, "objective": "classify"}})]:
        raw = {"model": small, "train": train, **extra, "run": {"dir": str(folder / name)}}
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            train_from_config(build_config(raw, name), progress=False)


def _argv(case: Case, fixtures: Path) -> list[str]:
    return [os.fsdecode(a) if isinstance(a, bytes) else a.replace("{fixtures}", str(fixtures)) for a in case.argv]


def run_case(case: Case, fixtures: Path, scratch: Path) -> dict:
    """Run one case in a fresh folder; returns {name, outcome, code, stderr, stdout}."""
    from lmforge.cli import main

    folder = Path(tempfile.mkdtemp(prefix="case-", dir=scratch))
    for name, content in case.files.items():
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    if case.setup:
        case.setup(folder, fixtures)
    out, err = io.StringIO(), io.StringIO()
    code, escaped = None, None
    old = os.getcwd()
    os.chdir(folder)
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(case.timeout)
    began = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(_argv(case, fixtures))
    except _Hang:
        escaped = "hang"
    except SystemExit as stop:  # argparse
        code = stop.code if isinstance(stop.code, int) else 1
    except BaseException:  # noqa: BLE001 (any escape is a crash a user would see)
        escaped = traceback.format_exc(limit=-3)
    finally:
        signal.alarm(0)
        os.chdir(old)
    seconds = time.perf_counter() - began
    stderr, stdout = err.getvalue(), out.getvalue()
    written = [str(p.relative_to(folder)) for p in folder.rglob("*")
               if p.name in ("final", "model.safetensors") or p.parent.name == "checkpoints"]
    outcome = _judge(case, code, escaped, stderr, stdout, written)
    shutil.rmtree(folder, ignore_errors=True)
    return {"name": case.name, "outcome": outcome, "code": code, "seconds": round(seconds, 2),
            "stderr": (escaped if escaped and escaped != "hang" else stderr)[-600:], "stdout": stdout[-200:]}


def _judge(case: Case, code, escaped, stderr: str, stdout: str, written: list[str]) -> str:
    if escaped == "hang":
        return "hang"
    if escaped or "Traceback" in stderr:
        return "crash"
    if case.expect is None:
        return "ok" if code == 0 else "refused"
    if code == 0:
        return "accepted"
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    message = stderr[stderr.find("error:"):].lower() if lines else ""
    if not lines or not all(word.lower() in message for word in case.expect):
        return "unclear"
    if stdout.strip() or written:
        return "partial"
    return "ok"


def run_cases(selected: list[Case], progress: bool = False) -> list[dict]:
    """Build the fixtures once, then run every case; memory is capped so a runaway case cannot take the machine."""
    limit = 8 << 30
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    with tempfile.TemporaryDirectory(prefix="lmforge-hostile-") as scratch:
        scratch = Path(scratch)
        fixtures = scratch / "fixtures"
        fixtures.mkdir()
        build_fixtures(fixtures)
        rows = []
        for case in selected:
            rows.append(run_case(case, fixtures, scratch))
            if progress:
                print(f"{rows[-1]['outcome']:9s} {case.name}", file=sys.__stderr__, flush=True)
        return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slow", action="store_true", help="the whole sweep, not only the fast cases")
    parser.add_argument("--json", action="store_true", help="one JSON row per case on stdout")
    parser.add_argument("--only", help="run only cases whose name holds this text")
    args = parser.parse_args(argv)
    selected = [c for c in cases() if (args.slow or not c.slow) and (not args.only or args.only in c.name)]
    rows = run_cases(selected, progress=not args.json)
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        for row in rows:
            if row["outcome"] != "ok":
                print(f"--- {row['outcome']}: {row['name']} (exit {row['code']})\n{row['stderr'].strip()}\n")
        counts = Counter(row["outcome"] for row in rows)
        print(f"{len(rows)} cases: " + ", ".join(f"{k} {counts[k]}" for k in OUTCOMES if counts[k]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
