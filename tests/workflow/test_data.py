"""The built-in reversal task: tokens, targets, padding, masks and disjoint splits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flashref.workflow.data import (
    BOS,
    EOS,
    MEMORISABLE_BELOW_LEN,
    PAD,
    ReverseTaskConfig,
    decode_tokens,
    encode_digits,
    make_reverse_task,
    pad_batch,
)


@pytest.mark.parametrize("text, ids", [
    ("3 1 4", [6, 4, 7]),
    ("314", [6, 4, 7]),
    ("  0  9 ", [3, 12]),
    ("7", [10]),
])
def test_encode_digits(text, ids):
    assert encode_digits(text) == ids


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("3 a 4", "unknown token 'a'"),
    ("3 14", "unknown token '14'"),
    ("3 -1", "unknown token '-1'"),
    ("٣", "unknown token"),  # a non-ASCII digit
])
def test_encode_digits_rejects_unknown_tokens(text, message):
    with pytest.raises(ValueError, match=message):
        encode_digits(text)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.integers(0, 9), min_size=1, max_size=12), min_size=1, max_size=6))
def test_batch_is_teacher_forcing_of_the_reversal(digit_lists):
    """tgt_out is tgt_in shifted by one; labels are the reversed digits then EOS; PAD masks."""
    from flashref.workflow.data import Split

    split = Split("t", [[d + 3 for d in ds] for ds in digit_lists])
    batch = split.batch(range(len(split)))
    for row, ds in enumerate(digit_lists):
        n = len(ds)
        assert decode_tokens(batch.src[row]) == " ".join(map(str, ds))
        assert decode_tokens(batch.tgt_out[row]) == " ".join(map(str, reversed(ds)))
        assert batch.tgt_in[row, 0] == BOS and batch.tgt_out[row, n] == EOS
        np.testing.assert_array_equal(batch.tgt_in[row, 1 : n + 1], batch.tgt_out[row, :n])
        assert not batch.src_key_padding_mask[row, : n + 1].any() and batch.src_key_padding_mask[row, n + 1 :].all()
        assert batch.tgt_key_padding_mask[row].sum() == batch.tgt_out.shape[1] - (n + 1)
    assert batch.num_target_tokens == sum(len(ds) + 1 for ds in digit_lists)


def test_splits_are_seeded_and_held_out_sequences_are_unseen():
    config = ReverseTaskConfig(num_train=3000, num_val=200, num_test=300, seed=7)
    task, again = make_reverse_task(config), make_reverse_task(config)
    assert task.train.sequences == again.train.sequences and task.test.sequences == again.test.sequences
    held = {tuple(s) for s in task.val.sequences + task.test.sequences}
    assert len(held) == 500  # unique
    leaked = [s for s in task.train.sequences if tuple(s) in held and len(s) >= MEMORISABLE_BELOW_LEN]
    assert leaked == []
    lengths = {len(s) for s in task.train.sequences}
    assert lengths == set(range(config.min_len, config.max_len + 1))
    assert make_reverse_task(ReverseTaskConfig(num_train=3000, num_val=200, num_test=300, seed=8)).test.sequences \
        != task.test.sequences


def test_shuffled_batches_cover_the_split_once():
    task = make_reverse_task(ReverseTaskConfig(num_train=103, num_val=5, num_test=5))
    seen = []
    for batch in task.train.batches(10, shuffle=True, rng=np.random.default_rng(0)):
        seen += [decode_tokens(row) for row in batch.src]
    assert sorted(seen) == sorted(" ".join(str(d - 3) for d in s) for s in task.train.sequences)


@pytest.mark.parametrize("kwargs, message", [
    (dict(min_len=0), "min_len"),
    (dict(min_len=5, max_len=4), "min_len"),
    (dict(num_train=0), "num_train"),
    (dict(max_len=2, num_val=100, num_test=100), "unique sequences"),
])
def test_bad_task_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_reverse_task(ReverseTaskConfig(**kwargs))


def test_pad_batch():
    np.testing.assert_array_equal(pad_batch([[5], [4, 3, 2]]), [[5, PAD, PAD], [4, 3, 2]])
    with pytest.raises(ValueError, match="at least one"):
        pad_batch([])
