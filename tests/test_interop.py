"""Hugging Face checkpoints in and out: tiny random transformers models made here, compared number for number."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmforge.api import LM  # noqa: E402
from lmforge.modeldir import ModelDirError  # noqa: E402
from lmforge.tokenizer import Tokenizer  # noqa: E402

from conftest import small_corpus  # noqa: E402

VOCAB = 64


def char_tokenizer() -> Tokenizer:
    return Tokenizer.train("char", [small_corpus(50)])


def wordpiece_tokenizer() -> Tokenizer:
    return Tokenizer.train("wordpiece", [small_corpus(200)], vocab_size=VOCAB, lowercase=True)


def make_hf(tmp_path, kind: str, name: str | None = None, **options):
    """A tiny random Hugging Face model of `kind`, saved with a tokenizer; returns (hf model, directory)."""
    torch.manual_seed(1)
    T = transformers
    if kind.startswith("gpt2"):
        tok = char_tokenizer()
        config = T.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                              bos_token_id=tok.eos_id, eos_token_id=tok.eos_id, pad_token_id=VOCAB - 1, **options)
        cls = {"gpt2": T.GPT2LMHeadModel, "gpt2-base": T.GPT2Model, "gpt2-cls": T.GPT2ForSequenceClassification}[kind]
    elif kind.startswith("llama"):
        tok = char_tokenizer()
        config = T.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                               bos_token_id=tok.eos_id, eos_token_id=tok.eos_id, pad_token_id=VOCAB - 1,
                               **{"rope_parameters": {"rope_type": "default", "rope_theta": 500.0}, **options})
        cls = T.LlamaForSequenceClassification if kind == "llama-cls" else T.LlamaForCausalLM
    else:
        tok = wordpiece_tokenizer()
        config = T.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=64, max_position_embeddings=64, pad_token_id=0, **options)
        cls = {"bert": T.BertForMaskedLM, "bert-base": T.BertModel, "bert-cls": T.BertForSequenceClassification}[kind]
    if kind.endswith("-cls"):
        config.id2label, config.label2id = {0: "neg", 1: "pos", 2: "mixed"}, {"neg": 0, "pos": 1, "mixed": 2}
    model = cls(config).eval()
    with torch.no_grad():  # make every weight matter (HF zero-inits biases and ones-inits norms)
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    directory = tmp_path / (name or kind)
    model.save_pretrained(directory)
    tok.save(directory / "tokenizer.json")
    return model, directory


def padded_batch(pad: int = VOCAB - 1):
    torch.manual_seed(2)
    ids = torch.randint(1, 40, (3, 12))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 7:] = False
    mask[2, 3:] = False
    return ids.masked_fill(~mask, pad), mask


def load(directory) -> LM:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LM.from_pretrained(directory)


@pytest.mark.parametrize("kind,options", [("gpt2", {}), ("gpt2-base", {}), ("llama", {}),
                                          ("llama", {"tie_word_embeddings": True}), ("bert", {})])
def test_imported_language_models_match_transformers_in_padded_batches(tmp_path, kind, options):
    hf, directory = make_hf(tmp_path, kind, **options)
    lm = load(directory)
    ids, mask = padded_batch(0 if kind == "bert" else VOCAB - 1)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask.long())
        if kind == "gpt2-base":
            ours, theirs = lm.model.hidden_states(ids, pad_mask=mask), theirs.last_hidden_state
        else:
            ours, theirs = lm.model(ids, pad_mask=mask), theirs.logits
    assert (ours - theirs)[mask].abs().max() < 1e-4
    if kind == "llama":
        assert lm.config.model.n_kv_head == 2 and lm.config.model.rope_theta == 500.0
        assert lm.model.lm_head.weight is not lm.model.wte.weight or options


def test_bert_token_types_and_a_missing_mlm_head(tmp_path):
    hf, directory = make_hf(tmp_path, "bert-base")
    with pytest.warns(UserWarning, match="no masked-LM head.*fresh one tied"):
        lm = LM.from_pretrained(directory)
    assert lm.model.lm_head.weight is lm.model.wte.weight
    ids, mask = padded_batch(0)
    types = torch.zeros_like(ids)
    types[:, 5:] = 1
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask.long(), token_type_ids=types).last_hidden_state
        ours = lm.model.hidden_states(ids, pad_mask=mask, token_type_ids=types)
    assert (ours - theirs)[mask].abs().max() < 1e-4


@pytest.mark.parametrize("kind", ["gpt2-cls", "llama-cls", "bert-cls"])
def test_imported_classifiers_match_transformers_and_keep_their_labels(tmp_path, kind):
    hf, directory = make_hf(tmp_path, kind)
    lm = load(directory)
    assert lm.config.model.labels == ["neg", "pos", "mixed"]
    ids, mask = padded_batch(0 if kind == "bert-cls" else VOCAB - 1)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask.long()).logits
        ours = lm.model.classify(ids, pad_mask=mask)
    assert (ours - theirs).abs().max() < 1e-4


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_greedy_generation_equals_transformers_generate(tmp_path, kind):
    hf, directory = make_hf(tmp_path, kind)
    lm = load(directory)
    assert lm.generate("the cat sees", max_new_tokens=20, temperature=0) == hf_greedy_text(hf, lm, "the cat sees", 20)


def hf_greedy_text(hf, lm, prompt: str, new_tokens: int) -> str:
    """transformers' greedy continuation of `prompt`, cut at lmforge's end-of-text token and decoded by lm."""
    ids = torch.tensor([lm.tokenizer.encode(prompt)])
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False)
    new = out[0, ids.size(1):].tolist()
    eos = lm.tokenizer.eos_id
    return lm.tokenizer.decode(new[:new.index(eos)] if eos in new else new)


def test_the_cli_takes_a_hugging_face_directory_where_a_model_directory_goes(tmp_path, capsys):
    from lmforge.cli import main

    _, directory = make_hf(tmp_path, "gpt2")
    capsys.readouterr()
    assert main(["generate", str(directory), "--prompt", "the cat", "--temperature", "0", "--max-new-tokens", "8",
                 "--json"]) == 0
    text = json.loads(capsys.readouterr().out)["text"]
    assert text == load(directory).generate("the cat", max_new_tokens=8, temperature=0)
