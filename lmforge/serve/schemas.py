"""Request bodies of the server's endpoints (OpenAI's names and ranges, plus a few marked extensions)."""
from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field

Text = Field(max_length=200_000)
TokenIds = list[int]


class Body(BaseModel):
    # unknown fields are ignored, as OpenAI-style servers do (clients send e.g. `user`); NaN/inf are refused
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class StreamOptions(Body):
    include_usage: bool = False


class Sampling(Body):
    """The generation options shared by completions and chat completions."""

    max_tokens: int | None = Field(None, ge=1, description="tokens to generate (default: 16 for completions, the "
                                                            "rest of the context for chat)")
    temperature: float = Field(1.0, ge=0, le=2, description="0 = greedy; below 1e-5 counts as 0")
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=128, description="continuations per prompt")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(None, description="up to 4 non-empty strings; the text ends before them")
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    presence_penalty: float = Field(0.0, ge=-2, le=2, description="only 0 is supported")
    frequency_penalty: float = Field(0.0, ge=-2, le=2, description="only 0 is supported")
    logit_bias: dict[str, float] | None = Field(None, description="not supported (must be empty)")
    user: str | None = None
    # extensions (vLLM spells them the same way)
    top_k: int | None = Field(None, ge=1, description="extension: sample from the k most likely tokens")
    repetition_penalty: float = Field(1.0, ge=0.1, le=10, description="extension: >1 discourages repeats")
    ignore_eos: bool = Field(False, description="extension: keep generating past the end-of-text token")
    num_beams: int = Field(1, ge=1, le=16, description="extension: beam search (not streamed; n <= num_beams)")
    length_penalty: float = Field(1.0, ge=-10, le=10, description="extension: beam score = logprob / length ** this")


class CompletionRequest(Sampling):
    model: str = Field(max_length=1000)
    prompt: Union[str, list[str], TokenIds, list[TokenIds]] = Field("", description="text, texts, or token ids")
    logprobs: int | None = Field(None, ge=0, le=5, description="log-probabilities of the chosen and top tokens")
    echo: bool = Field(False, description="only false is supported")
    best_of: int | None = Field(None, ge=1, le=1, description="only 1 is supported")
    suffix: str | None = Field(None, description="not supported")


class ContentPart(Body):
    type: Literal["text"]
    text: str = Text


class Message(Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[ContentPart], None] = Field(..., description="text, or a list of text parts")
    name: str | None = None


class ChatRequest(Sampling):
    model: str = Field(max_length=1000)
    messages: list[Message] = Field(min_length=1, max_length=1000)
    max_completion_tokens: int | None = Field(None, ge=1, description="same as max_tokens")
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


class EmbeddingRequest(Body):
    model: str = Field(max_length=1000)
    input: Union[str, list[str], TokenIds, list[TokenIds]] = Field(description="text, texts, or token ids")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, description="must equal the model's width when given")
    user: str | None = None


class FillMaskRequest(Body):
    model: str | None = Field(None, max_length=1000)
    text: str = Field(max_length=200_000, description="text with one or more [MASK]")
    top_k: int = Field(5, ge=1, le=100)


class ClassifyRequest(Body):
    model: str | None = Field(None, max_length=1000)
    texts: Union[str, list[str]] = Field(description="a text or a list of texts (at most 2048)")
    text_pairs: Union[str, list[str], None] = Field(None, description="second texts, one per text (pair tasks)")
