"""Vanishing and exploding gradients in recurrent language models, made visible.

1. Across time: for a window of T characters and a loss on the LAST prediction only, the norm of
   d loss / d h_t (the hidden state after step t, all layers) for every t. Where it falls by orders of
   magnitude as t moves away from T, the model cannot learn from what happened that long ago (vanishing);
   where it grows, a step's update is dominated by the distant past and blows up (exploding).
   Models: a tanh RNN with its recurrent matrix orthogonal times a gain (0.9: vanishing, 1.5: the linear part
   would explode; tanh saturation fights it), an untrained LSTM, and a trained LSTM when --trained names one.
2. During training: lmforge's trainer on the same text with train.grad_clip=0 (off) and 1.0, logging the
   global gradient norm before clipping at every step, for a tanh RNN and an LSTM at a deliberately high rate.

Writes one PNG (--out) and prints the numbers:
    python benchmarks/rnn_gradients.py --out rnn_gradients.png
    python benchmarks/rnn_gradients.py --trained runs/bench-arch/lstm/final
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.api import LM
from lmforge.config import ModelConfig
from lmforge.models import build_model
from lmforge.tokenizer import Tokenizer

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"


def state_gradients(model, ids: torch.Tensor) -> np.ndarray:
    """Mean over the batch of ||d loss / d h_t|| for t = 0..T-1, the loss being the last step's cross-entropy."""
    model.eval()  # no dropout: the same function at every step
    x = model.wte(ids[:, :-1])
    state, hidden = None, []
    for t in range(x.size(1)):
        _, state = model.rnn(x[:, t:t + 1], state)
        h = state[0] if isinstance(state, tuple) else state
        h.retain_grad()
        hidden.append(h)
    loss = F.cross_entropy(model.lm_head(hidden[-1][-1]), ids[:, -1])  # the top layer's last state is the output
    loss.backward()
    # h is (layers, B, width): the norm over layers and width, per row, then the batch mean
    return np.array([h.grad.transpose(0, 1).flatten(1).norm(dim=1).mean().item() for h in hidden])


def tanh_rnn(vocab: int, width: int, gain: float) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="rnn", n_layer=1, n_embd=width, block_size=512, vocab_size=vocab))
    with torch.no_grad():
        torch.nn.init.orthogonal_(model.rnn.weight_hh_l0, gain=gain)
    return model


def training_norms(arch: str, corpus: Path, clip: float, steps: int, lr: float) -> tuple[list, list]:
    """(grad norms before clipping, losses) of every step of a short training run."""
    lm = LM.new(arch, corpus=corpus, n_layer=1, n_embd=256, block_size=128)
    norms, losses = [], []

    def hook(step, record):
        if "grad_norm" in record:
            norms.append(record["grad_norm"])
            losses.append(record["loss"])

    with tempfile.TemporaryDirectory() as scratch:
        try:
            lm.fit(corpus, run_dir=Path(scratch), max_steps=steps, batch_size=16, lr=lr, min_lr=lr, warmup_steps=0,
                   grad_clip=clip, weight_decay=0.0, eval_every=0, save_every=0, log_every=1, seed=1,
                   progress=False, hooks=[hook])
        except FloatingPointError as error:  # the trainer stops a run whose loss is no longer finite
            print(f"  {arch} clip={clip}: {error}")
    return norms, losses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("rnn_gradients.png"))
    parser.add_argument("--window", type=int, default=200, help="T, the steps the gradient travels back")
    parser.add_argument("--trained", type=Path, default=None, help="a trained LSTM model directory to measure too")
    parser.add_argument("--steps", type=int, default=300, help="training steps per grad_clip setting")
    parser.add_argument("--lr", type=float, default=1e-2, help="training rate, high on purpose")
    args = parser.parse_args()
    if not SHAKESPEARE.is_file():
        print(f"skipped: {SHAKESPEARE} is absent")
        return 0
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as scratch:
        corpus = Path(scratch) / "shakespeare.txt"
        corpus.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:300_000], encoding="utf-8")
        tokenizer = Tokenizer.train("char", [corpus.read_text(encoding="utf-8")])
        text = np.array(tokenizer.encode(corpus.read_text(encoding="utf-8")[:100_000]))
        rng = np.random.default_rng(0)
        starts = rng.integers(0, len(text) - args.window - 1, size=16)
        ids = torch.tensor(np.stack([text[s:s + args.window + 1] for s in starts]), dtype=torch.long)

        curves = {}
        for gain in (0.9, 1.5):
            curves[f"tanh RNN, W_hh orthogonal x {gain}"] = state_gradients(tanh_rnn(tokenizer.vocab_size, 128, gain), ids)
        torch.manual_seed(0)
        lstm = build_model(ModelConfig(arch="lstm", n_layer=1, n_embd=128, block_size=512,
                                       vocab_size=tokenizer.vocab_size))
        curves["LSTM, untrained (forget bias 1)"] = state_gradients(lstm, ids)
        if args.trained:
            trained = LM.from_pretrained(args.trained)
            if trained.config.model.arch not in ("lstm", "gru", "rnn"):
                print(f"--trained {args.trained} is a '{trained.config.model.arch}', not a recurrent model")
                return 2
            mapped = torch.tensor([[trained.tokenizer.encode(tokenizer.decode([int(i)]))[0] for i in row] for row in ids])
            curves[f"{trained.config.model.arch.upper()}, trained ({args.trained})"] = state_gradients(trained.model, mapped)

        print(f"|d loss / d h_t| relative to the last step (t = T-1), T = {args.window}:")
        back = [1, 10, 50, 100, args.window - 1]
        print("| model | " + " | ".join(f"T-1-{k}" for k in back) + " |")
        print("|---|" + "---|" * len(back))
        for name, g in curves.items():
            print(f"| {name} | " + " | ".join(f"{g[-1 - k] / g[-1]:.2e}" for k in back) + " |")

        runs = {}
        for arch in ("rnn", "lstm"):
            for clip in (0.0, 1.0):
                runs[(arch, clip)] = training_norms(arch, corpus, clip, args.steps, args.lr)
        print(f"\ntraining at lr {args.lr}, {args.steps} steps, grad norm before clipping:")
        print("| arch | grad_clip | median norm | max norm | steps above 10x median | final loss (mean of last 20) |")
        print("|---|---|---|---|---|---|")
        for (arch, clip), (norms, losses) in runs.items():
            med = float(np.median(norms))
            tail = losses[-20:]
            final = sum(tail) / len(tail) if tail and all(map(math.isfinite, tail)) else float("nan")
            print(f"| {arch} | {clip or 'off'} | {med:.3g} | {max(norms):.3g} | {sum(n > 10 * med for n in norms)} | "
                  f"{final:.3f} |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(16, 4.5), dpi=100)
    for name, g in curves.items():
        axes[0].semilogy(np.arange(len(g))[::-1], g, label=name)
    axes[0].set_xlabel("steps back from the predicted character (T-1-t)")
    axes[0].set_ylabel("||d loss / d h_t||")
    axes[0].set_title("gradient across time (loss on the last step)")
    for (arch, clip), (norms, losses) in runs.items():
        label = f"{'tanh RNN' if arch == 'rnn' else 'LSTM'}, grad_clip {clip or 'off'}"
        style = "-" if clip else ":"
        axes[1].semilogy(range(1, len(norms) + 1), norms, style, label=label, linewidth=1)
        axes[2].plot(range(1, len(losses) + 1), losses, style, label=label, linewidth=1)
    axes[1].set_title(f"global gradient norm before clipping (lr {args.lr})")
    axes[1].set_xlabel("step")
    axes[2].set_title("training loss")
    axes[2].set_xlabel("step")
    axes[2].set_ylim(1.0, 4.5)
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(args.out)
    print(f"\nplot: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
