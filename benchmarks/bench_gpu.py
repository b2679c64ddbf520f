"""On one NVIDIA GPU: lmforge's trainer vs nanoGPT's own train.py vs a transformers GPT2LMHeadModel loop, then
generation at batch 1 and 8 vs transformers' generate.

Training: the GPT-2-124M shape (12 x 768, block 1024, batch 16, vocab 50304, no bias, tied embeddings), bf16
autocast, fused AdamW (lr 6e-4, betas 0.9/0.95, weight decay 0.1), gradient clipping at 1.0, random-token data,
eager and compiled, each run in turn (A B C ...) for `--rounds` rounds; the figures are medians over steps
20-60. nanoGPT runs as itself: its train.py, model.py and configurator.py copied from `--nanogpt DIR` into a
scratch directory with random tokens in data/rand/, started with command-line overrides; its per-step times
are parsed from its `iter N: loss X, time Yms` lines (it syncs each step to print the loss). lmforge's trainer
logs every 10 steps without syncing between, so its figures are the tokens/s of the 10-step windows after step
20. transformers (which has no bias-free GPT-2) syncs each step. MFU counts 6N + 12 L C T FLOPs per token
(nanoGPT's estimate) against 989 TFLOP/s, the H100/H200 dense bf16 peak; the measured torch.mm peak is printed
beside it. Peak memory is torch.cuda.max_memory_allocated of each run.

Generation: a GPT-2-124M-shaped lmforge model (random weights; a 50,257-symbol character tokenizer so every id
decodes) exported with LM.save_hf and loaded by transformers (same weights), greedy, 256 new tokens, fp32 and
bf16, batch 1 and 8: lmforge's default on CUDA (static cache, step captured as a CUDA graph), the same step handed
to torch.compile before the capture (`compile=True`, a one-time compile of a few seconds) and the growing-cache
path, against transformers' generate (sdpa); identical outputs counted.

    python benchmarks/bench_gpu.py --nanogpt .nanogpt            # on a GPU: about 5 minutes on an H200
    python benchmarks/bench_gpu.py --nanogpt .nanogpt --dry-run  # on CPU at toy sizes: every code path, < 1 minute
    python benchmarks/bench_gpu.py --nanogpt .nanogpt --variants --rounds 1 --skip generate  # the untried levers

Writes the "gpu" section of benchmarks/RESULTS.md (not in --dry-run) and, when $OUT is set, $OUT/bench_gpu.json.
It never asserts a time.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_section  # noqa: E402

PEAK_BF16 = 989e12  # H100/H200 SXM dense bf16 tensor-core peak, FLOP/s
NANOGPT_FILES = ("train.py", "model.py", "configurator.py")


@dataclass(frozen=True)
class Shape:
    n_layer: int
    n_head: int
    n_embd: int
    block: int
    batch: int
    vocab: int
    steps: int  # optimizer steps per run (the first `warm` are not counted)
    warm: int
    log_every: int
    gen_vocab: int  # generation model's vocabulary (GPT-2's 50,257)
    new: int  # new tokens per generation


FULL = Shape(12, 12, 768, 1024, 16, 50304, steps=60, warm=20, log_every=10, gen_vocab=50257, new=256)
TINY = Shape(2, 2, 64, 64, 4, 512, steps=6, warm=2, log_every=2, gen_vocab=300, new=12)
PROMPT = "First Citizen: Before we proceed any further, hear me speak."
PROMPTS = ["ROMEO:", "Speak, speak.", "First Citizen: You are all resolved rather to die than to famish?",
           "All: Resolved.", "MENENIUS: What work's, my countrymen, in hand? Where go you", "O",
           "KING RICHARD II: Old John of Gaunt, time-honour'd Lancaster,", "Nay, but speak not maliciously."]
ASCII = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ,.!?;:'-&"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int) -> float:
    """Measured FLOP/s of torch.mm at size x size (best of 10)."""
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    best = float("inf")
    for i in range(12):
        sync(device)
        began = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        if i >= 2:
            best = min(best, time.perf_counter() - began)
    return 2 * size ** 3 / best


def flops_per_token(shape: Shape) -> float:
    """nanoGPT's estimate: 6 N (N without position embeddings) + 12 L C T for attention."""
    C, L = shape.n_embd, shape.n_layer
    n = shape.vocab * C + L * (12 * C * C + 4 * C) + 2 * C  # tied head; LayerNorm weights, no biases
    return 6 * n + 12 * L * C * shape.block


def random_tokens(shape: Shape) -> np.ndarray:
    return np.random.default_rng(0).integers(0, shape.vocab, size=2_000_000 if shape is FULL else 50_000,
                                             dtype=np.uint16)


# -- training -------------------------------------------------------------------------------------------------
def attention_first(backend: str | None):
    """A context putting one SDPA backend first ("cudnn", "flash"), or nothing for torch's own order."""
    import contextlib

    if backend is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    first = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[backend]
    order = [first] + [b for b in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                                   SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH) if b != first]
    return sdpa_kernel(order, set_priority=True)


def train_lmforge(shape: Shape, device: torch.device, compiled: bool, chunked: bool = True, mode: str = "default",
                  attention: str | None = None) -> dict:
    """lmforge's own trainer; tokens/s of its log windows after `warm` steps. `mode`: train.compile_mode;
    `attention`: an SDPA backend tried first (attention_first)."""
    from lmforge.config import ModelConfig, TrainConfig
    from lmforge.data.tokens import TokenWindows
    from lmforge.models import build_model
    from lmforge.tasks.lm import CausalLMTask
    from lmforge.train.trainer import train

    cfg = ModelConfig(arch="gpt", n_layer=shape.n_layer, n_head=shape.n_head, n_embd=shape.n_embd,
                      block_size=shape.block, vocab_size=shape.vocab, bias=False, dropout=0.0)
    torch.manual_seed(0)
    model = build_model(cfg)
    task = CausalLMTask(TokenWindows(random_tokens(shape), shape.block, 0.0), seed=0, chunked=chunked)
    train_cfg = TrainConfig(max_steps=shape.steps, batch_size=shape.batch, lr=6e-4, min_lr=6e-5, warmup_steps=0,
                            weight_decay=0.1, beta2=0.95, grad_clip=1.0, eval_every=0, save_every=0,
                            log_every=shape.log_every, grad_norms_every=0, tensorboard=False, dtype="bfloat16",
                            device=str(device), compile=compiled, compile_mode=mode)
    windows = []
    reset_peak(device)
    with attention_first(attention):
        train(model, task, train_cfg, None, progress=False,
              hooks=[lambda step, record: windows.append((step, record.get("tokens_per_s")))])
    speeds = [speed for step, speed in windows if step > shape.warm and speed]
    tokens_per_s = statistics.median(speeds)
    return {"tokens_per_s": tokens_per_s, "ms_per_step": 1000 * shape.batch * shape.block / tokens_per_s,
            "peak_gib": peak_gib(device), "loss": None}


def train_transformers(shape: Shape, device: torch.device) -> dict:
    """A plain loop over transformers' GPT2LMHeadModel (sdpa), synced each step; medians after `warm` steps."""
    import torch.nn.functional as F
    from transformers import GPT2Config, GPT2LMHeadModel

    from lmforge.data.tokens import TokenWindows
    from lmforge.tasks.lm import CausalLMTask

    config = GPT2Config(vocab_size=shape.vocab, n_positions=shape.block, n_embd=shape.n_embd, n_layer=shape.n_layer,
                        n_head=shape.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    reset_peak(device)
    model = GPT2LMHeadModel._from_config(config, attn_implementation="sdpa").to(device).train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                                  lr=6e-4, betas=(0.9, 0.95), fused=True)
    task = CausalLMTask(TokenWindows(random_tokens(shape), shape.block, 0.0), seed=0)
    times = []
    for step in range(shape.steps):
        began = time.perf_counter()
        batch = task.train_batch(step, 0, shape.batch)
        pin = device.type == "cuda"
        ids, targets = ((batch[k].pin_memory() if pin else batch[k]).to(device, non_blocking=True)
                        for k in ("ids", "targets"))
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = model(ids).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - began)
    seconds = statistics.median(times[shape.warm:])
    result = {"tokens_per_s": shape.batch * shape.block / seconds, "ms_per_step": 1000 * seconds,
              "peak_gib": peak_gib(device), "loss": float(loss)}
    del model, optimizer
    return result


def nanogpt_workdir(source: Path, shape: Shape, scratch: Path) -> Path:
    """A scratch copy of nanoGPT's three files, random tokens in data/rand/ and a wrapper reporting peak memory."""
    missing = [name for name in NANOGPT_FILES if not (source / name).is_file()]
    if missing:
        raise FileNotFoundError(f"--nanogpt {source} lacks {missing}; give a checkout of karpathy/nanoGPT")
    work = scratch / "nanogpt"
    (work / "data" / "rand").mkdir(parents=True, exist_ok=True)
    for name in NANOGPT_FILES:
        shutil.copy(source / name, work / name)
    tokens = random_tokens(shape)
    tokens.tofile(work / "data" / "rand" / "train.bin")
    tokens[: len(tokens) // 10].tofile(work / "data" / "rand" / "val.bin")
    (work / "run_measured.py").write_text(
        "import runpy, sys\nimport torch\nsys.argv = ['train.py'] + sys.argv[1:]\ntry:\n"
        "    runpy.run_path('train.py', run_name='__main__')\nfinally:\n"
        "    print('PEAK_BYTES', torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0, flush=True)\n")
    return work


def train_nanogpt(work: Path, shape: Shape, device: torch.device, compiled: bool) -> dict:
    """nanoGPT's own train.py with command-line overrides; medians of its printed step times after `warm`."""
    overrides = dict(dataset="rand", batch_size=shape.batch, block_size=shape.block, n_layer=shape.n_layer,
                     n_head=shape.n_head, n_embd=shape.n_embd, bias=False, dropout=0.0,
                     gradient_accumulation_steps=1, max_iters=shape.steps, lr_decay_iters=shape.steps,
                     warmup_iters=0, learning_rate=6e-4, min_lr=6e-5, eval_interval=10 ** 9, eval_iters=1,
                     log_interval=1, always_save_checkpoint=False, compile=compiled, device=str(device),
                     dtype="bfloat16", out_dir="out", wandb_log=False)
    command = [sys.executable, "run_measured.py"] + [f"--{k}={v}" for k, v in overrides.items()]
    done = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=900)
    lines = done.stdout.splitlines()
    times = {int(m[1]): float(m[2]) for m in (re.match(r"iter (\d+): loss [\d.naif]+, time ([\d.]+)ms", line)
                                                 for line in lines) if m}
    peak = next((int(line.split()[1]) for line in lines if line.startswith("PEAK_BYTES")), 0)
    if done.returncode != 0 or len(times) <= shape.warm:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise RuntimeError(f"nanoGPT's train.py exited {done.returncode} with {len(times)} timed steps:\n{tail}")
    ms = statistics.median(v for k, v in times.items() if shape.warm < k <= shape.steps)
    return {"tokens_per_s": 1000 * shape.batch * shape.block / ms, "ms_per_step": ms,
            "peak_gib": peak / 2**30 if device.type == "cuda" else None, "loss": None}


def training_runs(args, shape: Shape, device: torch.device, scratch: Path) -> list[dict]:
    """Every side, eager then compiled, in turn for `rounds` rounds; one entry per (side, round)."""
    sides = [("lmforge, eager", lambda: train_lmforge(shape, device, False)),
             ("lmforge, eager, plain loss", lambda: train_lmforge(shape, device, False, chunked=False)),
             ("transformers GPT2LMHeadModel, eager, sdpa", lambda: train_transformers(shape, device))]
    if args.nanogpt:
        work = nanogpt_workdir(Path(args.nanogpt), shape, scratch)
        sides.insert(0, ("nanoGPT train.py, eager", lambda: train_nanogpt(work, shape, device, False)))
        if args.compile:
            sides.append(("nanoGPT train.py, compile=True", lambda: train_nanogpt(work, shape, device, True)))
    if args.compile:
        sides.append(("lmforge, train.compile=true", lambda: train_lmforge(shape, device, True)))
    if args.variants:  # levers not yet measured on a GPU, each against the rows above
        sides += [("lmforge, eager, cuDNN attention first", lambda: train_lmforge(shape, device, False,
                                                                                   attention="cudnn")),
                  ("lmforge, train.compile=true, cuDNN attention first",
                   lambda: train_lmforge(shape, device, True, attention="cudnn")),
                  ("lmforge, train.compile=true, compile_mode=max-autotune-no-cudagraphs",
                   lambda: train_lmforge(shape, device, True, mode="max-autotune-no-cudagraphs")),
                  ("lmforge, train.compile=true, compile_mode=reduce-overhead",
                   lambda: train_lmforge(shape, device, True, mode="reduce-overhead"))]
    runs = []
    for round_ in range(args.rounds):
        for name, run in sides:
            began = time.perf_counter()
            try:
                result = run()
            except Exception as error:  # noqa: BLE001 - one failing side must not lose the others' figures
                traceback.print_exc()
                result = {"error": f"{type(error).__name__}: {str(error)[-600:]}"}
            result.update(side=name, round=round_, seconds=time.perf_counter() - began)
            print(json.dumps(result), flush=True)
            runs.append(result)
    return runs


# -- generation -----------------------------------------------------------------------------------------------
def generation_pair(shape: Shape, device: torch.device, dtype: torch.dtype, scratch: Path):
    """An lmforge GPT-2-shaped LM and transformers' GPT2LMHeadModel with the same weights, on `device` in `dtype`."""
    from transformers import GPT2LMHeadModel

    from lmforge import LM
    from lmforge.config import Config
    from lmforge.models import build_model
    from lmforge.tokenizer import Tokenizer

    symbols = ASCII + "".join(chr(0x100 + i) for i in range(shape.gen_vocab - 2 - len(ASCII)))
    tokenizer = Tokenizer.train("char", [symbols])
    config = Config.model_validate({"model": {"arch": "gpt", "n_layer": shape.n_layer, "n_head": shape.n_head,
                                              "n_embd": shape.n_embd, "block_size": 1024,
                                              "vocab_size": tokenizer.vocab_size, "dropout": 0.0},
                                    "tokenizer": {"kind": "char"}})
    torch.manual_seed(0)
    lm = LM(build_model(config.model).eval(), tokenizer, config)
    path = lm.save_hf(scratch / f"gpt-{shape.n_layer}x{shape.n_embd}")
    hf = GPT2LMHeadModel.from_pretrained(path, attn_implementation="sdpa").to(device, dtype).eval()
    lm.model.to(device, dtype)
    return lm, hf


def hf_generate(model, tokenizer, prompts: list[str], new: int, device: torch.device) -> list[str]:
    rows = [tokenizer.encode(p) for p in prompts]
    width, pad = max(map(len, rows)), tokenizer.pad_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                             pad_token_id=pad, eos_token_id=None, use_cache=True)
    return [tokenizer.decode(row[width:].tolist()) for row in out]


def generation_case(shape: Shape, device: torch.device, dtype: torch.dtype, prompts: list[str], rounds: int,
                    lm, hf, int4=None) -> dict:
    """tokens/s of each decoder; `int4`: the same model quantized to weight-int4 (bf16 only; other weights, so its
    text is not compared)."""
    from lmforge.infer.generate import SamplingConfig, generate

    sampling = SamplingConfig(max_new_tokens=shape.new, temperature=0, ignore_eos=True)
    ways = {"lmforge": lambda: generate(lm.model, lm.tokenizer, prompts, sampling),  # static + CUDA graph on a GPU
            "lmforge, growing cache": lambda: generate(lm.model, lm.tokenizer, prompts, sampling, static=False),
            "lmforge, static cache": lambda: generate(lm.model, lm.tokenizer, prompts, sampling, static=True),
            "lmforge, compiled step": lambda: generate(lm.model, lm.tokenizer, prompts, sampling, static=True,
                                                       compile=True),
            "transformers": lambda: hf_generate(hf, lm.tokenizer, prompts, shape.new, device)}
    if int4 is not None:
        ways[WEIGHT_INT4] = lambda: generate(int4, lm.tokenizer, prompts, sampling)
    if device.type == "cuda":
        del ways["lmforge, static cache"]  # the default already is
    seconds, outputs = {name: [] for name in ways}, {}
    for name, way in ways.items():
        outputs[name] = way()  # warm-up (and the CUDA graph's capture)
    for _ in range(rounds):
        for name, way in ways.items():
            sync(device)
            began = time.perf_counter()
            outputs[name] = way()
            seconds[name].append(time.perf_counter() - began)
    tokens = shape.new * len(prompts)
    result = {"batch": len(prompts), "dtype": str(dtype).replace("torch.", ""),
              **{f"{name} tokens/s": tokens / statistics.median(s) for name, s in seconds.items()}}
    reference = outputs["lmforge, growing cache"]
    for name, texts in outputs.items():
        if name not in ("lmforge, growing cache", WEIGHT_INT4):
            result[f"{name} = growing cache"] = f"{sum(a == b for a, b in zip(texts, reference))}/{len(prompts)}"
    return result


WEIGHT_INT4 = "lmforge, weight-int4"


def weight_int4(model, device: torch.device):
    """A bf16 weight-int4 copy of `model` on `device` (the int4 kernels: tinygemm on a GPU, torch's on a CPU);
    None, with the error printed, where quantizing fails."""
    import copy

    from lmforge.compress.quantize import quantize_model

    try:
        return quantize_model(copy.deepcopy(model).float().cpu(), "weight-int4")[0].to(device, torch.bfloat16)
    except Exception:  # noqa: BLE001 - a benchmark row, not the run
        traceback.print_exc()
        return None


def generation_runs(args, shape: Shape, device: torch.device, scratch: Path) -> list[dict]:
    """Batch 1 and 8, fp32 and bf16; one entry per case (an error recorded in place of a failed one)."""
    runs = []
    for dtype in (torch.float32, torch.bfloat16):
        try:
            lm, hf = generation_pair(shape, device, dtype, scratch)
        except Exception as error:  # noqa: BLE001
            traceback.print_exc()
            runs.append({"dtype": str(dtype), "error": f"{type(error).__name__}: {error}"})
            continue
        int4 = weight_int4(lm.model, device) if dtype == torch.bfloat16 else None
        for prompts in ([PROMPT], PROMPTS):
            try:
                result = generation_case(shape, device, dtype, prompts, args.rounds, lm, hf, int4)
            except Exception as error:  # noqa: BLE001
                traceback.print_exc()
                result = {"batch": len(prompts), "dtype": str(dtype), "error": f"{type(error).__name__}: {error}"}
            print(json.dumps(result), flush=True)
            runs.append(result)
        del lm, hf
        reset_peak(device)
    return runs


# -- report ---------------------------------------------------------------------------------------------------
def _median(runs: list[dict], side: str, key: str):
    values = [r[key] for r in runs if r.get("side") == side and r.get(key) is not None]
    return statistics.median(values) if values else None


def training_table(runs: list[dict], shape: Shape) -> str:
    per_token = flops_per_token(shape)
    sides = list(dict.fromkeys(r["side"] for r in runs))
    lines = ["| | ms/step | tokens/s | MFU (989 TFLOP/s) | peak memory GiB | vs nanoGPT (same mode) |",
             "|---|---|---|---|---|---|"]
    for side in sides:
        speed = _median(runs, side, "tokens_per_s")
        if speed is None:
            error = next(r.get("error", "") for r in runs if r["side"] == side)
            lines.append(f"| {side} | failed: {error.splitlines()[0][:120] if error else '?'} | | | | |")
            continue
        peak = _median(runs, side, "peak_gib")
        mode = "compile" if "compile" in side else "eager"
        nano = next((_median(runs, s, "tokens_per_s") for s in sides if s.startswith("nanoGPT") and
                     ("compile" in s) == (mode == "compile")), None)
        ratio = f"{speed / nano:.2f}x" if nano and not side.startswith("nanoGPT") else ""
        lines.append(f"| {side} | {_median(runs, side, 'ms_per_step'):.1f} | {speed / 1000:,.0f}k | "
                     f"{100 * speed * per_token / PEAK_BF16:.0f}% | {'' if peak is None else f'{peak:.1f}'} | "
                     f"{ratio} |")
    return "\n".join(lines)


def generation_table(runs: list[dict]) -> str:
    names = [k for k in dict.fromkeys(k for r in runs for k in r) if k.endswith("tokens/s")]
    checks = [k for k in dict.fromkeys(k for r in runs for k in r) if k.endswith("= growing cache")]
    lines = ["| batch | dtype | " + " | ".join(names) + " | lmforge / transformers | " + " | ".join(checks) + " |",
             "|---|---|" + "---|" * (len(names) + 1 + len(checks))]
    for r in runs:
        if "error" in r:
            lines.append(f"| {r.get('batch', '')} | {r['dtype']} | failed: {r['error'].splitlines()[0][:150]} |")
            continue
        ratio = r["lmforge tokens/s"] / r["transformers tokens/s"]
        speeds = " | ".join(f"{r[n]:,.0f}" if n in r else "-" for n in names)
        lines.append(f"| {r['batch']} | {r['dtype']} | " + speeds
                     + f" | **{ratio:.2f}x** | " + " | ".join(r[c] for c in checks) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanogpt", help="a checkout of karpathy/nanoGPT (its train.py runs as the peer)")
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, toy sizes: every code path the GPU run takes, in well under a minute")
    parser.add_argument("--rounds", type=int, default=None, help="alternations of every side (default 2; 1 with "
                                                                  "--dry-run)")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="leave out the compiled runs")
    parser.add_argument("--variants", action="store_true",
                        help="also train with levers not yet measured: cuDNN attention first (eager, compiled), "
                             "compile_mode max-autotune-no-cudagraphs and reduce-overhead (several minutes more)")
    parser.add_argument("--skip", choices=["train", "generate"], action="append", default=[])
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    args.rounds = args.rounds or (1 if args.dry_run else 2)
    if args.dry_run:
        shape, device = TINY, torch.device("cpu")
    elif not torch.cuda.is_available():
        sys.exit("bench_gpu.py measures on a CUDA GPU and this machine has none (torch "
                 f"{torch.__version__}); `--dry-run` runs every code path on CPU at toy sizes instead")
    else:
        shape, device = FULL, torch.device("cuda")
    began = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    peak = matmul_peak(device, torch.bfloat16, 8192 if device.type == "cuda" else 256)
    header = (f"{name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; torch.mm bf16 peak measured "
              f"{peak / 1e12:.0f} TFLOP/s (MFU below is against the 989 TFLOP/s datasheet peak)")
    print(header, flush=True)
    report = {"machine": header, "shape": asdict(shape), "train": [], "generate": []}
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as scratch:
        if "train" not in args.skip:
            report["train"] = training_runs(args, shape, device, Path(scratch))
        if "generate" not in args.skip:
            report["generate"] = generation_runs(args, shape, device, Path(scratch))
    report["seconds"] = time.perf_counter() - began
    markdown = (f"## GPU: training and generation (benchmarks/bench_gpu.py)\n\n{header}. GPT-2-124M shape "
                f"({shape.n_layer} x {shape.n_embd}, block {shape.block}, batch {shape.batch}, vocab {shape.vocab}, "
                f"no bias), bf16 autocast, fused AdamW, random tokens, medians of steps {shape.warm}-{shape.steps} "
                f"over {args.rounds} alternating rounds.\n\n" + training_table(report["train"], shape)
                + f"\n\nGeneration, greedy, {shape.new} new tokens, random GPT-2-124M weights (tokens/s; identical "
                "outputs against lmforge's growing-cache decoder):\n\n" + generation_table(report["generate"])
                + f"\n\nWhole run: {report['seconds']:.0f} s.")
    print("\n" + markdown, flush=True)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"]).mkdir(parents=True, exist_ok=True)
        (Path(os.environ["OUT"]) / "bench_gpu.json").write_text(json.dumps(report, indent=1))
    if not args.dry_run and not args.no_write:
        print(f"wrote {write_section('gpu', markdown)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
