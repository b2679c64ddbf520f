"""Quality bar of the encoder side: does masked-LM pretraining on unlabeled text help classification?

On SST-2 (sentence level, ../shared/data/sst2-sentence: 6,920 train / 872 dev / 1,821 test) it trains
  (a) a BERT classifier from scratch on the labeled training sentences only (tokenizer from them too);
  (b) the same model and the same fine-tuning recipe, after MLM pretraining on unlabeled text: first on
      the sentences of SST's training split (stsa.fine.train, labels dropped; no dev/test text) plus, unless
      --in-domain-only, public-domain English from ../shared/data (four Gutenberg novels, WikiText-2 valid),
      then (--in-domain-steps) on the SST sentences alone;
and prints test accuracy (best-on-dev weights: early stopping on dev accuracy) and the CPU cost of each.
The defaults are the measured recipe: 4 layers x 256, rotary positions, bf16 autocast, [CLS] pooling.

    python benchmarks/encoder_quality.py                        # ~65 min on 2 cores (pretraining ~30 of them)
    python benchmarks/encoder_quality.py --pooling mean --pretrained /tmp/sst-mlm  # write, then reuse a pretraining
    python benchmarks/encoder_quality.py --layers 2 --n-embd 128 --pretrain-steps 4000 --in-domain-steps 0  # ~15 min
"""
from __future__ import annotations

import argparse
import csv
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from lmforge.api import LM

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2-sentence"
MODEL = dict(n_layer=4, n_head=4, n_embd=256, block_size=64, dropout=0.1, norm_position="post", position="rope")


def read_sst(path: Path) -> list[tuple[str, str]]:
    """(label, sentence) pairs of an stsa.* file ('<label> <sentence>' per line)."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        label, _, text = line.partition(" ")
        if text:
            rows.append((label, text))
    return rows


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
    corpus.write_text("\n".join(text for _, text in read_sst(DATA / "stsa.fine.train")) + "\n", encoding="utf-8")
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
    parser.add_argument("--in-domain-steps", type=int, default=1200,
                        help="after the general pretraining, continue the MLM on the SST sentences alone for this many "
                             "steps at half the rate (task-adaptive pretraining)")
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
    if not DATA.is_dir():
        print(f"skipped: {DATA} is absent (it holds SST-2; see ../shared/data/SOURCES.md)")
        return 0
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-") as scratch:
        scratch = Path(scratch)
        train = write_csv(read_sst(DATA / "stsa.binary.train"), scratch / "train.csv")
        dev = write_csv(read_sst(DATA / "stsa.binary.dev"), scratch / "dev.csv")
        test = write_csv(read_sst(DATA / "stsa.binary.test"), scratch / "test.csv")
        corpus, sources = unlabeled_text(scratch, args.general_text)
        sizes = {"train": sum(1 for _ in open(train)) - 1, "dev": sum(1 for _ in open(dev)) - 1,
                 "test": sum(1 for _ in open(test)) - 1, "unlabeled_sentences": len(corpus.read_text().splitlines())}
        print(f"SST-2 sentences: {sizes}; model {MODEL}", flush=True)

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
                domain = mlm_phase(base, [str(corpus)], args.in_domain_steps, args.pretrain_lr / 2, 100, args)
                pretrain.update({"in_domain_steps": args.in_domain_steps, "in_domain_eval": domain["eval"],
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
    print(f"\n(b) - (a): {100 * (b_acc - a_acc):+.2f} accuracy points over {len(results)} seed(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
