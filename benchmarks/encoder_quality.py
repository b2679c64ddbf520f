"""Quality bar of the encoder side: does masked-LM pretraining on unlabeled text help classification?

On a real labeled set from ../shared/data (--task) it trains
  (a) a BERT classifier from scratch on the labeled training sentences only (tokenizer from them too);
  (b) the same model and the same fine-tuning recipe, after MLM pretraining on unlabeled text: first on the
      sentences of SST's training split (stsa.fine.train, labels dropped; no dev/test text) plus, unless
      --in-domain-only, public-domain English (four Gutenberg novels, WikiText-2 valid), then (--in-domain-steps)
      on the task's own training sentences alone, labels dropped;
and prints test accuracy (best-on-dev weights: early stopping on dev accuracy) and the CPU cost of each.

Tasks: sst2 (SST-2 sentence level: 6,920 train / 872 dev / 1,821 test, 2 classes) and trec (TREC question
classification: 5,452 train of which 500 held out as dev / 500 test, 6 coarse classes). The general pretraining
does not depend on the task, so one --pretrained model serves both; its in-domain phase (if any) does.
The defaults are the measured recipe: TREC, 4 layers x 256, rotary positions, bf16 autocast, [CLS] pooling,
5000 general MLM steps and no in-domain phase (TREC's questions are never seen before fine-tuning).

    python benchmarks/encoder_quality.py --pretrained /tmp/mlm  # TREC, ~30 min on 2 cores (pretraining 24 of them)
    python benchmarks/encoder_quality.py --pretrained /tmp/mlm --seeds 1 2 3 4 5 6      # reuse that pretraining
    python benchmarks/encoder_quality.py --task sst2 --in-domain-steps 1200 --pretrained /tmp/sst-mlm  # ~65 min
    python benchmarks/encoder_quality.py --task sst2 --train-size 1000 --pretrained /tmp/sst-mlm  # a label budget
    python benchmarks/encoder_quality.py --layers 2 --n-embd 128 --pretrain-steps 4000 --pretrained /tmp/small  # ~15 min
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from lmforge.api import LM

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATA = SHARED / "sst2-sentence"
TREC_CLASSES = ["DESC", "ENTY", "ABBR", "HUM", "LOC", "NUM"]  # the numbers 0-5 of TREC.*.all, by their Li & Roth names
MODEL = dict(n_layer=4, n_head=4, n_embd=256, block_size=64, dropout=0.1, norm_position="post", position="rope")


def read_labeled_lines(path: Path, encoding: str = "utf-8") -> list[tuple[str, str]]:
    """(label, sentence) pairs of an stsa.* or TREC.*.all file ('<label> <sentence>' per line)."""
    rows = []
    for line in path.read_text(encoding=encoding).splitlines():
        label, _, text = line.partition(" ")
        if text:
            rows.append((label, text))
    return rows


def task_splits(task: str) -> tuple[list, list, list]:
    """(train, dev, test) rows of (label, sentence) for a task. TREC has no dev split: 500 training questions,
    drawn with a fixed seed, are held out for early stopping (both setups see the same 4,952)."""
    if task == "sst2":
        return tuple(read_labeled_lines(DATA / f"stsa.binary.{split}") for split in ("train", "dev", "test"))
    def trec(name: str) -> list[tuple[str, str]]:  # the files are ISO-8859-1; labels 0-5 become class names
        return [(TREC_CLASSES[int(label)], text)
                for label, text in read_labeled_lines(SHARED / "trec" / name, encoding="latin-1")]
    train = trec("TREC.train.all")
    random.Random(0).shuffle(train)
    return train[500:], train[:500], trec("TREC.test.all")


def write_csv(rows, path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows((text, label) for label, text in rows)
    return path


def unlabeled_text(folder: Path, general: bool = True) -> tuple[Path, list[str]]:
    """The pretraining text: SST's training sentences without labels, written to folder/unlabeled.txt, and the
    list of sources to pretrain on (that file, plus four Gutenberg novels and WikiText-2 valid when `general`)."""
    corpus = folder / "unlabeled.txt"
    corpus.write_text("\n".join(text for _, text in read_labeled_lines(DATA / "stsa.fine.train")) + "\n", encoding="utf-8")
    sources = [corpus]
    if general:
        shared = DATA.parent
        sources += [shared / "wikitext2-tokenized" / "valid.txt"]
        sources += [shared / "gutenberg" / f"pg{n}.txt" for n in (1342, 84, 64317, 2641)]
    return corpus, [str(p) for p in sources if p.is_file()]


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads): the cost on a shared machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def finetune(lm: LM, train: Path, dev: Path, test: Path, steps: int, seed: int, lr: float, head_lr: float | None,
             layer_decay: float, pooling: str = "cls", dtype: str = "float32") -> dict:
    began_wall, began_cpu = time.perf_counter(), cpu_seconds()
    lm.set_pooling(pooling)
    lm.config.data.test = str(dev)  # validation = dev; early stopping picks the best-on-dev weights
    result = lm.fit(train, objective="classify", max_steps=steps, batch_size=32, lr=lr, min_lr=lr / 10,
                    head_lr=head_lr, layer_lr_decay=layer_decay, warmup_steps=steps // 10, weight_decay=0.01,
                    eval_every=max(1, steps // 10), patience=4, seed=seed, dtype=dtype, progress=False)
    report = lm.evaluate(test)
    return {"test_accuracy": report["accuracy"], "test_macro_f1": report["macro_f1"], "dev_accuracy": result.best,
            "steps": result.step, "wall_s": time.perf_counter() - began_wall, "cpu_s": cpu_seconds() - began_cpu}


def mlm_phase(base: LM, sources: list[str], steps: int, lr: float, warmup: int, args) -> dict:
    """Masked-LM training of `base` on `sources` for `steps`: its last validation metrics and its cost."""
    began_wall, began_cpu = time.perf_counter(), cpu_seconds()
    result = base.fit(sources, objective="mlm", max_steps=steps, batch_size=args.pretrain_batch, lr=lr,
                      min_lr=lr / 10, warmup_steps=warmup, weight_decay=0.01, dtype=args.dtype,
                      eval_every=max(1, steps // 5), eval_steps=10, progress=False)
    return {"eval": result.eval, "wall_s": time.perf_counter() - began_wall, "cpu_s": cpu_seconds() - began_cpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["sst2", "trec"], default="trec",
                        help="the labeled set: SST-2 sentiment (2 classes) or TREC question type (6 classes)")
    parser.add_argument("--train-size", type=int, default=None,
                        help="keep only this many labeled training sentences (a fixed random subset, the same for both "
                             "setups), to see how the gap moves with fewer labels. The unlabeled text is unchanged")
    parser.add_argument("--pretrain-steps", type=int, default=5000)
    parser.add_argument("--finetune-steps", type=int, default=800)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--lr", type=float, default=5e-4, help="fine-tuning learning rate, both setups")
    parser.add_argument("--head-lr", type=float, default=None, help="fine-tuning: the head's rate (default --lr)")
    parser.add_argument("--layer-decay", type=float, default=1.0, help="fine-tuning: layer-wise LR decay")
    parser.add_argument("--pretrained", type=Path, default=None,
                        help="reuse (or, if absent, write) the MLM-pretrained model directory here")
    parser.add_argument("--only", choices=["a", "b"], default=None, help="run one setup only")
    parser.add_argument("--in-domain-only", dest="general_text", action="store_false",
                        help="pretrain on the SST sentences only, without the public-domain English (Gutenberg "
                             "novels, WikiText-2 valid) that is added by default")
    parser.add_argument("--pretrain-lr", type=float, default=2e-3)
    parser.add_argument("--in-domain-steps", type=int, default=0,
                        help="after the general pretraining, continue the MLM on the task's training sentences alone "
                             "(labels dropped) for this many steps at half the rate (task-adaptive pretraining)")
    parser.add_argument("--pretrain-batch", type=int, default=64)
    parser.add_argument("--layers", type=int, default=MODEL["n_layer"])
    parser.add_argument("--n-embd", type=int, default=MODEL["n_embd"])
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16",
                        help="autocast dtype of every training step, pretraining and fine-tuning (bfloat16 uses AMX)")
    parser.add_argument("--block-size", type=int, default=MODEL["block_size"])
    parser.add_argument("--norm-position", choices=["post", "pre"], default=MODEL["norm_position"],
                        help="LayerNorm placement in the encoder blocks, for both (a) and (b)")
    parser.add_argument("--position", choices=["learned", "rope"], default=MODEL["position"],
                        help="position encoding, for both (a) and (b): BERT's learned absolute positions, or rotary")
    parser.add_argument("--pooling", choices=["cls", "mean"], default="cls",
                        help="what the classifier reads when fine-tuning, for both (a) and (b)")
    parser.add_argument("--more-pretrain-steps", type=int, default=0,
                        help="continue the cached --pretrained model's MLM for this many steps (costs add up), "
                             "so a long pretraining can be spread over several short runs")
    args = parser.parse_args()
    MODEL.update(n_layer=args.layers, n_embd=args.n_embd, block_size=args.block_size, norm_position=args.norm_position,
                 position=args.position)
    needed = [DATA] + ([SHARED / "trec"] if args.task == "trec" else [])
    if not all(folder.is_dir() for folder in needed):
        print(f"skipped: {needed} must exist (SST-2 and TREC; see ../shared/data/SOURCES.md)")
        return 0
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-") as scratch:
        scratch = Path(scratch)
        train_rows, dev_rows, test_rows = task_splits(args.task)
        labeled = train_rows  # with a label budget, a fixed subset; the unlabeled text below keeps them all
        if args.train_size:
            labeled = random.Random(1).sample(train_rows, min(args.train_size, len(train_rows)))
        train, dev, test = (write_csv(part, scratch / f"{name}.csv")
                            for part, name in ((labeled, "train"), (dev_rows, "dev"), (test_rows, "test")))
        corpus, sources = unlabeled_text(scratch, args.general_text)
        if args.task == "sst2":
            in_domain = corpus  # SST's training sentences (stsa.fine.train: also those the binary set leaves out)
        else:
            in_domain = scratch / f"{args.task}-unlabeled.txt"
            in_domain.write_text("\n".join(text for _, text in train_rows) + "\n", encoding="utf-8")
        sizes = {"train": len(labeled), "dev": len(dev_rows), "test": len(test_rows),
                 "unlabeled_sentences": len(corpus.read_text().splitlines())}
        print(f"{args.task} sentences: {sizes}; model {MODEL}", flush=True)

        # (b) pretraining once, shared by every seed's fine-tuning
        base_dir = args.pretrained or scratch / "pretrained"
        cost_file = base_dir / "pretraining_cost.json"
        if args.only == "a":
            pretrain = None  # (a) alone needs no pretraining
        elif cost_file.is_file():
            pretrain = json.loads(cost_file.read_text())
            saved = {"norm_position": "post", "position": "learned", **json.loads((base_dir / "config.json").read_text())["model"]}
            differ = {k: (saved[k], v) for k, v in MODEL.items() if k != "dropout" and saved.get(k) != v}
            if differ:  # (a) would be built with other settings than the cached (b): not a fair comparison
                print(f"{base_dir} was pretrained with other model settings (saved, asked): {differ}")
                return 2
            adapted = pretrain.get("in_domain_task", "sst2") if pretrain.get("in_domain_steps") else None
            if adapted not in (None, args.task):  # its in-domain phase read another task's sentences
                print(f"{base_dir} was adapted to {adapted}'s sentences; pretrain another one for {args.task}")
                return 2
            print(f"reusing {base_dir}: {pretrain}", flush=True)
            if args.more_pretrain_steps:  # continue the general phase; costs add up
                base = LM.from_pretrained(base_dir)
                more = mlm_phase(base, sources, args.more_pretrain_steps, args.pretrain_lr / 2, 100, args)
                pretrain.update({**more["eval"], "steps": pretrain["steps"] + args.more_pretrain_steps,
                                 "wall_s": pretrain["wall_s"] + more["wall_s"], "cpu_s": pretrain["cpu_s"] + more["cpu_s"]})
                base.save(base_dir)
                cost_file.write_text(json.dumps(pretrain))
        else:
            # the vocabulary comes from the in-domain sentences; the general phase reads every unlabeled source,
            # then the in-domain phase (if any) the SST sentences alone
            base = LM.new("bert", tokenizer="wordpiece", vocab_size=args.vocab_size, lowercase=True, corpus=corpus,
                          **MODEL)
            general = mlm_phase(base, sources, args.pretrain_steps, args.pretrain_lr, 300, args)
            pretrain = {"steps": args.pretrain_steps, "sources": [Path(p).name for p in sources],
                        "wall_s": general["wall_s"], "cpu_s": general["cpu_s"], **general["eval"]}
            if args.in_domain_steps:
                domain = mlm_phase(base, [str(in_domain)], args.in_domain_steps, args.pretrain_lr / 2, 100, args)
                pretrain.update({"in_domain_steps": args.in_domain_steps, "in_domain_task": args.task,
                                 "in_domain_eval": domain["eval"],
                                 "wall_s": general["wall_s"] + domain["wall_s"],
                                 "cpu_s": general["cpu_s"] + domain["cpu_s"]})
            base.save(base_dir)
            cost_file.write_text(json.dumps(pretrain))
        if pretrain:
            print(f"MLM pretraining: {pretrain['steps']} + {pretrain.get('in_domain_steps', 0)} in-domain steps, "
                  f"{pretrain['wall_s'] / 60:.1f} min wall, "
                  f"{pretrain['cpu_s'] / 60:.1f} CPU min, val masked-token accuracy {pretrain['val_mlm_accuracy']:.3f}",
                  flush=True)
        recipe = dict(lr=args.lr, head_lr=args.head_lr, layer_decay=args.layer_decay, pooling=args.pooling,
                      dtype=args.dtype)

        results = []
        for seed in args.seeds:
            a = b = None
            if args.only != "b":
                scratch_lm = LM.new("bert", tokenizer="wordpiece", vocab_size=args.vocab_size, lowercase=True,
                                    corpus=train, **MODEL)  # labeled data only: the tokenizer too
                a = finetune(scratch_lm, train, dev, test, args.finetune_steps, seed, **recipe)
                print(f"seed {seed} (a) scratch:    {json.dumps(a)}", flush=True)
            if args.only != "a":
                b = finetune(LM.from_pretrained(base_dir), train, dev, test, args.finetune_steps, seed, **recipe)
                print(f"seed {seed} (b) pretrained: {json.dumps(b)}", flush=True)
            results.append((a, b))
        if args.only:
            return 0

    mean = lambda key, i: sum(r[i][key] for r in results) / len(results)  # noqa: E731
    a_acc, b_acc = mean("test_accuracy", 0), mean("test_accuracy", 1)
    print("\n| setup | test accuracy | test macro-F1 | CPU min | wall min |")
    print("|---|---|---|---|---|")
    print(f"| (a) from scratch, labeled data only | {a_acc:.4f} | {mean('test_macro_f1', 0):.4f} | "
          f"{mean('cpu_s', 0) / 60:.1f} | {mean('wall_s', 0) / 60:.1f} |")
    print(f"| (b) MLM-pretrained, then fine-tuned | {b_acc:.4f} | {mean('test_macro_f1', 1):.4f} | "
          f"{(pretrain['cpu_s'] + mean('cpu_s', 1)) / 60:.1f} (pretrain {pretrain['cpu_s'] / 60:.1f}) | "
          f"{(pretrain['wall_s'] + mean('wall_s', 1)) / 60:.1f} |")
    diffs = [100 * (b["test_accuracy"] - a["test_accuracy"]) for a, b in results]
    spread = ""
    if len(diffs) > 1:  # standard error of the mean paired difference
        mean_diff = sum(diffs) / len(diffs)
        spread = f" +- {(sum((d - mean_diff) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs)) ** 0.5:.2f}"
    print(f"\n{args.task}: (b) - (a): {100 * (b_acc - a_acc):+.2f}{spread} accuracy points over {len(results)} "
          f"seed(s); per seed {', '.join(f'{d:+.1f}' for d in diffs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
