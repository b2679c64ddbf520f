"""The tokenizer a recipe asks for: tokenizer.path loaded, a distillation teacher's, or one trained on the run's
own training text."""
from __future__ import annotations

from pathlib import Path

from ..config import LABELED_OBJECTIVES, Config, ConfigError
from ..data.corpus import iter_texts
from ..modeldir import read_tokenizer
from ..tasks.distill import missing_teacher
from ..tokenizer import TextSource, Tokenizer


def make_tokenizer(config: Config) -> Tokenizer:
    """Load tokenizer.path, or train one of tokenizer.kind on the training text."""
    tok = config.tokenizer
    if tok.path:
        return Tokenizer.load(tok.path)
    if config.train.distill_teacher and config.train.distill_tokenizer == "teacher":  # the teacher's tokens
        if not Path(config.train.distill_teacher).exists():
            raise missing_teacher(Path(config.train.distill_teacher))
        return read_tokenizer(config.train.distill_teacher)
    if config.train.objective == "sft":
        raise ConfigError("objective 'sft' fine-tunes a pretrained decoder: set model.init to a model directory or "
                          "GGUF file (its tokenizer and chat template are used)")
    if config.train.objective in LABELED_OBJECTIVES and config.data.train and not config.data.paths:
        from ..data.labeled import iter_labeled_texts
        texts = TextSource(lambda: iter_labeled_texts(config.data))
    else:
        texts = TextSource(lambda: _plain_texts(config))
    return Tokenizer.train(tok.kind, texts, tok.vocab_size, tok.lowercase)


def _plain_texts(config: Config):
    """data.paths' texts (scrubbed with data.scrub: the vocabulary must not learn what the scrub pass removes)."""
    texts = iter_texts(config.data.paths, config.data.text_field, config.data.encoding_errors)
    if config.data.scrub:
        from ..data.scrub import scrub_text
        texts = map(scrub_text, texts)
    return texts
