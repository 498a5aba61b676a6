"""The built-in synthetic seq2seq task: reverse a sequence of digits.

Ships with the package and needs no download. A source is 1..max_len digits followed by
EOS; its target is BOS, the same digits reversed, EOS. Sequences are right-padded with PAD
to the longest in their batch. Token ids:

    PAD = 0, BOS = 1, EOS = 2, digit d = 3 + d        (vocabulary of 13)

Example (max_len 5):  source "3 1 4"  ->  src ids  [6, 4, 7, 2]
                                          tgt ids  [1, 7, 4, 6, 2]
Teacher forcing feeds the decoder tgt[:-1] and scores its predictions against tgt[1:].

Train, validation and test splits are drawn from one seeded generator. Validation and test
hold unique sequences; a held-out sequence of MEMORISABLE_BELOW_LEN digits or more never
appears in train. Shorter lengths have so few sequences (10, 100, 1000) that holding some
out would leave train without them, so those may appear in both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np

PAD, BOS, EOS = 0, 1, 2
DIGIT_OFFSET = 3
NUM_DIGITS = 10
VOCAB_SIZE = DIGIT_OFFSET + NUM_DIGITS
SPECIAL_NAMES = {PAD: "<pad>", BOS: "<bos>", EOS: "<eos>"}
MEMORISABLE_BELOW_LEN = 4


@dataclass(frozen=True)
class ReverseTaskConfig:
    """Sizes of the reversal task. `min_len`/`max_len` count digits (EOS excluded)."""

    min_len: int = 1
    max_len: int = 10
    num_train: int = 20000
    num_val: int = 500
    num_test: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(
                f"min_len/max_len: expected 1 <= min_len <= max_len, got {self.min_len}, {self.max_len}"
            )
        for name in ("num_train", "num_val", "num_test"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive count, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)


def encode_digits(text: str) -> list[int]:
    """'3 1 4' (or '314') -> digit token ids [6, 4, 7]. Raises ValueError on anything else."""
    pieces = text.split() if any(ch.isspace() for ch in text.strip()) else list(text.strip())
    if not pieces:
        raise ValueError("input: expected at least one digit 0-9, got an empty string")
    ids = []
    for piece in pieces:
        if len(piece) != 1 or not piece.isdigit() or not piece.isascii():
            raise ValueError(
                f"input: unknown token {piece!r}; the vocabulary is the digits 0-9 separated by spaces"
            )
        ids.append(DIGIT_OFFSET + int(piece))
    return ids


def decode_tokens(ids) -> str:
    """Token ids -> '3 1 4', stopping at EOS, skipping BOS and PAD."""
    out = []
    for token in (int(t) for t in ids):
        if token == EOS:
            break
        if token in (BOS, PAD):
            continue
        out.append(str(token - DIGIT_OFFSET) if token >= DIGIT_OFFSET else SPECIAL_NAMES[token])
    return " ".join(out)


def source_ids(digits: list[int]) -> list[int]:
    """Digit token ids -> encoder input: digits + [EOS]."""
    return list(digits) + [EOS]


def target_ids(digits: list[int]) -> list[int]:
    """Digit token ids -> full target: [BOS] + reversed digits + [EOS]."""
    return [BOS] + list(reversed(digits)) + [EOS]


def pad_batch(sequences: list[list[int]], pad_id: int = PAD) -> np.ndarray:
    """Right-pad ragged id lists into an int64 array (B, max length)."""
    if not sequences:
        raise ValueError("sequences: expected at least one sequence")
    width = max(len(s) for s in sequences)
    out = np.full((len(sequences), width), pad_id, dtype=np.int64)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = seq
    return out


@dataclass
class Batch:
    """One padded batch, batch-first.

    src:      (B, S)    source ids, PAD on the right
    tgt_in:   (B, T)    decoder input: BOS + reversed digits (target without its last token)
    tgt_out:  (B, T)    labels: reversed digits + EOS, PAD where tgt_in is PAD
    src_key_padding_mask: (B, S) bool, True at PAD (torch's convention: True = ignore)
    tgt_key_padding_mask: (B, T) bool, True at PAD
    """

    src: np.ndarray
    tgt_in: np.ndarray
    tgt_out: np.ndarray

    @property
    def src_key_padding_mask(self) -> np.ndarray:
        return self.src == PAD

    @property
    def tgt_key_padding_mask(self) -> np.ndarray:
        return self.tgt_out == PAD

    @property
    def num_target_tokens(self) -> int:
        return int((self.tgt_out != PAD).sum())

    def __len__(self) -> int:
        return self.src.shape[0]


class Split:
    """A list of digit sequences (each a list of digit token ids) with batching."""

    def __init__(self, name: str, digit_sequences: list[list[int]]):
        self.name = name
        self.sequences = digit_sequences

    def __len__(self) -> int:
        return len(self.sequences)

    def batch(self, indices) -> Batch:
        seqs = [self.sequences[i] for i in indices]
        targets = pad_batch([target_ids(s) for s in seqs])  # (B, T+1)
        return Batch(
            src=pad_batch([source_ids(s) for s in seqs]),  # (B, S)
            tgt_in=targets[:, :-1],  # (B, T)
            tgt_out=targets[:, 1:],  # (B, T)
        )

    def batches(self, batch_size: int, *, shuffle: bool = False, rng=None) -> Iterator[Batch]:
        """Yield batches covering the split once; the last may be smaller."""
        if batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
        order = np.arange(len(self))
        if shuffle:
            if rng is None:
                raise ValueError("rng: shuffle=True needs a numpy Generator")
            order = rng.permutation(len(self))
        for start in range(0, len(self), batch_size):
            yield self.batch(order[start : start + batch_size])


@dataclass
class ReverseTask:
    config: ReverseTaskConfig
    train: Split
    val: Split
    test: Split

    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZE

    def split(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise ValueError(f"split: expected 'train', 'val' or 'test', got {name!r}")
        return getattr(self, name)


def make_reverse_task(config: ReverseTaskConfig | None = None) -> ReverseTask:
    """Draw the three splits. Lengths are uniform in [min_len, max_len]; digits uniform.

    Held-out sequences are drawn first and made unique; train then rejects any held-out
    sequence of MEMORISABLE_BELOW_LEN digits or more, so evaluation on those never sees a
    memorised example. Raises ValueError when the length range cannot hold the requested
    number of unique held-out sequences.
    """
    config = config or ReverseTaskConfig()
    space = sum(NUM_DIGITS**n for n in range(config.min_len, config.max_len + 1))
    held_out_needed = config.num_val + config.num_test
    if held_out_needed > space // 2:
        raise ValueError(
            f"num_val + num_test: {held_out_needed} unique sequences requested but lengths "
            f"{config.min_len}..{config.max_len} allow only {space}; raise max_len or shrink the splits"
        )
    rng = np.random.default_rng(config.seed)

    def draw() -> tuple[int, ...]:
        length = int(rng.integers(config.min_len, config.max_len + 1))
        return tuple(int(d) + DIGIT_OFFSET for d in rng.integers(0, NUM_DIGITS, size=length))

    held_out: dict[tuple[int, ...], None] = {}
    while len(held_out) < held_out_needed:
        held_out.setdefault(draw(), None)
    held = [list(s) for s in held_out]
    train: list[list[int]] = []
    while len(train) < config.num_train:
        seq = draw()
        if len(seq) < MEMORISABLE_BELOW_LEN or seq not in held_out:
            train.append(list(seq))
    return ReverseTask(
        config=config,
        train=Split("train", train),
        val=Split("val", held[: config.num_val]),
        test=Split("test", held[config.num_val :]),
    )
