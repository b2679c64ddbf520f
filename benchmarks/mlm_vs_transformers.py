"""Masked-LM learning side by side: lmforge's BERT vs transformers' BertForMaskedLM on the same batches.

Both models (same sizes) see identical masked batches from lmforge's MaskedLMTask, with the same AdamW
and schedule; prints validation masked-token accuracy of each every 250 steps. Equal curves mean a slow
MLM is the data and compute, not the implementation. Needs `pip install transformers`.
    python benchmarks/mlm_vs_transformers.py [--data FILE] [--steps 1000] [--lr 1e-3]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from common import shared_file
from encoder_quality import unlabeled_text
from lmforge import LM
from lmforge.config import TrainConfig
from lmforge.tasks import make_task
from lmforge.train.optim import learning_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="unlabeled text (default: SST-2's training sentences from the shared data)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    from transformers import BertConfig, BertForMaskedLM

    scratch = tempfile.mkdtemp(prefix="mlm-bench-")
    data = args.data
    if data is None:
        shared_file("sst2-sentence")  # exits with a clear message where the shared data is absent
        data = str(unlabeled_text(Path(scratch), general=False)[0])
    lm = LM.new("bert", n_layer=2, n_head=4, n_embd=128, block_size=32, dropout=0.1, tokenizer="wordpiece",
                vocab_size=4000, lowercase=True, corpus=data)
    lm.config.data.paths = [data]
    task, _ = make_task(lm.bundle, lm.config.train, lm.config.data, scratch)
    hf = BertForMaskedLM(BertConfig(vocab_size=lm.tokenizer.vocab_size, hidden_size=128, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=512, max_position_embeddings=32))
    cfg = TrainConfig(max_steps=args.steps, lr=args.lr, min_lr=args.lr / 10, warmup_steps=100)

    def ours(model, batch):
        loss, metrics = task.loss(model, batch)
        return loss, float(metrics["mlm_accuracy"])

    def theirs(model, batch):
        out = model(input_ids=batch["ids"], labels=batch["labels"])
        chosen = batch["labels"] != -100
        return out.loss, float((out.logits[chosen].argmax(-1) == batch["labels"][chosen]).float().mean())

    curves = {}
    for name, model, loss_fn in [("transformers", hf, theirs), ("lmforge", lm.model, ours)]:
        torch.manual_seed(0)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), weight_decay=0.01)
        model.train()
        for step in range(args.steps):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, cfg)
            loss, _ = loss_fn(model, task.train_batch(step, 0, args.batch_size))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if (step + 1) % 250 == 0:
                model.eval()
                with torch.no_grad():
                    accuracy = np.mean([loss_fn(model, task._sample("val", args.batch_size, np.random.default_rng([9, i])))[1]
                                        for i in range(10)])
                model.train()
                curves.setdefault(step + 1, {})[name] = accuracy
    print("step   val masked-token accuracy: transformers  lmforge")
    for step, row in curves.items():
        print(f"{step:5d}   {row['transformers']:38.3f}  {row['lmforge']:7.3f}")


if __name__ == "__main__":
    main()
