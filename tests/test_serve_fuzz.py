"""Schemathesis fuzzes every endpoint of the server's OpenAPI schema: no input may give a 5xx (slow)."""
import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

from serve_harness import live_server, tiny_lm  # noqa: E402


def _fuzz(lm, examples: int = 300) -> None:
    with live_server(lm, max_batch=4, max_queue=16, timeout=30) as (url, app, _):
        schema = schemathesis.openapi.from_dict(app.openapi())
        strategies = [schema.as_strategy(generation_mode=mode) for mode in GenerationMode]

        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(st.one_of(strategies), st.booleans())
        def no_server_error(case, served_name):
            if served_name and isinstance(case.body, dict) and "model" in case.body:
                case.body["model"] = "tiny"  # reach past the model check into generation itself
            response = case.call(base_url=url, timeout=60)
            assert response.status_code < 500, f"{case.method} {case.path} {case.body!r:.300} -> " \
                                               f"{response.status_code} {response.text[:300]}"
            if response.status_code >= 400 and case.path.startswith("/v1/"):
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}, response.text

        no_server_error()


@pytest.mark.slow
def test_decoder_server_never_answers_5xx():
    _fuzz(tiny_lm("gpt", block_size=64))


@pytest.mark.slow
def test_encoder_server_never_answers_5xx():
    _fuzz(tiny_lm("bert", block_size=64, labels=["neg", "pos"]))
