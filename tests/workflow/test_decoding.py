"""Greedy and beam-search decoding on small random models.

Beam search with a beam as wide as the number of prefixes and no length penalty is exact:
it must find the same best sequence (and log-probability) as brute-force enumeration.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from flashref.workflow.data import BOS, EOS
from flashref.workflow.decoding import beam_search, greedy_decode
from flashref.reference.seq2seq import Seq2SeqConfig, Seq2SeqModel

from transformer_cases import fresh_seed, sequence_log_prob


def tiny_model(seed: int, vocab_size: int = 13) -> Seq2SeqModel:
    config = Seq2SeqConfig(vocab_size=vocab_size, d_model=8, nhead=2, num_encoder_layers=1,
                           num_decoder_layers=1, dim_feedforward=12, max_len=16)
    model = Seq2SeqModel(config, rng=np.random.default_rng(seed))
    for p in model.parameters():  # sharper distributions than the init, so argmax paths differ
        p.data *= 3.0
    return model


def test_beam_search_is_exact_when_the_beam_holds_every_prefix():
    seed = fresh_seed("beam exact")
    vocab, steps = 5, 3
    model = tiny_model(seed, vocab_size=vocab).eval()
    src = np.random.default_rng(seed).integers(3, vocab, size=4).tolist() + [EOS]
    candidates = []
    for length in range(1, steps + 1):
        for tokens in itertools.product(range(vocab), repeat=length):
            if EOS in tokens[:-1] or (length < steps and tokens[-1] != EOS):
                continue
            candidates.append((sequence_log_prob(model, src, tokens), tokens))
    best_log_prob, best_tokens = max(candidates)
    hyps = beam_search(model, src, beam_size=vocab**steps, max_new_tokens=steps)
    assert hyps[0].tokens == best_tokens
    assert abs(hyps[0].log_prob - best_log_prob) < 1e-10
    for h in hyps:  # every reported score is the sequence's true log-probability
        assert abs(h.log_prob - sequence_log_prob(model, src, h.tokens)) < 1e-10
    assert [h.log_prob for h in hyps] == sorted((h.log_prob for h in hyps), reverse=True)


def test_beam_of_one_is_greedy():
    seed = fresh_seed("beam 1 == greedy")
    model = tiny_model(seed)
    rng = np.random.default_rng(seed)
    for _ in range(3):
        src = rng.integers(3, 13, size=int(rng.integers(1, 8))).tolist() + [EOS]
        greedy = greedy_decode(model, np.array([src]), max_new_tokens=10)[0]
        assert list(beam_search(model, src, beam_size=1, max_new_tokens=10)[0].tokens) == greedy


def test_batched_greedy_equals_one_by_one():
    """Padding a source inside a batch must not change its decoding."""
    seed = fresh_seed("batched greedy")
    model = tiny_model(seed)
    rng = np.random.default_rng(seed)
    sources = [rng.integers(3, 13, size=int(n)).tolist() + [EOS] for n in rng.integers(1, 9, size=5)]
    width = max(map(len, sources))
    batch = np.array([s + [0] * (width - len(s)) for s in sources])
    together = greedy_decode(model, batch, max_new_tokens=9)
    alone = [greedy_decode(model, np.array([s]), max_new_tokens=9)[0] for s in sources]
    assert together == alone
    for out in together:  # stops at the first EOS, or at the limit
        assert (out[-1] == EOS and EOS not in out[:-1]) or (len(out) == 9 and EOS not in out)


def test_encoder_runs_once_and_mode_is_restored(monkeypatch):
    model = tiny_model(0).train()
    calls = []
    original = model.encode
    monkeypatch.setattr(model, "encode", lambda src: calls.append(src.shape) or original(src))
    greedy_decode(model, np.array([[4, 5, 6, EOS]]), max_new_tokens=5)
    beam_search(model, [4, 5, 6, EOS], beam_size=3, max_new_tokens=5)
    assert len(calls) == 2 and model.training


@pytest.mark.parametrize("call, message", [
    (lambda m: beam_search(m, [4, EOS], beam_size=0), "beam_size"),
    (lambda m: greedy_decode(m, np.array([[4, EOS]]), max_new_tokens=0), "max_new_tokens"),
    (lambda m: greedy_decode(m, np.array([4, EOS])), "shape"),
    (lambda m: greedy_decode(m, np.array([[4.0, 2.0]])), "integer"),
    (lambda m: greedy_decode(m, np.array([[4, 99]])), "token ids in"),
    (lambda m: greedy_decode(m, np.ones((1, 40), dtype=np.int64)), "max_len"),
])
def test_bad_decoding_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call(tiny_model(0))
