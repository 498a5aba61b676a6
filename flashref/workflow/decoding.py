"""Greedy and beam-search decoding for a Seq2SeqModel.

Both run the encoder once, then the decoder step by step on the growing prefix under the
causal mask (no KV cache: the oracle favours the obvious computation), stopping at the end
token or after max_new_tokens. Scores are sums of natural-log probabilities.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from flashref.autograd import Tensor, no_grad

from .data import BOS, EOS
from flashref.reference.seq2seq import Seq2SeqModel


@contextmanager
def inference(model: Seq2SeqModel):
    """eval mode and no graph recording; the previous mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            yield
    finally:
        model.train(was_training)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """(..., V) -> log probabilities, computed stably."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _max_new_tokens(model: Seq2SeqModel, src_len: int, max_new_tokens: int | None) -> int:
    limit = model.config.max_len - 1  # the prefix (BOS + generated) must fit the positional table
    if max_new_tokens is None:
        return min(limit, src_len + 8)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: expected a positive integer, got {max_new_tokens!r}")
    return min(limit, max_new_tokens)


def greedy_decode(model: Seq2SeqModel, src, *, max_new_tokens: int | None = None, bos_id: int = BOS,
                  eos_id: int = EOS) -> list[list[int]]:
    """src (N, S) ids -> for each row, the argmax continuation: ids after BOS, ending with
    EOS unless max_new_tokens ran out first."""
    src = model.check_ids("src", src)
    steps = _max_new_tokens(model, src.shape[1], max_new_tokens)
    pad = model.config.pad_id
    with inference(model):
        memory = model.encode(src)  # (N, S, E), once
        src_padding = src == pad  # (N, S)
        ys = np.full((src.shape[0], 1), bos_id, dtype=np.int64)  # (N, 1)
        finished = np.zeros(src.shape[0], dtype=bool)  # (N,)
        for _ in range(steps):
            logits = model.decode(ys, memory, src_padding).data[:, -1]  # (N, V) at the last position
            next_ids = np.where(finished, pad, logits.argmax(axis=-1))  # finished rows get PAD
            ys = np.concatenate([ys, next_ids[:, None]], axis=1)  # (N, t + 1)
            finished |= next_ids == eos_id
            if finished.all():
                break
    out = []
    for row in ys[:, 1:]:
        ids = [int(t) for t in row]
        out.append(ids[: ids.index(eos_id) + 1] if eos_id in ids else ids)
    return out


@dataclass(frozen=True)
class Hypothesis:
    tokens: tuple[int, ...]  # ids after BOS, ending with EOS when finished
    log_prob: float  # sum of log p(token | prefix, source)
    finished: bool

    def score(self, length_penalty: float) -> float:
        """log_prob / len^alpha (alpha = length_penalty; 0 ranks by raw log-probability)."""
        return self.log_prob / (max(len(self.tokens), 1) ** length_penalty)


def beam_search(model: Seq2SeqModel, src, *, beam_size: int = 4, max_new_tokens: int | None = None,
                length_penalty: float = 0.0, bos_id: int = BOS, eos_id: int = EOS) -> list[Hypothesis]:
    """One source sequence src (S,) ids -> up to beam_size hypotheses, best first.

    Each step extends every live beam by every token, keeps the beam_size best live
    extensions, and sets finished ones (EOS) aside. With length_penalty = 0, log-probs only
    fall as a prefix grows, so the search stops once the best finished hypothesis beats
    every live beam; with a beam as wide as the number of prefixes the result is exact.
    """
    if not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(f"beam_size: expected a positive integer, got {beam_size!r}")
    src = model.check_ids("src", np.asarray(src)[None, :])  # (1, S)
    steps = _max_new_tokens(model, src.shape[1], max_new_tokens)
    vocab = model.config.vocab_size
    with inference(model):
        memory = model.encode(src).data  # (1, S, E), once
        src_padding = src == model.config.pad_id  # (1, S)
        live = [Hypothesis((), 0.0, False)]
        finished: list[Hypothesis] = []
        for _ in range(steps):
            k = len(live)
            ys = np.array([(bos_id,) + h.tokens for h in live], dtype=np.int64)  # (k, t)
            mem = Tensor(np.repeat(memory, k, axis=0))  # (k, S, E)
            logp = log_softmax(model.decode(ys, mem, np.repeat(src_padding, k, axis=0)).data[:, -1])  # (k, V)
            totals = np.array([h.log_prob for h in live])[:, None] + logp  # (k, V)
            order = np.argsort(-totals, axis=None, kind="stable")
            new_live = []
            for flat in order:
                beam, token = divmod(int(flat), vocab)
                hyp = Hypothesis(live[beam].tokens + (token,), float(totals[beam, token]), token == eos_id)
                if hyp.finished:
                    finished.append(hyp)
                else:
                    new_live.append(hyp)
                if len(new_live) == beam_size:
                    break
            live = new_live
            finished.sort(key=lambda h: -h.score(length_penalty))
            finished = finished[:beam_size]
            if not live:
                break
            if length_penalty == 0.0:
                if finished and finished[0].log_prob >= max(h.log_prob for h in live):
                    break  # no live beam can overtake the best finished one
            elif len(finished) >= beam_size:
                break
    ranked = sorted(finished + live, key=lambda h: -h.score(length_penalty))
    return ranked[:beam_size]
