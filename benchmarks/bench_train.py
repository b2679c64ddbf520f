"""Training speed and memory side by side: lmforge's trainer vs a plain PyTorch loop over Hugging Face
transformers models (GPT2LMHeadModel, LlamaForCausalLM, BertForMaskedLM) of the same shapes.

Both sides do identical work: the same batches (drawn by the same task inside the timed loop), fused AdamW
over the same parameter groups (transformers' Trainer default on torch >= 2.8), gradient clipping at 1.0,
the same precision and thread count. Each round runs every variant for a few steps, A B A B ..., in this one
process; the first round is a warm-up; medians over the rest give tokens/s and the ratio. transformers runs
whichever of attn_implementation "sdpa" / "eager" a short probe finds faster at that shape. The fp32 and bf16
matmul peaks (torch.mm 2048x2048) are measured in the same run for MFU. Peak RSS: each side trains each shape
in its own child process (ru_maxrss is per process). Writes the "train" section of benchmarks/RESULTS.md and
exits 0 whatever the ratios.

    python benchmarks/bench_train.py                     # all rows (~3-4 min on 2 cores)
    python benchmarks/bench_train.py --rows gpt-small --rounds 3 --no-write
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common import shared_file
from results import machine, matmul_peak, write_section

from lmforge.config import ModelConfig, TrainConfig
from lmforge.data.tokens import TokenWindows
from lmforge.models import attend as attend_module
from lmforge.models import build_model, count_parameters
from lmforge.tasks.lm import CausalLMTask, MaskedLMTask
from lmforge.tokenizer import Tokenizer
from lmforge.train.optim import make_optimizer
from lmforge.train.kernels import onednn_available
from lmforge.train.trainer import train


@dataclass(frozen=True)
class Row:
    name: str
    arch: str
    n_layer: int
    n_head: int
    n_embd: int
    block: int
    batch: int
    n_kv_head: int | None = None
    steps: int = 2  # per variant per round
    target: float = 1.3


ROWS = {
    "gpt-small": Row("gpt-small", "gpt", 4, 4, 128, 64, 12, steps=10, target=1.5),
    "gpt-6x384": Row("gpt-6x384", "gpt", 6, 6, 384, 256, 8, target=1.25),
    "llama-6x384": Row("llama-6x384", "llama", 6, 6, 384, 256, 8, n_kv_head=2),
    "bert-4x256": Row("bert-4x256", "bert", 4, 4, 256, 128, 16, steps=3),
}
BERT_VOCAB = 8000


def shakespeare() -> str:
    return shared_file("tinyshakespeare", "input.txt").read_text()


def make_task(row: Row):
    """The task both sides draw their batches from (char-level for the decoders, WordPiece 8k for BERT)."""
    text = shakespeare()
    if row.arch == "bert":
        tok = Tokenizer.train("wordpiece", [text], vocab_size=BERT_VOCAB)
        tokens = np.asarray(tok.encode(text), dtype=np.int32)
        return MaskedLMTask(tokens, tok, row.block, 0.1, seed=0), tok.vocab_size
    tok = Tokenizer.train("char", [text])
    windows = TokenWindows(np.asarray(tok.encode(text), dtype=np.uint16), row.block, 0.1)
    return CausalLMTask(windows, seed=0), tok.vocab_size


class Shifted:
    """The task with its steps moved on by `offset`: every round trains on fresh batches, the same for each side."""

    def __init__(self, task, offset: int):
        self.task, self.offset = task, offset

    def train_batch(self, step: int, micro: int, batch_size: int) -> dict:
        return self.task.train_batch(step + self.offset, micro, batch_size)

    def __getattr__(self, name):
        return getattr(self.task, name)


def train_config(row: Row, steps: int, dtype: str) -> TrainConfig:
    # constant lr, no evaluation, checkpoints or TensorBoard: the loop itself is what is timed
    return TrainConfig(max_steps=steps, batch_size=row.batch, lr=1e-3, min_lr=1e-3, warmup_steps=0, beta2=0.99,
                       weight_decay=0.1, grad_clip=1.0, eval_every=0, save_every=0, grad_norms_every=0,
                       log_every=steps, tensorboard=False, dtype=dtype, device="cpu")


def ours_model(row: Row, vocab: int):
    cfg = ModelConfig(arch=row.arch, n_layer=row.n_layer, n_head=row.n_head, n_kv_head=row.n_kv_head,
                      n_embd=row.n_embd, block_size=row.block, vocab_size=vocab)
    return build_model(cfg)


def hf_model(row: Row, vocab: int, attn: str):
    import transformers as hf

    if row.arch == "gpt":
        config = hf.GPT2Config(n_layer=row.n_layer, n_head=row.n_head, n_embd=row.n_embd, n_positions=row.block,
                               vocab_size=vocab, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
        cls = hf.GPT2LMHeadModel
    elif row.arch == "llama":
        mine = ours_model(row, vocab).config
        config = hf.LlamaConfig(hidden_size=row.n_embd, intermediate_size=mine.intermediate_size,
                                num_hidden_layers=row.n_layer, num_attention_heads=row.n_head,
                                num_key_value_heads=row.n_kv_head, max_position_embeddings=row.block,
                                vocab_size=vocab, rms_norm_eps=1e-5, tie_word_embeddings=True)
        cls = hf.LlamaForCausalLM
    else:
        config = hf.BertConfig(vocab_size=vocab, hidden_size=row.n_embd, num_hidden_layers=row.n_layer,
                               num_attention_heads=row.n_head, intermediate_size=4 * row.n_embd,
                               max_position_embeddings=row.block, hidden_dropout_prob=0,
                               attention_probs_dropout_prob=0)
        cls = hf.BertForMaskedLM
    config._attn_implementation = attn
    model = cls(config)
    if model.config._attn_implementation != attn:
        raise RuntimeError(f"transformers built {model.config._attn_implementation}, not {attn}")
    return model


@contextlib.contextmanager
def sdpa_only():
    """lmforge's attention as it was: SDPA for every shape and dtype."""
    saved = attend_module.use_explicit
    attend_module.use_explicit = lambda q, k, dropout_p: False
    try:
        yield
    finally:
        attend_module.use_explicit = saved


class Ours:
    """lmforge's own trainer (train.train) running `steps` optimizer steps per call; plain=True: without this
    issue's speed-ups (torch's MKL linear, SDPA attention), for the before/after column."""

    def __init__(self, row: Row, model, task, dtype: str, plain: bool = False, compile: bool = False,
                 checkpoint: bool = False):
        self.row, self.model, self.task, self.dtype, self.losses = row, model, task, dtype, []
        self.plain, self.compile, self.checkpoint = plain, compile, checkpoint

    def __call__(self, offset: int, steps: int) -> float:
        records = []
        cfg = train_config(self.row, steps, self.dtype).model_copy(
            update={"onednn_linear": not self.plain, "compile": self.compile,
                    "checkpoint_activations": self.checkpoint})
        began = time.perf_counter()
        with sdpa_only() if self.plain else contextlib.nullcontext():
            train(self.model, Shifted(self.task, offset), cfg, None, progress=False,
                  hooks=[lambda step, record: records.append(record["loss"])])
        seconds = time.perf_counter() - began
        self.losses.extend(records)
        return seconds


class Theirs:
    """A plain loop over a transformers model: the same batches, loss, clipping and fused AdamW."""

    def __init__(self, row: Row, model, task, dtype: str):
        self.row, self.model, self.task = row, model, task
        self.optimizer = make_optimizer(model, train_config(row, 1, dtype))
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16")
        self.params = [p for p in model.parameters() if p.requires_grad]

    def __call__(self, offset: int, steps: int) -> float:
        self.model.train()
        began = time.perf_counter()
        for step in range(steps):
            batch = self.task.train_batch(step + offset, 0, self.row.batch)
            with self.autocast:
                if self.row.arch == "bert":  # lmforge's MASKED labels use -100 as transformers does
                    loss = self.model(input_ids=batch["ids"], labels=batch["labels"]).loss
                else:
                    logits = self.model(input_ids=batch["ids"]).logits
            if self.row.arch != "bert":
                loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), batch["targets"].reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - began


def pick_attention(row: Row, vocab: int, task, dtype: str) -> tuple[str, dict[str, float]]:
    """transformers' faster attention at this shape: a warm-up and 3 timed steps of each, alternating."""
    runners = {attn: Theirs(row, hf_model(row, vocab, attn), task, dtype) for attn in ("sdpa", "eager")}
    times = {attn: [] for attn in runners}
    for round_ in range(4):
        for attn, runner in runners.items():
            seconds = runner(10_000 + round_, 1)
            if round_:
                times[attn].append(seconds)
    medians = {attn: statistics.median(t) for attn, t in times.items()}
    return min(medians, key=medians.get), medians


def interleave(variants: dict, rounds: int, steps: int) -> dict[str, float]:
    """Median seconds per step of each variant, run A B A B ... for `rounds` rounds after a warm-up round."""
    times = {name: [] for name in variants}
    for round_ in range(rounds + 1):
        for name, runner in variants.items():
            seconds = runner(round_ * steps, steps) / steps
            if round_:
                times[name].append(seconds)
    return {name: statistics.median(t) for name, t in times.items()}


def flops_per_token(model, row: Row) -> float:
    """6N + 12 L T d; N leaves out the position table (no matmul), the tied word embedding counts once."""
    n = count_parameters(model)
    if getattr(model, "wpe", None) is not None:
        n -= model.wpe.weight.numel()
    return 6 * n + 12 * row.n_layer * row.block * row.n_embd


# ---- peak RSS, one side and one shape per child process ----

def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(side: str, row: Row, steps: int) -> None:
    """Train `steps` steps of one side on one shape; print the RSS before the model and the peak, in MiB."""
    task, vocab = make_task(row)
    # torch modules both sides load (fused AdamW's step imports torch._dynamo, ~60 MiB; transformers imports it
    # at once): in the baseline for both, so import order does not pass for training memory
    import torch._dynamo  # noqa: F401
    if side == "theirs":
        import transformers  # noqa: F401 - its import counts in the baseline, not in training
        from transformers import BertForMaskedLM, GPT2LMHeadModel, LlamaForCausalLM  # noqa: F401
    import gc

    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM: the data preparation's peak does not count
    except OSError:
        print("warning: cannot reset the peak RSS; it may include data preparation", file=sys.stderr)
    base = _status_kib("VmRSS")
    torch.manual_seed(0)
    if side.startswith("ours"):
        Ours(row, ours_model(row, vocab), task, "float32", checkpoint=side == "ours-ckpt")(0, steps)
    else:
        Theirs(row, hf_model(row, vocab, "sdpa"), task, "float32")(0, steps)
    print(json.dumps({"base_mib": base / 1024, "peak_mib": _status_kib("VmHWM") / 1024}))


def measure_rss(row: Row, steps: int = 3) -> dict[str, dict[str, float]]:
    out = {}
    for side in ("ours", "ours-ckpt", "theirs"):
        done = subprocess.run([sys.executable, __file__, "--child", side, "--rows", row.name, "--steps", str(steps)],
                              capture_output=True, text=True, check=True)
        out[side] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


# ---- the table ----

def onednn_peak(size: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of the same 2048^3 float32 product through oneDNN (the kernel lmforge's CPU linear layers use)."""
    if not onednn_available():
        return 0.0
    a, b = torch.randn(size, size), torch.randn(size, size)
    op = torch.ops.mkldnn._linear_pointwise
    for _ in range(2):
        op(a, b, None, "none", [], "")
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        op(a, b, None, "none", [], "")
        best = min(best, time.perf_counter() - began)
    return 2 * size ** 3 / best


def peaks() -> dict[str, float]:
    return {"fp32": matmul_peak(torch.float32), "fp32 oneDNN": onednn_peak(), "bf16": matmul_peak(torch.bfloat16)}


def verdict(value: float, target: float, higher: bool = True) -> str:
    return "pass" if (value >= target if higher else value <= target) else "**miss**"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of: {', '.join(ROWS)}")
    parser.add_argument("--rounds", type=int, default=4, help="timed rounds after the warm-up round")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS child processes")
    parser.add_argument("--no-plain", action="store_true", help="skip lmforge without this issue's speed-ups")
    parser.add_argument("--compile", action="store_true",
                        help="add lmforge with train.compile=true (its compile time is printed, not in the medians)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--child", choices=["ours", "ours-ckpt", "theirs"], help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    rows = [ROWS[name] for name in args.rows.split(",")]
    if args.child:
        return child(args.child, rows[0], args.steps)

    began = time.perf_counter()
    peak = peaks()
    print(f"{machine()}; matmul peaks GFLOP/s: " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in peak.items()), flush=True)
    speed_lines, rss_lines, notes, changes = [], [], [], []
    for row in rows:
        task, vocab = make_task(row)
        tokens = row.batch * row.block
        torch.manual_seed(0)
        ours = ours_model(row, vocab)
        attn32, probe32 = pick_attention(row, vocab, task, "float32")
        variants = {"ours": Ours(row, ours, task, "float32"),
                    "theirs": Theirs(row, hf_model(row, vocab, attn32), task, "float32")}
        dtypes = ["float32"]
        if row.name == "gpt-6x384":
            dtypes.append("bfloat16")
            attn16, probe16 = pick_attention(row, vocab, task, "bfloat16")
            ours16 = copy.deepcopy(ours)  # same initial weights and batches as the fp32 run: comparable losses
            variants["ours bf16"] = Ours(row, ours16, task, "bfloat16")
            variants["theirs bf16"] = Theirs(row, hf_model(row, vocab, attn16), task, "bfloat16")
        if not args.no_plain and row.arch == "gpt":
            for dtype in dtypes:
                suffix = " bf16" if dtype == "bfloat16" else ""
                variants["plain" + suffix] = Ours(row, copy.deepcopy(ours), task, dtype, plain=True)
        if args.compile:
            compiled = Ours(row, copy.deepcopy(ours), task, "float32", compile=True)
            first = time.perf_counter()
            compiled(50_000, 1)
            compile_s = time.perf_counter() - first
            variants["compiled"] = compiled
        per_step = interleave(variants, args.rounds, row.steps)
        speed = {name: tokens / s for name, s in per_step.items()}
        ratio = per_step["theirs"] / per_step["ours"]
        shape = (f"{row.n_layer}L x {row.n_head}h{f'/{row.n_kv_head}kv' if row.n_kv_head else ''} x {row.n_embd}, "
                 f"block {row.block}, batch {row.batch}, vocab {vocab}")
        flops = flops_per_token(ours, row)
        mfu = {k: flops * speed["ours"] / v for k, v in peak.items() if v}
        extra = ""
        if row.name == "gpt-6x384":
            best = max(peak["fp32"], peak["fp32 oneDNN"])
            extra = (f"; MFU {mfu['fp32']:.0%} of torch.mm's fp32 peak, **{flops * speed['ours'] / best:.0%}** of "
                     f"oneDNN's (target >= 70% of the higher: {verdict(flops * speed['ours'] / best, 0.7)})")
        print(f"{row.name}: lmforge {speed['ours']:,.0f} tok/s, transformers ({attn32}) {speed['theirs']:,.0f} "
              f"tok/s, ratio {ratio:.2f}x{extra}  [probe s/step {probe32}]", flush=True)
        speed_lines.append(f"| {row.name} fp32 | {shape} | {speed['ours']:,.0f} | {speed['theirs']:,.0f} ({attn32}) "
                           f"| **{ratio:.2f}x** | >= {row.target}x | {verdict(ratio, row.target)}{extra} |")
        for name in ("plain", "plain bf16"):
            if name in speed:
                mine = "ours" if name == "plain" else "ours bf16"
                changes.append(f"{row.name} {'bf16' if 'bf16' in name else 'fp32'}: {speed[name]:,.0f} -> "
                               f"{speed[mine]:,.0f} tokens/s (**{per_step[name] / per_step[mine]:.2f}x**)")
        if "compiled" in speed:
            notes.append(f"{row.name} with train.compile=true: {speed['compiled']:,.0f} tokens/s after "
                         f"{compile_s:.0f} s of compiling (lmforge eager {speed['ours']:,.0f}).")
            print(notes[-1], flush=True)
        if row.name == "gpt-6x384":
            r32 = per_step["theirs"] / per_step["ours bf16"]
            r16 = per_step["theirs bf16"] / per_step["ours bf16"]
            mfu16 = flops * speed["ours bf16"] / peak["bf16"]
            drift = [abs(b - a) / a for a, b in zip(variants["ours"].losses, variants["ours bf16"].losses)]
            print(f"{row.name} bf16: lmforge {speed['ours bf16']:,.0f} tok/s, transformers bf16 ({attn16}) "
                  f"{speed['theirs bf16']:,.0f}; vs transformers fp32 {r32:.2f}x, vs bf16 {r16:.2f}x; "
                  f"loss gap to fp32 max {max(drift):.2%}  [probe {probe16}]", flush=True)
            speed_lines.append(
                f"| {row.name} bf16 autocast | same | {speed['ours bf16']:,.0f} | {speed['theirs bf16']:,.0f} "
                f"({attn16}) | **{r16:.2f}x** vs bf16, **{r32:.2f}x** vs fp32 | >= 1.3x bf16, >= 2.5x fp32 | "
                f"{verdict(r16, 1.3)} / {verdict(r32, 2.5)}; MFU {mfu16:.0%} of the bf16 peak |")
            notes.append(f"bf16 vs fp32 loss, same initial weights and batches ({len(drift)} points: each round's "
                         f"first step and the mean of its others): largest gap **{max(drift):.2%}** "
                         f"(target <= 2%: {verdict(max(drift), 0.02, False)}); "
                         f"fp32 {variants['ours'].losses[0]:.3f} -> {variants['ours'].losses[-1]:.3f}, "
                         f"bf16 {variants['ours bf16'].losses[0]:.3f} -> {variants['ours bf16'].losses[-1]:.3f}.")
        if not args.no_rss:
            rss = measure_rss(row)
            grow = {side: r["peak_mib"] - r["base_mib"] for side, r in rss.items()}
            r, rc = grow["ours"] / grow["theirs"], grow["ours-ckpt"] / grow["theirs"]
            print(f"{row.name} RSS: {rss}; training adds {grow['ours']:.0f} (checkpointed {grow['ours-ckpt']:.0f}) "
                  f"vs {grow['theirs']:.0f} MiB ({r:.2f}x, {rc:.2f}x)", flush=True)
            rss_lines.append(f"| {row.name} | {rss['ours']['peak_mib']:.0f} | {rss['theirs']['peak_mib']:.0f} | "
                             f"{grow['ours']:.0f} | {grow['theirs']:.0f} | **{r:.2f}x** | {verdict(r, 0.6, False)} | "
                             f"{grow['ours-ckpt']:.0f} MiB, **{rc:.2f}x** ({verdict(rc, 0.6, False)}) |")
        del variants, ours
    total = time.perf_counter() - began
    print(f"done in {total:.0f} s")
    if args.no_write:
        return
    text = ["## Training: lmforge vs transformers (`benchmarks/bench_train.py`)", "",
            f"{machine()}. Matmul peaks (2048^3 float products, same run), GFLOP/s: "
            + ", ".join(f"{k} **{v / 1e9:.0f}**" for k, v in peak.items())
            + f" (fp32 = torch.mm, which runs MKL; lmforge's CPU linear layers run oneDNN). Medians of "
            f"{args.rounds} interleaved rounds after a warm-up round; tokens/s of whole training steps (forward, "
            f"backward, clip, fused AdamW; lmforge through its trainer). Run took {total:.0f} s.", "",
            "| row | shape | lmforge tokens/s | transformers tokens/s (attention) | ratio | target | |",
            "| --- | --- | --- | --- | --- | --- | --- |", *speed_lines, ""]
    text += [f"- {n}" for n in notes]
    if changes:
        text += ["", "This issue's speed-ups measured in the same run (lmforge with `train.onednn_linear=false` and "
                     "SDPA attention -> as shipped): " + "; ".join(changes) + "."]
    if rss_lines:
        text += ["", "Peak RSS while training (fp32, 3 steps, each side and shape in its own process; *adds* = "
                     "peak minus the RSS after imports and data, before the model is built; target on the adds)", "",
                 "| row | lmforge peak MiB | transformers peak MiB | lmforge adds | transformers adds | ratio | "
                 "target <= 0.6x | lmforge adds with `train.checkpoint_activations=true` |",
                 "| --- | --- | --- | --- | --- | --- | --- | --- |", *rss_lines]
    print(f"wrote {write_section('train', chr(10).join(text))}")


if __name__ == "__main__":
    main()
