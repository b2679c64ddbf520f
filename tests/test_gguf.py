"""GGUF in and out: tiny files written with gguf.GGUFWriter read as transformers reads them (logits, token ids),
lmforge -> GGUF -> lmforge round trips, and damaged or hostile files refused before anything is allocated."""
from __future__ import annotations

import json
import struct
from functools import lru_cache

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

from tokenizers import Tokenizer as Backend  # noqa: E402
from tokenizers import decoders, models, pre_tokenizers, trainers  # noqa: E402

from lmforge.api import LM  # noqa: E402
from lmforge.cli import main  # noqa: E402
from lmforge.errors import ModelDirError  # noqa: E402
from lmforge.interop import load_gguf, save_gguf  # noqa: E402
from lmforge.modeldir import load_model_dir, save_model_dir  # noqa: E402

Q = gguf.GGMLQuantizationType
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TEXTS = ["Hello world", "Café naïve résumé, Ångström", "中文测试，你好世界", "emoji 😀🎉👍🏽", "def f(x):\n    return x**2  # ok",
         "a    b\t\tc\n\n\n  end  ", "<|im_start|>user\nhi<|im_end|>\n", " 2024 12345 3.14159", "", "  leading"]
def _corpus() -> list[str]:
    """What the tiny tokenizers are trained on: CPython's own documentation text ships with every install."""
    from pydoc_data.topics import topics

    return [text for _, text in sorted(topics.items())][:40] + TEXTS


@lru_cache(maxsize=None)
def byte_level_vocab() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(tokens, merges) of a 400-token byte-level BPE trained here, its special tokens first."""
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(_corpus(), trainer=trainer)
    state = json.loads(backend.to_str())["model"]
    tokens = sorted(state["vocab"], key=state["vocab"].get)
    return tuple(tokens), tuple(m if isinstance(m, str) else " ".join(m) for m in state["merges"])


@lru_cache(maxsize=None)
def sentencepiece_vocab() -> tuple[tuple[str, ...], tuple[float, ...], tuple[int, ...]]:
    """(tokens, scores, types) of a SentencePiece-style vocabulary: <unk> <s> </s>, 256 byte tokens, pieces."""
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    backend = Backend(models.BPE(byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=specials, show_progress=False)
    backend.train_from_iterator(_corpus(), trainer=trainer)
    vocab = backend.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    types = [2 if t == "<unk>" else 3 if t in ("<s>", "</s>") else 6 if t.startswith("<0x") else 1 for t in tokens]
    return tuple(tokens), tuple(0.0 if k != 1 else -float(i) for i, k in enumerate(types)), tuple(types)


def _tensor(writer, name: str, value: np.ndarray, qtype) -> None:
    """Store a float matrix as `qtype` (k-quants: random blocks with small scales, gguf cannot quantize them)."""
    if value.ndim == 1 or qtype == Q.F32:
        writer.add_tensor(name, value.astype(np.float32))
    elif qtype == Q.F16:
        writer.add_tensor(name, value.astype(np.float16))
    elif qtype in (Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.IQ4_NL):
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        rows, blocks = value.shape[0], value.shape[1] // block
        raw = np.random.default_rng(abs(hash(name)) % 2**32).integers(0, 256, (rows, blocks, size), dtype=np.uint8)
        scale = np.frombuffer(np.float16(2e-4 if qtype == Q.Q6_K else 1e-3).tobytes(), np.uint8)
        for at in ((size - 2,) if qtype == Q.Q6_K else (0, 2)):  # Q6_K keeps d last; Q4_K/Q5_K d, dmin first
            raw[:, :, at:at + 2] = scale
        writer.add_tensor(name, raw.reshape(rows, blocks * size), raw_dtype=qtype)
    else:
        writer.add_tensor(name, gguf.quants.quantize(value.astype(np.float32), qtype), raw_dtype=qtype)


def _permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter's q/k row order (interleaved rotary pairs), from Hugging Face's."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _tokenizer_metadata(writer, kind: str) -> int:
    if kind == "gpt2":
        tokens, merges = byte_level_vocab()
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("gpt-2")
        writer.add_token_list(list(tokens))
        writer.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
        writer.add_token_merges(list(merges))
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_pad_token_id(0)
        writer.add_add_bos_token(False)
    else:
        tokens, scores, types = sentencepiece_vocab()
        writer.add_tokenizer_model("llama")
        writer.add_token_list(list(tokens))
        writer.add_token_scores(list(scores))
        writer.add_token_types(list(types))
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_unk_token_id(0)
        writer.add_add_bos_token(True)
    writer.add_chat_template(TEMPLATE)
    return len(tokens)


def write_llama(path, qtype=Q.F32, tied=True, kind="gpt2", n_embd=256, ff=512, heads=4, kv=2, layers=2):
    """A tiny llama GGUF as llama.cpp's converter lays it out (q/k permuted, (out, in) matrices)."""
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), "llama")
    vocab = _tokenizer_metadata(writer, kind)
    hd = n_embd // heads
    for key, value in [("context_length", 64), ("embedding_length", n_embd), ("block_count", layers),
                       ("feed_forward_length", ff), ("attention.head_count", heads),
                       ("attention.head_count_kv", kv), ("rope.dimension_count", hd), ("vocab_size", vocab)]:
        writer.add_uint32(f"llama.{key}", value)
    writer.add_float32("llama.rope.freq_base", 5000.0)
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    mat = lambda rows, cols: rng.standard_normal((rows, cols), dtype=np.float32) * 0.1  # noqa: E731
    norm = lambda: 1 + 0.1 * rng.standard_normal(n_embd, dtype=np.float32)  # noqa: E731
    _tensor(writer, "token_embd.weight", mat(vocab, n_embd), qtype)
    for i in range(layers):
        b = f"blk.{i}."
        for name, value in [("attn_norm.weight", norm()), ("attn_q.weight", _permute(mat(n_embd, n_embd), heads)),
                            ("attn_k.weight", _permute(mat(kv * hd, n_embd), kv)), ("attn_v.weight", mat(kv * hd, n_embd)),
                            ("attn_output.weight", mat(n_embd, n_embd)), ("ffn_norm.weight", norm()),
                            ("ffn_gate.weight", mat(ff, n_embd)), ("ffn_up.weight", mat(ff, n_embd)),
                            ("ffn_down.weight", mat(n_embd, ff))]:
            _tensor(writer, b + name, value, qtype)
    _tensor(writer, "output_norm.weight", norm(), qtype)
    if not tied:
        _tensor(writer, "output.weight", mat(vocab, n_embd), qtype)
    _finish(writer)
    return path


def _finish(writer) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _hf(folder, name):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name, dtype=torch.float32)
    return model.eval()


IDS = torch.tensor([[5, 17, 200, 33, 1, 99, 250, 7, 3, 120, 64, 2]])
TRANSFORMERS_TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q5_K, Q.Q6_K]


@pytest.mark.parametrize("qtype", TRANSFORMERS_TYPES, ids=lambda q: q.name)
def test_llama_logits_equal_transformers_reading_the_same_file(tmp_path, qtype):
    pytest.importorskip("accelerate")
    write_llama(tmp_path / "m.gguf", qtype, tied=qtype != Q.Q4_K)
    bundle = load_model_dir(tmp_path / "m.gguf")
    assert bundle.config.n_kv_head == 2 and bundle.config.rope_theta == 5000.0
    assert bundle.config.tie_embeddings == (qtype != Q.Q4_K)
    with torch.no_grad():
        ours, theirs = bundle.model(IDS), _hf(tmp_path, "m.gguf")(IDS).logits
    assert theirs.abs().max() > 0.1  # the comparison is not between two near-zero outputs
    assert (ours - theirs).abs().max() < 1e-4


@pytest.mark.parametrize("qtype", [Q.Q5_0, Q.Q5_1], ids=lambda q: q.name)
def test_types_transformers_cannot_read_match_gguf_dequantize(tmp_path, qtype):
    """Q5_0/Q5_1: the same weights, dequantized by gguf's reference code and stored as F32, read by transformers."""
    pytest.importorskip("accelerate")
    write_llama(tmp_path / "q.gguf", qtype)
    reader = gguf.GGUFReader(str(tmp_path / "q.gguf"))
    writer = gguf.GGUFWriter(str(tmp_path / "f.gguf"), "llama")
    for field in reader.fields.values():
        if not field.name.startswith(("GGUF.", "general.architecture")):
            value = field.contents()
            kind = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else field.types[0]
            if field.types[0] == gguf.GGUFValueType.ARRAY:
                writer.add_array(field.name, value) if kind != gguf.GGUFValueType.FLOAT32 else \
                    writer.add_token_scores(value)
            else:
                writer.add_key_value(field.name, value, field.types[0])
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32))
    _finish(writer)
    with torch.no_grad():
        ours = load_model_dir(tmp_path / "q.gguf").model(IDS)
        theirs = _hf(tmp_path, "f.gguf")(IDS).logits
    assert (ours - theirs).abs().max() < 1e-4


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_token_ids_equal_transformers_gguf_tokenizer(tmp_path, kind):
    write_llama(tmp_path / "t.gguf", kind=kind, n_embd=64, ff=128, layers=1)
    ours = load_model_dir(tmp_path / "t.gguf").tokenizer
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="t.gguf")
    texts = TEXTS + ["<s>hello</s> world", "tabs\tand\r\nnewlines", "ÀÉÎÕÜ çñ ß ø", "日本語のテキスト"]
    for text in texts:
        assert ours.encode(text, add_special_tokens=True) == theirs.encode(text), text
        assert ours.encode(text) == theirs.encode(text, add_special_tokens=False), text
    assert ours.eos_token == ("<|im_end|>" if kind == "gpt2" else "</s>")
    assert ours.bos_token == ("<|im_start|>" if kind == "gpt2" else "<s>")
    if kind == "gpt2":
        ids = ours.encode("<|im_start|>user\nCafé 中文 😀<|im_end|>")
        assert ids[0] == 1 and ids[-1] == 2
        assert ours.decode(ids, skip_special_tokens=False) == "<|im_start|>user\nCafé 中文 😀<|im_end|>"
        assert ours.pad_id == 0


def test_chat_template_and_tokens_survive_a_model_directory(tmp_path):
    write_llama(tmp_path / "c.gguf", n_embd=64, ff=128, layers=1)
    bundle = load_model_dir(tmp_path / "c.gguf")
    assert bundle.meta["chat_template"] == TEMPLATE
    assert main(["convert", str(tmp_path / "c.gguf"), str(tmp_path / "dir")]) == 0
    assert (tmp_path / "dir" / "chat_template.jinja").read_text() == TEMPLATE
    assert "chat_template" not in json.loads((tmp_path / "dir" / "config.json").read_text())
    back = load_model_dir(tmp_path / "dir")
    assert back.meta["chat_template"] == TEMPLATE
    assert (back.tokenizer.bos_token, back.tokenizer.eos_token, back.tokenizer.pad_id) == ("<|im_start|>", "<|im_end|>", 0)
    with torch.no_grad():
        assert torch.equal(back.model(IDS % 64), bundle.model(IDS % 64))
    lm = LM.from_pretrained(tmp_path / "c.gguf")
    assert lm.generate("Hello", max_new_tokens=4, temperature=0) is not None


def write_gpt2(path, tied: bool):
    """A tiny GGUF gpt2 as llama.cpp's converter writes it: (out, in) matrices, a copy of the tied output."""
    rng = np.random.default_rng(1)
    writer = gguf.GGUFWriter(str(path), "gpt2")
    vocab = _tokenizer_metadata(writer, "gpt2")
    e, layers = 64, 2
    for key, value in [("context_length", 32), ("embedding_length", e), ("block_count", layers),
                       ("feed_forward_length", 4 * e), ("attention.head_count", 4)]:
        writer.add_uint32(f"gpt2.{key}", value)
    writer.add_float32("gpt2.attention.layer_norm_epsilon", 1e-5)
    mat = lambda *shape: rng.standard_normal(shape, dtype=np.float32) * 0.1  # noqa: E731
    embedding = mat(vocab, e)
    tensors = {"token_embd.weight": embedding, "position_embd.weight": mat(32, e)}
    for i in range(layers):
        for name, (rows, cols) in [("attn_qkv", (3 * e, e)), ("attn_output", (e, e)), ("ffn_up", (4 * e, e)),
                                   ("ffn_down", (e, 4 * e))]:
            tensors[f"blk.{i}.{name}.weight"], tensors[f"blk.{i}.{name}.bias"] = mat(rows, cols), mat(rows)
        for name in ("attn_norm", "ffn_norm"):
            tensors[f"blk.{i}.{name}.weight"], tensors[f"blk.{i}.{name}.bias"] = 1 + mat(e), mat(e)
    tensors["output_norm.weight"], tensors["output_norm.bias"] = 1 + mat(e), mat(e)
    tensors["output.weight"] = embedding.copy() if tied else mat(vocab, e)
    for name, value in tensors.items():
        writer.add_tensor(name, value)
    _finish(writer)
    return tensors


@pytest.mark.parametrize("tied", [True, False])
def test_gpt2_matches_a_reference_gpt2_of_the_same_weights(tmp_path, tied):
    tensors = write_gpt2(tmp_path / "g.gguf", tied)
    bundle = load_model_dir(tmp_path / "g.gguf")
    assert bundle.config.arch == "gpt" and bundle.config.tie_embeddings == tied
    config = transformers.GPT2Config(vocab_size=bundle.config.vocab_size, n_positions=32, n_embd=64, n_layer=2,
                                     n_head=4, tie_word_embeddings=tied)
    reference = transformers.GPT2LMHeadModel(config).eval()
    state = {"transformer.wte.weight": tensors["token_embd.weight"], "transformer.wpe.weight": tensors["position_embd.weight"],
             "transformer.ln_f.weight": tensors["output_norm.weight"], "transformer.ln_f.bias": tensors["output_norm.bias"],
             "lm_head.weight": tensors["output.weight"]}
    for i in range(2):
        for ours, theirs in [("attn.c_attn", "attn_qkv"), ("attn.c_proj", "attn_output"), ("mlp.c_fc", "ffn_up"),
                             ("mlp.c_proj", "ffn_down"), ("ln_1", "attn_norm"), ("ln_2", "ffn_norm")]:
            weight = tensors[f"blk.{i}.{theirs}.weight"]
            state[f"transformer.h.{i}.{ours}.weight"] = weight.T if weight.ndim == 2 else weight  # Conv1D: (in, out)
            state[f"transformer.h.{i}.{ours}.bias"] = tensors[f"blk.{i}.{theirs}.bias"]
    reference.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, strict=False)
    with torch.no_grad():
        assert (bundle.model(IDS) - reference(IDS).logits).abs().max() < 1e-4


@pytest.mark.parametrize("arch", ["llama", "gpt"])
def test_lmforge_to_gguf_and_back(tmp_path, corpus_file, arch):
    options = {"n_kv_head": 2, "tie_embeddings": False} if arch == "llama" else {}
    lm = LM.new(arch, tokenizer="bpe", vocab_size=300, corpus=corpus_file, n_layer=2, n_head=4, n_embd=64,
                block_size=32, **options)
    lm.meta["chat_template"] = TEMPLATE
    ids = torch.tensor([lm.tokenizer.encode("the old man and the sea, once more")])
    with torch.no_grad():
        reference = lm.model(ids)
    for gguf_type, tolerance in [("f32", 0.0), ("f16", 2e-3), ("q8_0", 3e-2), ("q4_1", 0.25)]:
        out = tmp_path / f"{gguf_type}.gguf"
        assert main(["convert", str(save_model_dir(tmp_path / "src", lm.bundle)), str(out), "--gguf-type", gguf_type,
                     "--force"]) == 0
        back = load_model_dir(out)
        assert back.meta["chat_template"] == TEMPLATE
        assert back.config.model_dump(exclude={"init", "classifier_bias"}) == lm.config.model.model_dump(
            exclude={"init", "classifier_bias"})
        assert back.tokenizer.encode(TEXTS[3] + TEXTS[4]) == lm.tokenizer.encode(TEXTS[3] + TEXTS[4])
        with torch.no_grad():
            diff = (back.model(ids) - reference).abs().max().item()
        assert diff <= tolerance * reference.abs().max().item(), (gguf_type, diff)
        if gguf_type == "f32":
            ours, theirs = lm.model.state_dict(), back.model.state_dict()
            assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_q4_1_blocks_survive_weight_int4_and_back_byte_for_byte(tmp_path, corpus_file):
    """A q4_1 file quantized with weight-int4 keeps the file's 4-bit blocks (the codes, and float16 scales and
    minimums held exactly in float32): converted back to q4_1 (its default type) every Q4_1 tensor is the same
    bytes (the norms and the embedding went through the directory's bfloat16), and the int4 model's float32
    logits equal the file's."""
    from lmforge.app.workflows.quantize import quantize_dir
    from lmforge.interop.gguf_file import read_gguf

    lm = LM.new("llama", tokenizer="bpe", vocab_size=300, corpus=corpus_file, n_layer=2, n_head=4, n_embd=64,
                block_size=32, n_kv_head=2)
    first = save_gguf(tmp_path / "first.gguf", lm.model, lm.tokenizer, lm.config.model, {}, "q4_1")
    quantize_dir(first, tmp_path / "w4", "weight-int4")
    assert main(["convert", str(tmp_path / "w4"), str(tmp_path / "again.gguf")]) == 0
    before, after = read_gguf(first)[1], read_gguf(tmp_path / "again.gguf")[1]
    assert before.keys() == after.keys()
    types = {before[name].tensor_type.name for name in before}
    assert types == {"F32", "Q4_1", "Q8_0"}  # norms, matrices, the embedding
    for name in before:
        assert before[name].tensor_type == after[name].tensor_type, name
        if before[name].tensor_type.name == "Q4_1":
            assert np.array_equal(np.asarray(before[name].data), np.asarray(after[name].data)), name
    ids = torch.tensor([lm.tokenizer.encode("the old man and the sea")])
    with torch.no_grad():
        file_model, int4_model = load_model_dir(first).model, load_model_dir(tmp_path / "w4", dtype="float32").model
        for name, module in int4_model.named_modules():
            if hasattr(module, "weight_int4"):
                assert torch.equal(module.dequantized_weight(), file_model.get_submodule(name).weight), name
        file_logits, int4_logits = file_model(ids), int4_model(ids)
    assert (file_logits - int4_logits).abs().max() <= 0.02 * file_logits.abs().max()  # bf16 embedding and norms


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1"])
def test_four_bit_blocks_read_as_groups_equal_gguf_dequantize(qtype):
    from types import SimpleNamespace

    from lmforge.interop.gguf_blocks import four_bit_groups

    gguf = pytest.importorskip("gguf")
    kind = getattr(gguf.GGMLQuantizationType, qtype)
    values = np.random.default_rng(0).standard_normal((6, 128)).astype(np.float32)
    blocks = gguf.quants.quantize(values, kind)
    codes, scale, low = four_bit_groups(SimpleNamespace(tensor_type=kind, shape=np.array([128, 6]), data=blocks))
    ours = (codes.view(6, 4, 32).float() * scale[..., None] + low[..., None]).view(6, 128).numpy()
    assert codes.max() <= 15 and np.array_equal(ours, gguf.quants.dequantize(blocks, kind))


def test_a_q4_0_file_keeps_its_own_blocks_in_weight_int4(tmp_path, corpus_file, monkeypatch, capsys):
    """A Q4_0 file (symmetric blocks: requantizing their values between each group's least and greatest would move
    about half of them) quantized with weight-int4 takes the file's blocks: every weight equals the file's."""
    import lmforge.interop.gguf_export as export
    from lmforge.compress.int4 import Int4Linear

    gguf = pytest.importorskip("gguf")
    lm = LM.new("llama", tokenizer="bpe", vocab_size=300, corpus=corpus_file, n_layer=2, n_head=4, n_embd=64,
                block_size=32, n_kv_head=2)
    plain = export._encode

    def q4_0(module, value, gguf_type, embedding=False):  # llama.cpp's Q4_0 for every matrix
        if value.ndim == 2 and not embedding:
            kind = module.GGMLQuantizationType.Q4_0
            return module.quants.quantize(value.astype(np.float32), kind), kind
        return plain(module, value, gguf_type, embedding)

    monkeypatch.setattr(export, "_encode", q4_0)
    source = save_gguf(tmp_path / "q4_0.gguf", lm.model, lm.tokenizer, lm.config.model, {}, "f32")
    monkeypatch.setattr(export, "_encode", plain)
    types = {t.tensor_type.name for t in gguf.GGUFReader(str(source)).tensors}
    assert "Q4_0" in types
    assert main(["convert", str(source), str(tmp_path / "float32")]) == 0
    assert "--method weight-int4` keeps them as stored" in capsys.readouterr().out  # where the blocks can stay
    assert main(["quantize", str(source), str(tmp_path / "w4"), "--method", "weight-int4"]) == 0
    assert "10 of them keep the GGUF file's own 4-bit blocks exactly" in capsys.readouterr().out
    file_model = load_model_dir(source).model
    int4_model = load_model_dir(tmp_path / "w4", dtype="float32").model
    layers = [(name, m) for name, m in int4_model.named_modules() if isinstance(m, Int4Linear)]
    assert len(layers) == 10  # q/k/v, out, gate, up, down in each block; the head is tied
    for name, module in layers:
        assert torch.equal(module.dequantized_weight(), file_model.get_submodule(name).weight), name


def test_export_refuses_what_gguf_cannot_express(tmp_path, corpus_file):
    char = LM.new("gpt", tokenizer="char", corpus=corpus_file, n_layer=1, n_head=2, n_embd=16, block_size=16)
    with pytest.raises(ValueError, match="byte-level BPE"):
        save_gguf(tmp_path / "x.gguf", char.model, char.tokenizer, char.config.model)
    bert = LM.new("bert", tokenizer="wordpiece", vocab_size=120, corpus=corpus_file, n_layer=1, n_head=2, n_embd=16,
                  block_size=16)
    assert main(["convert", str(save_model_dir(tmp_path / "bert", bert.bundle)), str(tmp_path / "b.gguf")]) == 2
    assert main(["convert", str(tmp_path / "bert"), str(tmp_path / "dir"), "--gguf-type", "q8_0"]) == 2
    assert not list(tmp_path.glob("*.gguf*")) and not (tmp_path / "dir").exists()


# -- damaged and hostile files ------------------------------------------------------------------------------------

def _header(tensor_count: int, kv_count: int) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, tensor_count, kv_count)


def _string(text: str) -> bytes:
    return struct.pack("<Q", len(text)) + text.encode()


@pytest.mark.parametrize("name,content,message", [
    ("magic", b"GGML" + bytes(60), "not the GGUF magic"),
    ("tiny", b"GGUF", "less than a GGUF header"),
    ("version", b"GGUF" + struct.pack("<IQQ", 7, 0, 0), "version 7"),
    ("tensors", _header(2**60, 0) + bytes(64), "claims 1152921504606846976 tensors"),
    ("keys", _header(0, 2**40), "metadata keys"),
    ("string", _header(0, 1) + struct.pack("<Q", 2**50) + bytes(16), "string bytes"),
    ("array", _header(0, 1) + _string("a") + struct.pack("<IIQ", 9, 5, 2**40) + bytes(8), "array items"),
    ("dims", _header(1, 0) + _string("w") + struct.pack("<I", 9) + bytes(64), "9 dimensions"),
    ("shape", _header(1, 0) + _string("w") + struct.pack("<IQQIQ", 2, 2**31, 2**31, 0, 0) + bytes(8), "more than the whole file"),
    ("type", _header(1, 0) + _string("w") + struct.pack("<IQIQ", 1, 4, 77, 0) + bytes(8), "unknown tensor type 77"),
])
def test_hostile_headers_are_refused_before_reading(tmp_path, name, content, message):
    path = tmp_path / f"{name}.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelDirError, match=message):
        load_model_dir(path)
    assert main(["convert", str(path), str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_truncated_file_and_unsupported_content(tmp_path):
    whole = write_llama(tmp_path / "m.gguf", n_embd=64, ff=128, layers=1).read_bytes()
    (tmp_path / "cut.gguf").write_bytes(whole[:len(whole) - 100])
    with pytest.raises(ModelDirError, match="truncated"):
        load_gguf(tmp_path / "cut.gguf")
    (tmp_path / "head.gguf").write_bytes(whole[:5000])
    with pytest.raises(ModelDirError, match="truncated|claims"):
        load_gguf(tmp_path / "head.gguf")
    write_llama(tmp_path / "iq.gguf", Q.IQ4_NL, n_embd=64, ff=128, layers=1)
    with pytest.raises(ModelDirError, match="stored as IQ4_NL, which lmforge cannot dequantize"):
        load_gguf(tmp_path / "iq.gguf")
    writer = gguf.GGUFWriter(str(tmp_path / "mamba.gguf"), "mamba")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    _finish(writer)
    with pytest.raises(ModelDirError, match="general.architecture='mamba' is not supported"):
        load_gguf(tmp_path / "mamba.gguf")
