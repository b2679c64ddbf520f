"""Shared test helpers: small corpora and tiny models made on the spot (tests never download)."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.models import build_model

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def small_corpus(n_lines: int = 400, seed: int = 0) -> str:
    """Repetitive but not trivial English-like text a tiny model can learn in a few hundred steps."""
    rng = random.Random(seed)
    subjects = ["the cat", "a dog", "the old man", "my friend", "the bird"]
    verbs = ["sees", "likes", "finds", "eats", "wants"]
    objects = ["the red apple", "a small house", "the blue sea", "some bread", "the green tree"]
    return "".join(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}.\n" for _ in range(n_lines))


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(small_corpus(), encoding="utf-8")
    return path


def tiny_model(arch: str = "gpt", vocab_size: int = 50, **overrides):
    """A tiny randomly initialised model in eval mode, with a fixed seed."""
    torch.manual_seed(0)
    options = dict(arch=arch, n_layer=2, n_head=4, n_embd=32, block_size=32, vocab_size=vocab_size)
    options.update(overrides)
    return build_model(ModelConfig(**options)).eval()
