"""Instruction tuning (train.objective=sft): the mask covers exactly the assistant's tokens in all three input
shapes, the loss is normalized over the whole accumulated step, packing keeps conversations apart, a tiny model
learns a toy instruction set (full and LoRA), the export carries the chat files, bad input is refused."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmforge import LM
from lmforge.cli import main
from lmforge.data.chat import read_conversations
from lmforge.infer.chat_encode import DEFAULT_CHAT_TEMPLATE, DEFAULT_MARKERS, encode_conversation, end_of_turn
from lmforge.errors import ConfigError, DataError
from lmforge.infer.chat_template import TemplateError
from lmforge.tasks.sft import IGNORE, make_sft_task, pack
from lmforge.tokenizer import Tokenizer

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=160)
CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;?!+-=#\n'"
CONVERSATIONS = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "4."}, {"role": "user", "content": "And 3+3?"},
     {"role": "assistant", "content": "It is 6."}],
    [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi there, friend!"}],
    [{"role": "user", "content": "Name a colour"}, {"role": "assistant", "content": "blue"},
     {"role": "user", "content": "Another?"}, {"role": "assistant", "content": "green, or red."}],
]
SHAREGPT = {"system": "system", "user": "human", "assistant": "gpt"}


def as_rows(shape: str) -> list[dict]:
    """CONVERSATIONS written in `shape` (alpaca: one user turn and one reply each)."""
    if shape == "messages":
        return [{"messages": c} for c in CONVERSATIONS]
    if shape == "sharegpt":
        return [{"conversations": [{"from": SHAREGPT[m["role"]], "value": m["content"]} for m in c]}
                for c in CONVERSATIONS]
    return [{"instruction": "Add the numbers", "input": "2 and 2", "output": "4"},
            {"instruction": "Say hi", "output": "hi there, friend!"}]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def tiny_lm(tmp_path: Path, arch: str = "llama", **model) -> LM:
    corpus = tmp_path / "chars.txt"
    corpus.write_text(CHARS + "userassistantsystem", encoding="utf-8")
    lm = LM.new(arch, tokenizer="char", corpus=corpus, **{**TINY, **model})
    lm.add_tokens(list(DEFAULT_MARKERS), special=True)
    # every row trains (the toy sets are tiny); validation is tested through data.test elsewhere
    lm.config = lm.config.model_copy(update={"data": lm.config.data.model_copy(update={"val_fraction": 0.0})})
    return lm


def sft_task(lm: LM):
    """make_sft_task on the LM's parts: the task alone."""
    return make_sft_task(lm.bundle, lm.config.train, lm.config.data)[0]


def with_data(lm: LM, train: Path, **train_options) -> LM:
    raw = lm.config.model_dump()
    raw["data"].update(train=str(train), val_fraction=0.0)
    raw["train"].update(objective="sft", **train_options)
    from lmforge.config import build_config
    lm.config = build_config(raw)
    return lm


def expected_chatml(tokenizer, messages: list[dict]) -> tuple[list[int], list[bool]]:
    """The ids and trained flags ChatML gives, built piece by piece by hand (the oracle)."""
    ids, trained = [], []
    for message in messages:
        start = tokenizer.encode(f"<|im_start|>{message['role']}\n")
        reply = tokenizer.encode(f"{message['content']}<|im_end|>\n")
        ids += start + reply
        trained += [False] * len(start) + [message["role"] == "assistant"] * len(reply)
    return ids, trained


@pytest.mark.parametrize("shape", ["messages", "sharegpt", "alpaca"])
def test_the_loss_covers_exactly_the_assistant_tokens(tmp_path, shape):
    lm = tiny_lm(tmp_path)
    path = write_jsonl(tmp_path / f"{shape}.jsonl", as_rows(shape))
    found, conversations = read_conversations(path)
    assert found == shape
    task = sft_task(with_data(lm, path))
    assert len(task.train) == len(conversations)
    for example, messages in zip(task.train, conversations):
        ids, trained = expected_chatml(lm.tokenizer, messages)
        assert example.ids.tolist() == ids
        assert example.trained.tolist() == trained  # position by position
    # the loss the task computes = cross-entropy at exactly those positions, each conversation run alone
    lm.model.eval()
    task.grad_accum = 1
    batch = task.train_batch(0, 0, len(task.train))
    loss, _ = task.loss(lm.model, batch)
    total, count = 0.0, 0
    for example in task.train:
        logits = lm.model(torch.from_numpy(example.ids)[None])[0]
        for t in range(len(example.ids) - 1):
            if example.trained[t + 1]:
                total += F.cross_entropy(logits[t], torch.tensor(int(example.ids[t + 1]))).item()
                count += 1
    assert count == int((batch["targets"] != IGNORE).sum())
    assert loss.item() == pytest.approx(total / count, abs=1e-5)


def test_a_template_of_the_model_with_bpe_marks_the_replies(tmp_path):
    texts = ["### User: what is the capital of France?\n### Assistant: Paris is the capital.\n"] * 20
    tokenizer = Tokenizer.train("bpe", texts, vocab_size=300)
    template = ("{% for m in messages %}{% if m['role'] == 'user' %}### User: {{ m['content'] }}\n"
                "{% else %}### Assistant:{{ m['content'] }}{{ eos_token }}\n{% endif %}{% endfor %}"
                "{% if add_generation_prompt %}### Assistant:{% endif %}")
    messages = [{"role": "user", "content": "what is the capital of France?"},
                {"role": "assistant", "content": " Paris is the capital."},
                {"role": "user", "content": "and?"}, {"role": "assistant", "content": " the capital."}]
    example = encode_conversation(tokenizer, template, messages)
    runs, current = [], []
    for token, trained in zip(example.ids.tolist(), example.trained.tolist()):
        if trained:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current, skip_special_tokens=False))
            current = []
    runs += [tokenizer.decode(current, skip_special_tokens=False)] if current else []
    assert runs == [" Paris is the capital.<|endoftext|>\n", " the capital.<|endoftext|>\n"]
    assert end_of_turn(template, tokenizer) == "<|endoftext|>"
    assert end_of_turn(DEFAULT_CHAT_TEMPLATE, tokenizer) is None  # no <|im_end|> token in this vocabulary


def _step_loss_and_grads(model, task, batch_size: int, grad_accum: int):
    """What the trainer does for one step: sum over micro-steps of loss / grad_accum, backward each."""
    model.zero_grad(set_to_none=True)
    task.grad_accum = grad_accum  # as the trainer sets it
    total = 0.0
    for micro in range(grad_accum):
        loss, _ = task.loss(model, task.train_batch(0, micro, batch_size))
        (loss / grad_accum).backward()
        total += loss.item() / grad_accum
    return total, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_grad_accum_gives_the_one_batch_loss_and_gradients(tmp_path):
    lm = tiny_lm(tmp_path)
    rows = [{"messages": [{"role": "user", "content": "q" * (1 + 7 * i % 23)},
                          {"role": "assistant", "content": "a" * (1 + 11 * i % 31)}]} for i in range(8)]
    task = sft_task(with_data(lm, write_jsonl(tmp_path / "c.jsonl", rows)))
    lengths = {e.n_trained for e in task.train}
    assert len(lengths) > 4  # rows of different lengths
    model = lm.model.double().train()
    with torch.no_grad():
        model.wte.weight.mul_(10)  # sharper logits (the head is tied): per-token losses that differ widely
    one, one_grads = _step_loss_and_grads(model, task, 8, 1)
    for batch_size, accum in ((4, 2), (2, 4), (1, 8)):
        loss, grads = _step_loss_and_grads(model, task, batch_size, accum)
        assert loss == pytest.approx(one, abs=1e-6)
        for name, grad in one_grads.items():
            torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-6)
    # the per-micro-batch mean (transformers before PR #34191) would differ: the test can see the bug
    task.grad_accum = 8
    naive = np.mean([F.cross_entropy(*_logits_targets(model, task.train_batch(0, m, 1))).item() for m in range(8)])
    assert abs(naive - one) > 1e-3


def _logits_targets(model, batch):
    logits = model(batch["ids"], positions=batch["positions"], segments=batch["segments"])
    return logits.reshape(-1, logits.size(-1)), batch["targets"].reshape(-1)


@pytest.mark.parametrize("arch", ["llama", "gpt"])
def test_packed_rows_give_each_conversation_its_own_logits(tmp_path, arch):
    lm = tiny_lm(tmp_path, arch)
    path = write_jsonl(tmp_path / "c.jsonl", as_rows("messages") * 2)
    task = sft_task(with_data(lm, path))
    batch = pack(task.train, 160, lm.tokenizer.pad_id)
    assert batch["ids"].size(0) < len(task.train)  # several conversations share a row
    with torch.no_grad():
        packed = lm.model(batch["ids"], positions=batch["positions"], segments=batch["segments"])
        seen = 0
        for row in range(batch["ids"].size(0)):
            for segment in batch["segments"][row].unique().tolist():
                if segment == 0:
                    continue
                where = (batch["segments"][row] == segment).nonzero().flatten()
                alone = lm.model(batch["ids"][row, where][None])[0]
                torch.testing.assert_close(packed[row, where], alone, atol=1e-5, rtol=1e-5)
                seen += 1
    assert seen == len(task.train)


def toy_rows() -> list[dict]:
    facts = {"capital of France": "Paris", "colour of the sky": "blue", "2+2": "4", "opposite of hot": "cold",
             "first letter": "a", "capital of Italy": "Rome", "colour of grass": "green", "3+3": "6"}
    return [{"messages": [{"role": "user", "content": f"What is the {q}?"}, {"role": "assistant", "content": a}]}
            for q, a in facts.items()]


def greedy_reply(lm: LM, messages: list[dict], limit: int = 12) -> str:
    from lmforge.infer.chat_template import render_chat

    ids = lm.tokenizer.encode(render_chat(lm.meta["chat_template"], messages, add_generation_prompt=True))
    end = lm.tokenizer.token_to_id("<|im_end|>")
    out = []
    with torch.no_grad():
        for _ in range(limit):
            token = int(lm.model(torch.tensor([ids + out]))[0, -1].argmax())
            if token == end:
                break
            out.append(token)
    return lm.tokenizer.decode(out)


def test_a_tiny_model_learns_a_toy_instruction_set(tmp_path):
    lm = tiny_lm(tmp_path, n_embd=64, n_head=4)
    rows = toy_rows()
    path = write_jsonl(tmp_path / "toy.jsonl", rows)
    losses = []
    result = lm.fit(path, objective="sft", max_steps=150, batch_size=8, lr=3e-3, warmup_steps=10, eval_every=0,
                    log_every=10, progress=False, weight_decay=0.0, hooks=[lambda step, r: losses.append(r["loss"])])
    assert result.step == 150 and losses[-1] < losses[0] / 5
    lm.model.eval()
    replies = [greedy_reply(lm, row["messages"][:1]) for row in rows]
    assert replies == [row["messages"][1]["content"] for row in rows]  # each answer, then <|im_end|>


def test_lora_sft_trains_the_adapters_only(tmp_path):
    lm = tiny_lm(tmp_path, n_embd=64, n_head=4)
    path = write_jsonl(tmp_path / "toy.jsonl", toy_rows())
    base = {name: p.detach().clone() for name, p in lm.model.named_parameters()}
    losses = []
    lm.fit(path, objective="sft", max_steps=200, batch_size=8, lr=2e-2, warmup_steps=10, eval_every=0, log_every=10,
           progress=False, weight_decay=0.0, lora={"rank": 16, "alpha": 64.0},
           hooks=[lambda step, r: losses.append(r["loss"])])
    assert losses[-1] < losses[0] - 0.4  # adapters on a random tiny base learn slower than full tuning
    for name, p in lm.model.named_parameters():  # LoRA layers keep their base's parameter names
        if "lora_" not in name:
            assert torch.equal(p, base[name]), name


def test_the_sft_model_saves_and_exports_its_chat_files(tmp_path):
    lm = tiny_lm(tmp_path)
    path = write_jsonl(tmp_path / "toy.jsonl", toy_rows())
    lm.config = lm.config.model_copy(update={"model": lm.config.model.model_copy(update={"init": "base-model"})})
    lm.meta["license"] = "apache-2.0"
    lm.fit(path, objective="sft", max_steps=2, batch_size=4, eval_every=0, progress=False)
    out = lm.save(tmp_path / "model")
    end = lm.tokenizer.token_to_id("<|im_end|>")
    for folder in (out, lm.save_hf(tmp_path / "hf")):
        assert (folder / "chat_template.jinja").read_text() == DEFAULT_CHAT_TEMPLATE
        eos = json.loads((folder / "generation_config.json").read_text())["eos_token_id"]
        assert eos == [lm.tokenizer.eos_id, end]
        card = (folder / "README.md").read_text()
        front = card.split("---\n")[1]
        for line in ('base_model: "base-model"', 'datasets:\n- "toy.jsonl"', 'license: "apache-2.0"',
                     'library_name: "lmforge"'):
            assert line in front
    assert LM.from_pretrained(out).meta["chat_template"] == DEFAULT_CHAT_TEMPLATE


def test_data_inspect_marks_the_trained_tokens(tmp_path, capsys):
    lm = tiny_lm(tmp_path)
    lm.save(tmp_path / "model")
    path = write_jsonl(tmp_path / "c.jsonl", as_rows("sharegpt"))
    assert main(["data", "inspect", str(path), "--model", str(tmp_path / "model"), "-n", "1", "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "3 conversations in the 'sharegpt' shape" in out
    assert "<|im_start|>assistant\n[[4.<|im_end|>\n]]<|im_start|>user\nAnd 3+3?" in out
    assert "[[It is 6.<|im_end|>\n]]" in out and "--- conversation 2" not in out


@pytest.mark.parametrize("rows, message", [
    ([{"messages": [{"role": "user", "content": "hi"}]}], "c.jsonl:1: the conversation has no assistant turn"),
    ([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
      {"instruction": "x", "output": "y"}], "c.jsonl:2: this row is in the 'alpaca' shape but the file began in "
                                            "the 'messages' shape"),
    ([{"conversations": [{"from": "human", "value": "hi"}, {"from": "robot", "value": "yo"}]}],
     "c.jsonl:1: turn 1 has from='robot'"),
    ([], "holds no conversations (it is empty)"),
    ([{"text": "plain"}], "none of the chat shapes"),
])
def test_bad_chat_files_are_refused_with_nothing_written(tmp_path, rows, message):
    lm = tiny_lm(tmp_path)
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    before = {name: p.detach().clone() for name, p in lm.model.named_parameters()}
    with pytest.raises(DataError, match=re.escape(message)):
        lm.fit(path, objective="sft", max_steps=2, run_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    assert all(torch.equal(before[n], p) for n, p in lm.model.named_parameters())


def test_a_vocabulary_without_the_template_markers_is_refused(tmp_path):
    corpus = tmp_path / "chars.txt"
    corpus.write_text(CHARS, encoding="utf-8")
    lm = LM.new("llama", tokenizer="char", corpus=corpus, **TINY)
    path = write_jsonl(tmp_path / "c.jsonl", as_rows("messages"))
    with pytest.raises(TemplateError, match=r"tokenizer.add_special_tokens=\['<\|im_start\|>', '<\|im_end\|>'\]"):
        lm.fit(path, objective="sft", max_steps=1, progress=False)
    with pytest.raises(ConfigError, match="train.objective 'sft' tunes a decoder"):
        LM.new("bert", tokenizer="char", corpus=corpus, **TINY).fit(path, objective="sft", max_steps=1)


def test_batches_are_a_pure_function_of_the_step(tmp_path):
    lm = tiny_lm(tmp_path)
    task = sft_task(with_data(lm, write_jsonl(tmp_path / "c.jsonl", as_rows("messages") * 3)))
    task.grad_accum = 2
    first = [task.train_batch(s, m, 2) for s in range(3) for m in range(2)]
    again = [task.train_batch(s, m, 2) for s in reversed(range(3)) for m in reversed(range(2))][::-1]
    for a, b in zip(first, again):
        assert all(torch.equal(a[k], b[k]) for k in a)
