"""The HTTP server, driven by the real `openai` client on 127.0.0.1: outputs equal the library's, streaming,
batching under 50 concurrent clients, disconnects, a full queue, API keys, and 4xx errors in OpenAI's shape."""
import asyncio
import json
import sys
import time

import httpx
import pytest
import torch

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

from serve_harness import live_server, tiny_lm  # noqa: E402

PROMPTS = ["the cat", "a dog likes the", "my friend wants", "the old man sees the blue", "t"]


@pytest.fixture(scope="module")
def gpt():
    return tiny_lm("gpt")


@pytest.fixture(scope="module")
def server(gpt):
    with live_server(gpt, max_batch=8, max_queue=64) as (url, app, _):
        yield url, app


def client(url, **kw):
    return openai.OpenAI(base_url=url + "/v1", api_key=kw.pop("api_key", "none"), max_retries=0, **kw)


def metric(url, name):
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise KeyError(name)


def test_completions_equal_generate_greedy_and_seeded(gpt, server):
    url, _ = server
    c = client(url)
    for prompt in PROMPTS[:3]:
        got = c.completions.create(model="tiny", prompt=prompt, max_tokens=25, temperature=0)
        assert got.choices[0].text == gpt.generate(prompt, max_new_tokens=25, temperature=0)
        assert got.usage.prompt_tokens == len(gpt.tokenizer.encode(prompt))
    sampled = c.completions.create(model="tiny", prompt="the", max_tokens=30, temperature=0.9, top_p=0.95, seed=7)
    assert sampled.choices[0].text == gpt.generate("the", max_new_tokens=30, temperature=0.9, top_p=0.95, seed=7)
    # n choices: choice j uses seed + j
    several = c.completions.create(model="tiny", prompt="the", max_tokens=10, temperature=1.0, seed=3, n=3)
    assert [ch.text for ch in several.choices] == [gpt.generate("the", max_new_tokens=10, seed=3 + j) for j in range(3)]
    assert len({ch.text for ch in several.choices}) > 1


def test_stop_strings_and_logprobs(gpt, server):
    url, _ = server
    c = client(url)
    full = gpt.generate("the cat", max_new_tokens=40, temperature=0)
    stop = full[5:7]
    got = c.completions.create(model="tiny", prompt="the cat", max_tokens=40, temperature=0, stop=[stop])
    assert got.choices[0].text == full[:full.find(stop)] and got.choices[0].finish_reason == "stop"
    got = c.completions.create(model="tiny", prompt="the cat", max_tokens=5, temperature=0, logprobs=2)
    lp = got.choices[0].logprobs
    assert "".join(lp.tokens) == got.choices[0].text and got.choices[0].finish_reason == "length"
    ids = gpt.tokenizer.encode("the cat" + got.choices[0].text)
    with torch.no_grad():
        reference = gpt.model(torch.tensor([ids]))[0].log_softmax(-1)
    start = len(gpt.tokenizer.encode("the cat"))
    for i, value in enumerate(lp.token_logprobs):
        assert value == pytest.approx(float(reference[start - 1 + i, ids[start + i]]), abs=1e-4)
        assert max(lp.top_logprobs[i].values()) == pytest.approx(value, abs=1e-5)  # greedy: the top token


def test_streaming_gives_the_same_text_in_openai_chunks(gpt, server):
    url, _ = server
    c = client(url)
    expected = gpt.generate("a dog", max_new_tokens=30, temperature=0)
    chunks = list(c.completions.create(model="tiny", prompt="a dog", max_tokens=30, temperature=0, stream=True,
                                       stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == expected
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 30 and len(chunks) > 5


def recording_prompts(app):
    """Record the prompt ids of every generation the engine is given (the engine itself runs as always)."""
    seen, submit = [], app.state.engine.submit

    def record(job):
        seen.extend(seq.prompt for seq in getattr(job, "sequences", ()))
        return submit(job)

    app.state.engine.submit = record
    return seen


def test_chat_goes_through_the_jinja_template_streamed_or_not(gpt, server):
    url, app = server
    c = client(url)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the cat"}]
    seen = recording_prompts(app)
    try:
        prompt = gpt.apply_chat_template(messages)  # no template of its own: the built-in ChatML one
        assert prompt == "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nthe cat<|im_end|>\n" \
                         "<|im_start|>assistant\n"
        expected = gpt.chat(messages, max_new_tokens=20)
        got = c.chat.completions.create(model="tiny", messages=messages, max_tokens=20, temperature=0)
        assert got.choices[0].message.content == expected and got.choices[0].message.role == "assistant"
        stream = c.chat.completions.create(model="tiny", messages=messages, max_tokens=20, temperature=0, stream=True)
        pieces = [ch.choices[0].delta.content or "" for ch in stream]
        assert "".join(pieces) == expected
        assert seen == [gpt.tokenizer.encode(prompt)] * 2  # the prompt the engine saw, both times
    finally:
        del app.state.engine.submit


def test_chat_uses_the_models_own_jinja_template(tmp_path):
    lm = tiny_lm("gpt")
    lm.meta["chat_template"] = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                                "{{ raise_exception('no system messages, please') }}{% endif %}"
                                "{{ m['role'][0] | upper }}: {{ m['content'] }}\n{% endfor %}A:")
    messages = [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": "sees"},
                {"role": "user", "content": "a dog"}]
    with live_server(lm, max_batch=2) as (url, app, _):
        seen = recording_prompts(app)
        got = client(url).chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)
        assert seen == [lm.tokenizer.encode("U: the cat\nA: sees\nU: a dog\nA:")]
        assert got.choices[0].message.content == lm.chat(messages, max_new_tokens=12)
        refused = httpx.post(url + "/v1/chat/completions", json={
            "model": "tiny", "messages": [{"role": "system", "content": "hi"}, *messages]})
        assert refused.status_code == 400
        assert "refused the conversation: no system messages, please" in refused.json()["error"]["message"]


def test_embeddings_are_mean_pooled_states_in_openai_shape(gpt, server):
    url, _ = server
    c = client(url)
    texts = ["the cat sees", "a dog"]
    got = c.embeddings.create(model="tiny", input=texts)  # the client asks for base64 and decodes it
    ids = gpt.tokenizer.encode(texts[1])
    with torch.no_grad():
        states = gpt.model.hidden_states(torch.tensor([ids]))[0].mean(0)
    expected = torch.nn.functional.normalize(states, dim=0)
    assert [d.index for d in got.data] == [0, 1] and len(got.data[1].embedding) == 32
    assert torch.allclose(torch.tensor(got.data[1].embedding), expected, atol=1e-5)
    floats = httpx.post(url + "/v1/embeddings", json={"model": "tiny", "input": texts, "encoding_format": "float"}).json()
    assert floats["data"][0]["embedding"] == pytest.approx(got.data[0].embedding, abs=1e-6)
    assert floats["usage"]["prompt_tokens"] == sum(len(gpt.tokenizer.encode(t)) for t in texts)


def test_beam_search_extension_equals_the_library(gpt, server):
    url, _ = server
    got = client(url).completions.create(model="tiny", prompt="the cat", max_tokens=12, n=2,
                                         extra_body={"num_beams": 4, "length_penalty": 1.0})
    assert got.choices[0].text == gpt.generate("the cat", max_new_tokens=12, num_beams=4, length_penalty=1.0)
    assert len(got.choices) == 2


def test_fifty_concurrent_streaming_clients_complete_with_no_errors(gpt, server):
    url, _ = server
    expected = {p: gpt.generate(p, max_new_tokens=20, temperature=0) for p in PROMPTS}
    tokens, steps = metric(url, "lmforge_generated_tokens_total"), metric(url, "lmforge_decode_steps_total")

    async def one(c, prompt):
        stream = await c.completions.create(model="tiny", prompt=prompt, max_tokens=20, temperature=0, stream=True)
        return prompt, "".join([ch.choices[0].text async for ch in stream])

    async def main():
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120) as c:
            return await asyncio.gather(*(one(c, PROMPTS[i % len(PROMPTS)]) for i in range(50)),
                                        return_exceptions=True)

    results = asyncio.run(main())
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    # rows joining and leaving the running batch still get exactly what each prompt gets alone
    assert all(text == expected[prompt] for prompt, text in results)
    tokens, steps = metric(url, "lmforge_generated_tokens_total") - tokens, metric(url, "lmforge_decode_steps_total") - steps
    assert tokens >= 50 * 20 and tokens / steps > 2  # sequences were decoded together (max_batch 8)


def test_a_disconnect_mid_stream_stops_generation_and_frees_the_slot(gpt):
    with live_server(gpt, max_batch=1, max_queue=4) as (url, app, _):
        before = metric(url, "lmforge_generated_tokens_total")
        with httpx.stream("POST", url + "/v1/completions", json={
                "model": "tiny", "prompt": "the", "max_tokens": 250, "stream": True, "ignore_eos": True}) as response:
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data:"))
        deadline = time.monotonic() + 20
        while metric(url, "lmforge_active_sequences") != 0 or metric(url, "lmforge_cancelled_total") != 1:
            assert time.monotonic() < deadline, "the slot was not freed"
            time.sleep(0.02)
        generated = metric(url, "lmforge_generated_tokens_total") - before
        assert generated < 250  # generation stopped early
        # the single slot serves the next request
        got = client(url).completions.create(model="tiny", prompt="a", max_tokens=5, temperature=0)
        assert got.choices[0].text == gpt.generate("a", max_new_tokens=5, temperature=0)


@pytest.fixture(scope="module")
def long_gpt():
    return tiny_lm("gpt", block_size=1024)


LONG = {"model": "tiny", "prompt": "the", "max_tokens": 1000, "ignore_eos": True}


def test_a_client_that_leaves_a_non_streamed_request_cancels_it(long_gpt):
    with live_server(long_gpt, max_batch=1) as (url, app, _):
        with pytest.raises(httpx.TimeoutException):
            httpx.post(url + "/v1/completions", json=LONG, timeout=0.2)
        deadline = time.monotonic() + 20
        while metric(url, "lmforge_cancelled_total") != 1:
            assert time.monotonic() < deadline, "the generation was not cancelled"
            time.sleep(0.02)
        assert metric(url, "lmforge_active_sequences") == 0
        assert metric(url, "lmforge_generated_tokens_total") < 1000


def test_a_request_past_the_timeout_gets_504(long_gpt):
    with live_server(long_gpt, timeout=0.1) as (url, app, _):
        response = httpx.post(url + "/v1/completions", json=LONG, timeout=60)
        assert response.status_code == 504 and "timeout" in response.json()["error"]["message"]
        assert metric(url, "lmforge_active_sequences") == 0


def test_a_full_queue_answers_503_with_retry_after(gpt):
    body = {"model": "tiny", "prompt": "the", "max_tokens": 250, "stream": True, "ignore_eos": True}
    with live_server(gpt, max_batch=1, max_queue=1) as (url, app, _):
        with httpx.Client(timeout=60) as http, http.stream("POST", url + "/v1/completions", json=body) as first:
            lines = first.iter_lines()
            next(line for line in lines if line.startswith("data:"))  # running: holds the one slot
            with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as second:
                deadline = time.monotonic() + 20
                while metric(url, "lmforge_queue_depth") != 1:  # waiting: fills the queue
                    assert time.monotonic() < deadline
                    time.sleep(0.005)
                third = httpx.post(url + "/v1/completions", json={**body, "stream": False})
                assert third.status_code == 503 and int(third.headers["retry-after"]) >= 1
                assert "busy" in third.json()["error"]["message"]
                assert second.status_code == 200
        assert metric(url, "lmforge_rejected_total") == 1


def test_api_key(gpt):
    with live_server(gpt, api_key="sesame") as (url, app, _):
        with pytest.raises(openai.AuthenticationError):
            client(url, api_key="wrong").models.list()
        assert httpx.get(url + "/v1/models").status_code == 401
        assert client(url, api_key="sesame").models.list().data[0].id == "tiny"
        assert httpx.get(url + "/health").status_code == 200  # health and metrics stay open


def test_graceful_shutdown_finishes_the_request_in_flight(gpt):
    expected = gpt.generate("the", max_new_tokens=200, temperature=0, stop=[], seed=None)
    with live_server(gpt) as (url, app, server):
        with httpx.stream("POST", url + "/v1/completions", json={
                "model": "tiny", "prompt": "the", "max_tokens": 200, "temperature": 0, "stream": True}) as response:
            events = response.iter_lines()
            pieces = [json.loads(next(e for e in events if e.startswith("data:"))[5:])["choices"][0]["text"]]
            server.should_exit = True  # what SIGTERM / Ctrl-C do
            for event in events:
                if event.startswith("data:") and event != "data: [DONE]":
                    pieces.append(json.loads(event[5:])["choices"][0]["text"])
    assert "".join(pieces) == expected


BAD = [
    ("/v1/completions", b"{not json", 400, None),
    ("/v1/completions", {"prompt": "x"}, 400, "model"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "temperature": -1}, 400, "temperature"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 10_000}, 400, "max_tokens"),
    ("/v1/completions", {"model": "tiny", "prompt": "x" * 300}, 400, "prompt"),
    ("/v1/completions", {"model": "other", "prompt": "x"}, 404, "model"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "n": 9}, 400, "n"),
    ("/v1/completions", {"model": "tiny", "prompt": [10_000]}, 400, "prompt"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "stop": ""}, 400, "stop"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "stream": True, "num_beams": 2}, 400, "stream"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "presence_penalty": 1}, 400, "presence_penalty"),
    ("/v1/chat/completions", {"model": "tiny", "messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}, 400, "messages.0.role"),
    ("/v1/embeddings", {"model": "tiny", "input": ""}, 400, "input"),
    ("/v1/embeddings", {"model": "tiny", "input": "x", "dimensions": 8}, 400, "dimensions"),
    ("/v1/fill-mask", {"text": "a [MASK]"}, 400, None),
    ("/v1/classify", {"texts": ["a"]}, 400, None),
    ("/v1/nowhere", {}, 404, None),
]


@pytest.mark.parametrize("path,body,status,param", BAD)
def test_bad_requests_get_a_4xx_in_openai_error_shape(server, path, body, status, param):
    url, _ = server
    kwargs = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) \
        else {"json": body}
    response = httpx.post(url + path, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and set(error) == {"message", "type", "param", "code"}
    if param is not None:
        assert error["param"] == param


def test_encoder_endpoints_fill_mask_classify_embeddings():
    lm = tiny_lm("bert", labels=["neg", "pos"])
    with live_server(lm) as (url, app, _):
        got = httpx.post(url + "/v1/fill-mask", json={"text": "the cat [MASK] the red apple.", "top_k": 3}).json()
        assert got["masks"][0]["predictions"] == [{"token": t, "probability": pytest.approx(p, abs=1e-5)}
                                                  for t, p in lm.fill_mask("the cat [MASK] the red apple.", top_k=3)]
        # as `curl -d` sends it: JSON labelled as a form
        got = httpx.post(url + "/v1/classify", content=b'{"texts": ["the cat", "a dog eats"]}',
                         headers={"content-type": "application/x-www-form-urlencoded"}).json()
        assert [(d["label"], d["probabilities"]) for d in got["data"]] == [
            (label, pytest.approx(probs, abs=1e-5)) for label, probs in lm.classify(["the cat", "a dog eats"])]
        emb = client(url).embeddings.create(model="tiny", input="the cat")
        assert torch.allclose(torch.tensor(emb.data[0].embedding), lm.embed("the cat"), atol=1e-5)
        response = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "x"})
        assert response.status_code == 400 and "decoder" in response.json()["error"]["message"]


def test_metrics_and_health(server):
    url, _ = server
    client(url).completions.create(model="tiny", prompt="the", max_tokens=3)
    text = httpx.get(url + "/metrics").text
    assert 'lmforge_requests_total{endpoint="/v1/completions",status="200"}' in text
    assert "lmforge_request_latency_seconds_bucket{le=\"+Inf\"}" in text and "lmforge_queue_depth 0" in text
    assert metric(url, "lmforge_generated_tokens_total") >= 3
    assert httpx.get(url + "/health").json()["status"] == "ok"


def test_missing_serve_extra_names_the_install_command(monkeypatch):
    from lmforge.serve import require_serve_packages

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn now raises ImportError
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'lmforge\[serve\]'"):
        require_serve_packages()


def test_cli_serve_help_and_errors(tmp_path, capsys):
    from lmforge.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "lmforge serve runs/gpt-tiny/final" in capsys.readouterr().out
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--max-batch", "0"]) == 2
    assert "--max-batch must be >= 1" in capsys.readouterr().err


def test_cli_generate_num_beams(tmp_path, capsys, gpt):
    from lmforge.cli import main

    gpt.save(tmp_path / "m")
    assert main(["generate", str(tmp_path / "m"), "--prompt", "the", "--num-beams", "3", "--max-new-tokens", "8",
                 "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["text"] == gpt.generate("the", max_new_tokens=8, num_beams=3)
