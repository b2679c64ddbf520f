"""Chat templates as checkpoints ship them, rendered as transformers renders them; LM.chat ending at the
end-of-turn token; the chat template through a Hugging Face directory, an export and an lmforge directory."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
from tokenizers import Tokenizer as Backend  # noqa: E402
from tokenizers import decoders, models, pre_tokenizers, processors, trainers  # noqa: E402

from lmforge.api import LM  # noqa: E402
from lmforge.infer.chat import apply_chat_template, chat_format, chat_reply, encode_chat_prompt  # noqa: E402
from lmforge.infer.chat_template import DEFAULT_TEMPLATE, TemplateError, render_chat  # noqa: E402
from lmforge.infer.generate import SamplingConfig, continue_prompts  # noqa: E402
from lmforge.modeldir import load_model_dir  # noqa: E402
from lmforge.tokenizer import Tokenizer  # noqa: E402

from conftest import small_corpus  # noqa: E402

# real-world template shapes: SmolLM2's ChatML (a default system message), Llama 3 (bos_token, trim,
# raise_exception on an unknown role), Mistral (bos/eos tokens, refuses a system message and non-alternation)
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unknown role: ' + message['role']) }}{% endif %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")
# a template in the newer style: whitespace control, a namespace, tojson of non-ASCII text, loop controls
TOOLISH = (
    "{%- set ns = namespace(system='') -%}\n"
    "{%- for message in messages -%}\n"
    "  {%- if message.role == 'system' -%}{%- set ns.system = message.content -%}{%- continue -%}{%- endif -%}\n"
    "  <|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n"
    "{%- endfor %}\n"
    "{%- if ns.system %}<|im_start|>meta\n{{ ns.system | tojson }}<|im_end|>\n{% endif -%}\n"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif -%}")
TEMPLATES = {"smollm2": (SMOLLM2, "<|im_start|>", "<|im_end|>"), "llama3": (LLAMA3, "<|begin_of_text|>", "<|eot_id|>"),
             "mistral": (MISTRAL, "<s>", "</s>"), "toolish": (TOOLISH, "<|im_start|>", "<|im_end|>")}
SPECIALS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>",
            "<|end_header_id|>"]

SYSTEM = {"role": "system", "content": "You answer briefly, en français s'il le faut."}
TURNS = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "  4.  "},
         {"role": "user", "content": "And times three? Ünïcödé 🙂"}]
CONVERSATIONS = {"no system": TURNS, "system": [SYSTEM, *TURNS], "one turn": TURNS[:1],
                 "ends with assistant": TURNS[:2]}


def bpe_backend() -> Backend:
    """A tiny byte-level BPE with the special tokens the templates use."""
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([small_corpus(100), "What is 2+2? And times three?"], trainer=trainer)
    return backend


def hf_and_ours(name: str):
    template, bos, eos = TEMPLATES[name]
    backend = bpe_backend()
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos)
    hf.chat_template = template
    return hf, Tokenizer(backend, eos_token=eos, bos_token=bos), {"chat_template": template}


def hf_ids(hf, messages, add_generation_prompt):
    found = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    return list(found["input_ids"] if hasattr(found, "keys") else found)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_apply_chat_template_equals_transformers(name, generation_prompt):
    hf, ours, meta = hf_and_ours(name)
    compared = 0
    for conversation in CONVERSATIONS.values():
        try:
            expected = hf.apply_chat_template(conversation, tokenize=False, add_generation_prompt=generation_prompt)
        except Exception as refusal:  # Mistral's template refuses a system message and non-alternating roles
            with pytest.raises(TemplateError, match="refused the conversation") as ours_refusal:
                apply_chat_template(ours, meta, conversation, add_generation_prompt=generation_prompt)
            assert str(refusal) in str(ours_refusal.value)
            continue
        got = apply_chat_template(ours, meta, conversation, add_generation_prompt=generation_prompt)
        assert got == expected
        # and the same token ids: special tokens parsed as such, no second bos
        form = chat_format(ours, meta)
        assert encode_chat_prompt(ours, form, got) == hf_ids(hf, conversation, generation_prompt)
        compared += 1
    assert compared >= (2 if name == "mistral" else 4)


def test_bos_is_added_only_when_the_tokenizer_asks_and_the_template_did_not_write_it():
    backend = bpe_backend()
    bos = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    tokenizer = Tokenizer(backend, eos_token="</s>", bos_token="<s>")
    messages = TURNS[:1]
    writes_bos = chat_format(tokenizer, {"chat_template": MISTRAL})
    text = render_chat(MISTRAL, messages, bos_token="<s>", eos_token="</s>")
    ids = encode_chat_prompt(tokenizer, writes_bos, text)
    assert ids[0] == bos and ids[1] != bos and ids == tokenizer.encode(text)
    silent = chat_format(tokenizer, {"chat_template": SMOLLM2})
    text = render_chat(SMOLLM2, messages)
    assert encode_chat_prompt(tokenizer, silent, text) == [bos, *tokenizer.encode(text)]
    backend.post_processor = None  # a tokenizer without the add-bos rule: nothing added
    plain = Tokenizer(backend, bos_token="<s>")
    assert encode_chat_prompt(plain, chat_format(plain, {"chat_template": SMOLLM2}), text) == plain.encode(text)


@pytest.mark.parametrize("template, message", [
    ("{{ ''.__class__.__mro__ }}", "sandbox forbids"),
    ("{{ messages.__class__.__subclasses__() }}", "sandbox forbids"),
    ("{% for m in messages %}{{ m.update({'role': 'x'}) }}{% endfor %}", "sandbox forbids"),
    ("{{ raise_exception('no tools here') }}", "refused the conversation: no tools here"),
    ("{% for m in messages %}{{ m['content'] + 1 }}{% endfor %}", "failed while rendering"),
    ("{% for m in messages %}", "does not parse"),
])
def test_a_template_that_raises_or_leaves_the_sandbox_is_one_clear_error(template, message):
    _, ours, _ = hf_and_ours("smollm2")
    with pytest.raises(TemplateError, match=message):
        apply_chat_template(ours, {"chat_template": template}, TURNS)
    with pytest.raises(ValueError, match="non-empty list"):
        apply_chat_template(ours, {}, [])
    with pytest.raises(ValueError, match=r"messages\[1\]"):
        apply_chat_template(ours, {}, [TURNS[0], {"role": "user"}])


# -- a chat model made from scratch -------------------------------------------------------------------------
REPLIES = {"hi": "hello there", "what is red?": "a colour", "bye": "see you"}


def conversations_text() -> str:
    rows = []
    for question, answer in REPLIES.items():
        rows.append(render_chat(DEFAULT_TEMPLATE, [{"role": "user", "content": question},
                                                   {"role": "assistant", "content": answer}]))
    return "".join(rows * 40)


@pytest.fixture(scope="module")
def chat_lm(tmp_path_factory):
    """A tiny GPT trained from scratch on ChatML conversations, with <|im_start|>/<|im_end|> as special tokens."""
    folder = tmp_path_factory.mktemp("chat")
    corpus = folder / "chats.txt"
    corpus.write_text(conversations_text(), encoding="utf-8")
    lm = LM.new("gpt", tokenizer="char", corpus=corpus, n_layer=2, n_head=2, n_embd=48, block_size=128)
    lm.add_tokens(["<|im_start|>", "<|im_end|>"], special=True)
    lm.fit(corpus, max_steps=300, batch_size=16, lr=3e-3, warmup_steps=20, progress=False, eval_every=0)
    return lm


def test_chat_stops_at_the_end_of_turn_token(chat_lm):
    lm = chat_lm
    end = lm.tokenizer.token_to_id("<|im_end|>")
    for question, answer in REPLIES.items():
        messages = [{"role": "user", "content": question}]
        assert lm.chat(messages, max_new_tokens=40) == answer
        reply = chat_reply(lm.bundle, messages, SamplingConfig(max_new_tokens=40, temperature=0))
        assert reply.tokens == lm.tokenizer.encode(answer) and reply.finish_reason == "stop"
        # without the end-of-turn token as an end, the model goes on: its next token was <|im_end|>
        prompt = lm.tokenizer.encode(lm.apply_chat_template(messages))
        going_on = continue_prompts(lm.model, lm.tokenizer, [prompt], SamplingConfig(len(reply.tokens) + 3, 0.0),
                                    end_ids=())[0]
        assert going_on.tokens[:len(reply.tokens) + 1] == [*reply.tokens, end]
    # the end of text (the tokenizer's eos) still ends a reply too
    assert lm.tokenizer.eos_id in chat_format(lm.tokenizer, lm.meta).end_ids
    assert end in chat_format(lm.tokenizer, lm.meta).end_ids


def test_a_template_survives_save_load_and_hf_export(chat_lm, tmp_path):
    lm = chat_lm
    lm.meta["chat_template"] = SMOLLM2
    try:
        lm.save(tmp_path / "ours")
        assert (tmp_path / "ours" / "chat_template.jinja").read_text(encoding="utf-8") == SMOLLM2
        assert "chat_template" not in json.loads((tmp_path / "ours" / "config.json").read_text())
        again = LM.from_pretrained(tmp_path / "ours")
        assert again.meta["chat_template"] == SMOLLM2
        assert again.apply_chat_template(TURNS) == lm.apply_chat_template(TURNS)
        lm.save_hf(tmp_path / "hf")
    finally:
        del lm.meta["chat_template"]
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert (tmp_path / "hf" / "chat_template.jinja").is_file()
    assert json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())["chat_template"] == SMOLLM2
    for conversation in CONVERSATIONS.values():
        assert hf_tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True) == \
            again.apply_chat_template(conversation)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        imported = LM.from_pretrained(tmp_path / "hf")  # and back in: the template comes along
    assert imported.meta["chat_template"] == SMOLLM2


@pytest.mark.parametrize("form", ["tokenizer_config", "named list", "jinja file"])
def test_hf_directory_templates_in_every_shipped_form(tmp_path, form):
    torch.manual_seed(0)
    template, bos, eos = TEMPLATES["llama3"]
    backend = bpe_backend()
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos)
    config = transformers.LlamaConfig(vocab_size=backend.get_vocab_size(), hidden_size=32, intermediate_size=48,
                                      num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=64, bos_token_id=hf_tok.bos_token_id,
                                      eos_token_id=hf_tok.eos_token_id)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    hf_tok.save_pretrained(tmp_path)
    for stale in ("chat_template.jinja", "chat_template.json"):
        (tmp_path / stale).unlink(missing_ok=True)
    settings = json.loads((tmp_path / "tokenizer_config.json").read_text())
    settings.pop("chat_template", None)
    if form == "tokenizer_config":
        settings["chat_template"] = template
    elif form == "named list":
        settings["chat_template"] = [{"name": "tool_use", "template": "{{ 'tools' }}"},
                                     {"name": "default", "template": template}]
    else:
        (tmp_path / "chat_template.jinja").write_text(template, encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(settings))
    bundle = load_model_dir(tmp_path)
    assert bundle.meta["chat_template"] == template and bundle.tokenizer.bos_token == bos
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path)
    reference.chat_template = template
    for conversation in CONVERSATIONS.values():
        expected = reference.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        assert apply_chat_template(bundle.tokenizer, bundle.meta, conversation) == expected
        assert expected.startswith("<|begin_of_text|>")


def test_chat_refuses_an_encoder_and_bad_messages(chat_lm):
    from serve_harness import tiny_lm

    bert = tiny_lm("bert")
    with pytest.raises(ValueError, match="chat needs a decoder"):
        bert.chat(TURNS[:1])
    with pytest.raises(ValueError, match="string 'role'"):
        chat_lm.chat([{"role": "user", "content": None}])
