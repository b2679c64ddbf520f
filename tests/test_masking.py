"""MLM masking: BERT's 15% / 80-10-10 statistics, special tokens untouched, whole words, determinism."""
import numpy as np
import pytest

from lmforge.data.masking import IGNORE, Masker, mask_tokens
from lmforge.tokenizer import Tokenizer

WORDS = ("the function returns a value when its argument is valid otherwise it raises an exception "
         "iterating over dictionaries lists tuples and strings is straightforward in python").split()


def wordpiece(vocab_size: int = 300) -> Tokenizer:
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=12)) for _ in range(300)]
    return Tokenizer.train("wordpiece", texts, vocab_size, lowercase=True)


@pytest.fixture(scope="module")
def tokenizer():
    return wordpiece()


def sample_ids(tokenizer, rows=400, width=128, seed=1):
    """Rows like MLM batches: [CLS] ... [SEP] with some [SEP]/[PAD] inside, real ids elsewhere."""
    rng = np.random.default_rng(seed)
    ordinary = np.array(sorted(set(range(tokenizer.vocab_size)) - tokenizer.special_ids))
    ids = rng.choice(ordinary, size=(rows, width))
    ids[:, 0], ids[:, -1] = tokenizer.cls_id, tokenizer.sep_id
    ids[:, 40] = tokenizer.sep_id
    ids[:, 100:] = np.where(rng.random((rows, width - 100)) < 0.5, tokenizer.pad_id, ids[:, 100:])
    return ids


def test_masking_statistics_follow_bert(tokenizer):
    masker = Masker(tokenizer, mask_prob=0.15)
    ids = sample_ids(tokenizer)
    inputs, labels = masker(ids, np.random.default_rng(123))
    special = np.isin(ids, list(tokenizer.special_ids))
    chosen = labels != IGNORE
    # 15% of the non-special tokens (about 40k candidates: the standard error is ~0.002)
    assert abs(chosen[~special].mean() - 0.15) < 0.01
    assert not chosen[special].any(), "a special token was chosen"
    assert (inputs[special] == ids[special]).all(), "a special token was changed"
    assert (labels[chosen] == ids[chosen]).all()
    masked = inputs[chosen] == tokenizer.mask_id
    kept = inputs[chosen] == ids[chosen]
    replaced = ~masked & ~kept
    assert abs(masked.mean() - 0.8) < 0.02
    assert abs(replaced.mean() - 0.1) < 0.015
    assert abs(kept.mean() - 0.1) < 0.015
    # random replacements are ordinary tokens, never [MASK], [PAD], [CLS] ...
    assert not np.isin(inputs[chosen][replaced], list(tokenizer.special_ids)).any()
    # nothing outside the chosen positions changes
    assert (inputs[~chosen] == ids[~chosen]).all()


def test_masking_is_deterministic_per_generator_and_differs_across_seeds(tokenizer):
    masker = Masker(tokenizer)
    ids = sample_ids(tokenizer, rows=8)
    a = masker(ids, np.random.default_rng([5, 3, 0]))
    b = masker(ids, np.random.default_rng([5, 3, 0]))
    c = masker(ids, np.random.default_rng([5, 4, 0]))
    assert all((x == y).all() for x, y in zip(a, b))
    assert not (a[1] == c[1]).all()


def test_whole_word_masking_takes_every_piece_of_a_word(tokenizer):
    masker = Masker(tokenizer, mask_prob=0.15, whole_word=True)
    vocab = tokenizer.backend.get_vocab()
    pieces = [i for t, i in vocab.items() if t.startswith("##")]
    assert pieces, "the test tokenizer should have '##' continuation pieces"
    ids = sample_ids(tokenizer, rows=300)
    inputs, labels = masker(ids, np.random.default_rng(7))
    chosen = labels != IGNORE
    continuation = masker.continuation[ids]
    special = np.isin(ids, list(tokenizer.special_ids))
    # a continuation piece is chosen exactly when the piece before it is (same word), unless after a special
    follows = continuation[:, 1:] & ~special[:, :-1]
    assert (chosen[:, 1:][follows] == chosen[:, :-1][follows]).all()
    # about 15% of words are chosen
    starts = ~continuation & ~special
    assert abs(chosen[starts].mean() - 0.15) < 0.015
    assert not chosen[special].any()


def test_mask_tokens_with_a_hand_made_table():
    special = np.array([True, True, False, False, False, False])  # ids 0, 1 special
    ids = np.array([[0, 2, 3, 4, 5, 1]] * 2000)
    inputs, labels = mask_tokens(ids, np.random.default_rng(0), mask_id=1, special=special,
                                 random_ids=np.array([2, 3, 4, 5]), mask_prob=0.5)
    chosen = labels != IGNORE
    assert not chosen[:, [0, 5]].any()
    assert abs(chosen[:, 1:5].mean() - 0.5) < 0.02


def test_masker_needs_a_mask_token():
    char = Tokenizer.train("char", ["abc def"])
    with pytest.raises(ValueError, match=r"\[MASK\]"):
        Masker(char)
