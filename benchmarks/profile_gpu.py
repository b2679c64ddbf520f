"""Where a GPU step's time goes: lmforge's GPT and nanoGPT's model.py in the same plain training loop, lmforge's
own trainer, and the decoding step, each timed and profiled (torch.profiler, the top kernels by GPU time).

The plain loop is the same for both models (bf16 autocast, cross-entropy on the logits, backward, clipping at 1.0,
fused AdamW, zero_grad), eager and with the model handed to torch.compile, so a gap there is the model's; a gap
between the plain loop and lmforge's trainer is the trainer's. nanoGPT's model.py is imported from a checkout given with --nanogpt (measured against, not copied).
Decoding: the captured static-cache step (the default on CUDA) with and without torch.compile, batch 1 and 8.

    python benchmarks/profile_gpu.py --nanogpt .nanogpt            # on a GPU: about 3 minutes
    python benchmarks/profile_gpu.py --nanogpt .nanogpt --dry-run  # on CPU at toy sizes

Prints the figures and tables; with $OUT set also writes $OUT/profile_gpu.txt. Never asserts a time.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import os
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu import FULL, TINY, Shape, peak_gib, random_tokens, reset_peak, sync, train_lmforge


def lmforge_model(shape: Shape, device):
    from lmforge.config import ModelConfig
    from lmforge.models import build_model

    torch.manual_seed(0)
    return build_model(ModelConfig(arch="gpt", n_layer=shape.n_layer, n_head=shape.n_head, n_embd=shape.n_embd,
                                   block_size=shape.block, vocab_size=shape.vocab, bias=False,
                                   dropout=0.0)).to(device)


def nanogpt_model(shape: Shape, device, source: Path):
    spec = importlib.util.spec_from_file_location("nanogpt_model", source / "model.py")
    module = importlib.util.module_from_spec(spec)
    with redirect_stdout(io.StringIO()):
        spec.loader.exec_module(module)
        torch.manual_seed(0)
        model = module.GPT(module.GPTConfig(block_size=shape.block, vocab_size=shape.vocab, n_layer=shape.n_layer,
                                            n_head=shape.n_head, n_embd=shape.n_embd, dropout=0.0, bias=False))
    return model.to(device)


def plain_step(model, optimizer, ids, targets, device, nanogpt: bool):
    with torch.autocast(device.type, dtype=torch.bfloat16):
        if nanogpt:
            _, loss = model(ids, targets)
        else:
            logits = model(ids)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def kernel_table(prof, steps: int, rows: int = 18) -> str:
    events = prof.key_averages()
    gpu = sorted(events, key=lambda e: getattr(e, "self_device_time_total", 0), reverse=True)
    total_gpu = sum(getattr(e, "self_device_time_total", 0) for e in events) / 1000 / steps
    total_cpu = sum(e.self_cpu_time_total for e in events) / 1000 / steps
    lines = [f"  GPU time {total_gpu:.2f} ms/step, CPU time {total_cpu:.2f} ms/step (under the profiler)",
             f"  {'ms/step':>8} {'calls/step':>10}  name"]
    for event in gpu[:rows]:
        ms = getattr(event, "self_device_time_total", 0) / 1000 / steps
        if ms > 0:
            lines.append(f"  {ms:8.3f} {event.count / steps:10.1f}  {event.key[:110]}")
    return "\n".join(lines)


def profiled(run, steps: int, device) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            run()
        sync(device)
    return kernel_table(prof, steps)


def plain_loops(shape: Shape, device, source: Path | None, steps: int, compiled: bool = False) -> list[str]:
    """Each model in the same plain loop, alternating, twice (the second reported); `compiled`: the model
    handed to torch.compile (forward and loss stay outside the graph for nanoGPT as for lmforge's GPT)."""
    tokens = torch.from_numpy(random_tokens(shape)[: shape.batch * (shape.block + 1)].astype("int64"))
    rows = tokens.view(shape.batch, shape.block + 1).to(device)
    ids, targets = rows[:, :-1].contiguous(), rows[:, 1:].contiguous()
    out = []
    sides = [("lmforge GPT", lambda: lmforge_model(shape, device), False)]
    if source is not None:
        sides.append(("nanoGPT model.py", lambda: nanogpt_model(shape, device, source), True))
    for name, build, nanogpt in sides * 2:  # twice, alternating: the second pass is the one reported
        reset_peak(device)
        model = build().train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                      fused=device.type == "cuda")
        forward = torch.compile(model) if compiled else model

        def run(model=forward, optimizer=optimizer, nanogpt=nanogpt):
            plain_step(model, optimizer, ids, targets, device, nanogpt)
        for _ in range(5):
            run()
        sync(device)
        began = time.perf_counter()
        for _ in range(steps):
            run()
        sync(device)
        ms = 1000 * (time.perf_counter() - began) / steps
        table = profiled(run, 3, device)
        out.append(f"{name}, plain loop, {'compiled' if compiled else 'eager'}: {ms:.2f} ms/step, "
                   f"{shape.batch * shape.block / ms * 1000:,.0f} tokens/s, peak {peak_gib(device)} GiB\n{table}")
        print(out[-1], flush=True)
        del model, optimizer
    return out


def trainer_run(shape: Shape, device) -> list[str]:
    out = []
    for chunked in (True, False):
        result = train_lmforge(shape, device, compiled=False, chunked=chunked)
        out.append(f"lmforge trainer, eager, {'chunked' if chunked else 'plain'} loss: {result['ms_per_step']:.2f} "
                   f"ms/step, {result['tokens_per_s']:,.0f} tokens/s, peak {result['peak_gib']} GiB")
        print(out[-1], flush=True)
    return out


def decoding(shape: Shape, device, new: int) -> list[str]:
    from lmforge.config import ModelConfig
    from lmforge.infer.static import static_decoder
    from lmforge.models import build_model

    out = []
    for dtype in (torch.bfloat16, torch.float32):
        torch.manual_seed(0)
        model = build_model(ModelConfig(arch="gpt", n_layer=shape.n_layer, n_head=shape.n_head, n_embd=shape.n_embd,
                                        block_size=1024, vocab_size=shape.gen_vocab, dropout=0.0))
        model = model.to(device, dtype).eval()
        for batch in (1, 8):
            for compiled in (False, True):
                prompt = torch.randint(0, shape.gen_vocab, (batch, 16), device=device)
                with torch.inference_mode():
                    decoder = static_decoder(model, batch, 16 + new + 8, compile=compiled)
                    began = time.perf_counter()
                    logits = decoder.prefill(prompt, torch.arange(16, device=device), None)
                    token = logits.float().argmax(-1)
                    decoder.step(token)  # the capture (and the compile)
                    setup = time.perf_counter() - began

                    def run(decoder=decoder):
                        nonlocal token
                        token = decoder.step(token).float().argmax(-1)

                    decoder.prefill(prompt, torch.arange(16, device=device), None)
                    sync(device)
                    began = time.perf_counter()
                    for _ in range(new):
                        run()
                    sync(device)
                    per = (time.perf_counter() - began) / new
                    decoder.prefill(prompt, torch.arange(16, device=device), None)
                    table = profiled(run, 20, device)
                out.append(f"decode step {str(dtype)[6:]} batch {batch} {'compiled' if compiled else 'plain'}: "
                           f"{1000 * per:.3f} ms/token-step, {batch / per:,.0f} tokens/s (set-up {setup:.1f} s)\n{table}")
                print(out[-1], flush=True)
        del model
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanogpt", help="a checkout of karpathy/nanoGPT (its model.py is the peer)")
    parser.add_argument("--dry-run", action="store_true", help="toy sizes, on CPU when there is no GPU")
    parser.add_argument("--skip", choices=["plain", "compiled", "trainer", "decode"], action="append", default=[])
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        print("profile_gpu.py needs a CUDA GPU (none is visible); --dry-run runs its code paths on CPU at toy sizes")
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    shape = TINY if args.dry_run else FULL
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    source = Path(args.nanogpt) if args.nanogpt else None
    head = f"{torch.cuda.get_device_name() if cuda else 'CPU'}, torch {torch.__version__}, shape {shape}"
    print(head, flush=True)
    parts = [head]
    if "plain" not in args.skip:
        parts += plain_loops(shape, device, source, 6 if args.dry_run else 20)
    if "compiled" not in args.skip:
        parts += plain_loops(shape, device, source, 6 if args.dry_run else 20, compiled=True)
    if "trainer" not in args.skip:
        parts += trainer_run(shape, device)
    if "decode" not in args.skip:
        parts += decoding(shape, device, shape.new if args.dry_run else 128)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "profile_gpu.txt").write_text("\n\n".join(parts) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
