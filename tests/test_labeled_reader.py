"""The labeled-data reader: GLUE-style TSV with a header as it is, streamed (one copy of the data in memory at
most), and encoded sets packed into flat arrays."""
import os
import random
import tracemalloc
import warnings

import pytest
import torch

from lmforge.data.corpus import DataError, read_records
from lmforge.data.labeled import EncodedSet, encode_example, read_labeled
from lmforge.tokenizer import Tokenizer

from conftest import SHARED

PHRASES = SHARED / "sst2-phrases" / "train.tsv"
WORDS = "the a film movie story plot actor scene good bad dull moving funny slow sharp warm cold long short".split()


def synthetic_tsv(path, rows, seed=0):
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("sentence\tlabel\n")
        for _ in range(rows):
            handle.write(" ".join(rng.choices(WORDS, k=rng.randint(1, 18))) + f" \t{rng.randint(0, 1)}\n")
    return path


def test_a_glue_tsv_with_its_header_is_read_as_it_is(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\nhide new secretions from the parental units \t0\n"
                    "the greatest musicians \t1\nit 's a charming and often affecting journey . \t1\n")
    data = read_labeled(path, text_field="sentence", label_field="label")
    assert data.texts == ["hide new secretions from the parental units ", "the greatest musicians ",
                          "it 's a charming and often affecting journey . "]
    assert data.labels == ["0", "1", "1"]
    with pytest.raises(DataError, match=r"row 1 has no column 'text' \(columns: sentence, label\); set data.text_field"):
        read_labeled(path)


@pytest.mark.skipif(not PHRASES.is_file(), reason=f"{PHRASES} is absent (see ../shared/data/SOURCES.md)")
def test_the_shared_sst2_phrase_file_reads_whole_in_one_copy():
    size = os.path.getsize(PHRASES)
    tracemalloc.start()
    try:
        data = read_labeled(PHRASES, text_field="sentence", label_field="label")
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"sst2-phrases/train.tsv {size / 2**20:.2f} MiB: rows kept {kept / 2**20:.2f} MiB, peak {peak / 2**20:.2f} MiB")
    assert len(data) == 67_349 and set(data.labels) == {"0", "1"}
    assert data.texts[0] == "hide new secretions from the parental units "
    assert peak - kept < 0.1 * size


def test_reading_holds_one_copy_of_the_data_and_encoding_packs_it_flat(tmp_path):
    path = synthetic_tsv(tmp_path / "train.tsv", 67_349)
    size = os.path.getsize(path)
    tracemalloc.start()
    try:
        data = read_labeled(path, text_field="sentence", label_field="label")
        kept, peak = tracemalloc.get_traced_memory()
        # the rows themselves (Python strings) are all that reading leaves or ever held beyond a few buffers;
        # reading the whole file first (bytes, then its decoded text, then a csv buffer) would add 2-3x its size
        print(f"file {size / 2**20:.2f} MiB: read rows {kept / 2**20:.2f} MiB, peak {peak / 2**20:.2f} MiB")
        assert peak - kept < 0.1 * size
        tokenizer = Tokenizer.train("word", iter(data.texts), 64)
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        encoded = EncodedSet(data, tokenizer, ["0", "1"], 64)
        after, peak = tracemalloc.get_traced_memory()
        print(f"encoded: {(after - before) / 2**20:.2f} MiB kept, {(peak - before) / 2**20:.2f} MiB at the peak")
        # flat int32 tokens and offsets: about the file's size (Python lists of ints would be ~10x)
        assert after - before < 1.5 * size and peak - before < 2 * size
    finally:
        tracemalloc.stop()
    assert len(encoded) == len(data)
    for i in (0, 1, 500, len(data) - 1):
        assert encoded.example(i) == encode_example(tokenizer, data.texts[i], None, 64)


def test_packed_batches_equal_the_examples_right_padded():
    tokenizer = Tokenizer.train("wordpiece", ["the film was good", "a bad plot", "moving and warm"] * 10, 64)
    from lmforge.data.labeled import LabeledSet
    data = LabeledSet("x", ["the film was good", "a plot", "moving"], ["1", "0", "1"], ["a bad plot", "warm", "x"])
    encoded = EncodedSet(data, tokenizer, ["0", "1"], 16)
    batch = encoded.batch([2, 0])
    for row, index in enumerate([2, 0]):
        ids, types = encode_example(tokenizer, data.texts[index], data.pairs[index], 16)
        n = len(ids)
        assert batch["ids"][row, :n].tolist() == ids and batch["token_type_ids"][row, :n].tolist() == types
        assert batch["pad_mask"][row].tolist() == [True] * n + [False] * (batch["ids"].size(1) - n)
        assert (batch["ids"][row, n:] == tokenizer.pad_id).all()
    assert batch["labels"].tolist() == [1, 1] and batch["ids"].dtype == torch.long
    assert 1 in batch["token_type_ids"][0].tolist()  # the pair's tokens have type 1


def test_streamed_records_keep_the_readers_checks(tmp_path):
    utf16 = tmp_path / "utf16.csv"
    utf16.write_bytes("text,label\nnaïve café,1\n".encode("utf-16"))
    assert list(read_records(utf16)) == [{"text": "naïve café", "label": "1"}]
    bad = tmp_path / "bad.tsv"
    bad.write_bytes(b"text\tlabel\n" + b"fine row\t1\n" * 50 + b"caf\xe9\t0\n")
    with pytest.warns(UserWarning, match="1 invalid UTF-8"):
        assert list(read_records(bad))[-1] == {"text": "caf\ufffd", "label": "0"}
    with pytest.raises(DataError, match=r"bad.tsv' is not valid UTF-8 \(first bad byte at offset 564\)"):
        list(read_records(bad, errors="strict"))
    binary = tmp_path / "blob.csv"
    binary.write_bytes(b"text,label\n" + os.urandom(8000))
    with pytest.raises(DataError, match="does not look like text"):
        list(read_records(binary))
    late = tmp_path / "late.csv"  # clean at the start, mostly NULs after the first 64 KiB: judged on the whole
    late.write_bytes(b"text,label\n" + b"ok,1\n" * 20_000 + b"\0" * 400_000)
    with warnings.catch_warnings(), pytest.raises(DataError, match="does not look like text"):
        warnings.simplefilter("ignore")
        list(read_records(late))


def test_length_buckets_keep_every_row_once_an_epoch_and_cut_padding():
    from lmforge.tasks.classify import ClassificationTask

    tokenizer = Tokenizer.train("word", [" ".join(WORDS)], 64)
    rng = random.Random(3)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(1, 40))) for _ in range(1000)]
    from lmforge.data.labeled import LabeledSet
    encoded = EncodedSet(LabeledSet("x", texts, ["0", "1"] * 500), tokenizer, ["0", "1"], 64)
    plain = ClassificationTask(encoded, None, ["0", "1"], seed=5)
    bucketed = ClassificationTask(encoded, None, ["0", "1"], seed=5)
    bucketed.bucket_by_length = True
    padding = {}
    for name, task in (("plain", plain), ("bucketed", bucketed)):
        batches = [task.train_batch(step, 0, 10) for step in range(100)]  # exactly one epoch
        rows = sorted(tuple(row[mask].tolist()) for b in batches for row, mask in zip(b["ids"], b["pad_mask"]))
        assert rows == sorted(tuple(encoded.example(i)[0]) for i in range(1000))  # every row once
        padding[name] = sum(int((~b["pad_mask"]).sum()) for b in batches) / sum(int(b["pad_mask"].sum()) for b in batches)
        again = task.train_batch(37, 0, 10)
        assert torch.equal(again["ids"], batches[37]["ids"])  # a pure function of (seed, step)
    assert padding["bucketed"] < 0.1 * padding["plain"], padding
    # off, the order is the plain per-epoch permutation, as before buckets existed
    import numpy as np
    first = plain.train_batch(0, 0, 10)["labels"].tolist()
    order = np.random.default_rng([5, 0]).permutation(1000)[:10]
    assert first == [int(encoded.targets[i]) for i in order]


def test_token_dropout_replaces_a_share_of_real_tokens_by_unk_and_nothing_else():
    from lmforge.data.labeled import LabeledSet
    from lmforge.tasks.classify import ClassificationTask

    rng = random.Random(4)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(1, 30))) for _ in range(400)]
    tokenizer = Tokenizer.train("wordpiece", texts, 120)
    encoded = EncodedSet(LabeledSet("x", texts, ["0", "1"] * 200), tokenizer, ["0", "1"], 64)
    plain = ClassificationTask(encoded, encoded, ["0", "1"], seed=5)
    dropped = ClassificationTask(encoded, encoded, ["0", "1"], seed=5)
    dropped.drop_tokens(0.3, tokenizer)
    unk, specials = tokenizer.unk_id, tokenizer.special_ids - {tokenizer.unk_id}
    changed = candidates = 0
    for step in range(20):
        a, b = plain.train_batch(step, 0, 16), dropped.train_batch(step, 0, 16)
        assert torch.equal(a["pad_mask"], b["pad_mask"]) and torch.equal(a["labels"], b["labels"])
        differs = a["ids"] != b["ids"]
        assert (b["ids"][differs] == unk).all()  # only ever [UNK] in place of a token
        keep = ~a["pad_mask"] | torch.isin(a["ids"], torch.tensor(sorted(specials)))
        assert not differs[keep].any()  # [CLS], [SEP] and padding stay
        changed += int(differs.sum())
        candidates += int((~keep & (a["ids"] != unk)).sum())
        assert torch.equal(dropped.train_batch(step, 0, 16)["ids"], b["ids"])  # a pure function of (seed, step)
    assert 0.25 < changed / candidates < 0.35, changed / candidates
    val = next(dropped.val_batches(16, "cpu"))  # validation reads every token
    assert torch.equal(val["ids"], next(plain.val_batches(16, "cpu"))["ids"])
    with pytest.raises(ValueError, match="has none"):  # byte-level BPE has no unknown token
        dropped.drop_tokens(0.3, Tokenizer.train("bpe", texts, 300))
