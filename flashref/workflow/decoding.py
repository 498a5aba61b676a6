"""Greedy and beam-search decoding for a Seq2SeqModel, with or without a KV cache.

Both run the encoder once, then the decoder one token at a time, stopping at the end token
or after max_new_tokens. Scores are sums of natural-log probabilities.

Two ways to run the decoder, chosen by ``use_cache``:

- ``use_cache=False`` (the reference): rerun the whole decoder on the growing prefix under
  the causal mask and keep the last position's logits. O(T^2) decoder work for T tokens,
  nothing to get wrong.
- ``use_cache=True`` (the default): a `DecoderCache` keeps, for every decoder layer l,

      self-attention  K_l, V_l : (N, H, t, D)   one row per decoded position, appended per step
      cross-attention K_l, V_l : (N, H, S, D)   projected from the encoder memory once

  so step t feeds only the newest token (N, 1) through the layers: its query attends to the
  cached keys 0..t (all of them are <= t, so the causal mask is void; PAD target positions
  stay masked through a per-position additive bias). Causality makes every earlier
  position's activations independent of later tokens, which is why their K/V can be
  reused: the step computes exactly what the last row of the full pass computes, the same
  operations in the same order, up to the rounding of differently shaped matrix products
  (tests/workflow/test_kv_cache.py holds both paths to identical tokens and logits within
  1e-12). Beam search reorders the caches by the surviving beams' indices every step.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import math

import numpy as np

from flashref.autograd import Tensor, no_grad

import flashref.autograd.functional as F
from flashref.reference.seq2seq import Seq2SeqModel
from flashref.reference.transformer import MultiheadAttention, attention_bias

from .data import BOS, EOS


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


class DecoderCache:
    """Every decoder layer's K/V for N sequences decoded in lockstep (see the module docstring).

    Build it under `inference(model)` from the encoder's output, then call `step` with the
    newest token of every row; `reorder` keeps the rows a beam search selected.

        self_k[l], self_v[l]    (N, H, capacity, D)  positions [0, length) filled, model dtype
        cross_k[l], cross_v[l]  (N, H, S, D)         from memory, computed once
        tgt_padding             (N, capacity) bool    True where the fed token was PAD
        memory_bias             (N, 1, 1, S)          -inf at PAD source positions, else 0
    """

    def __init__(self, model: Seq2SeqModel, memory: Tensor, src_padding: np.ndarray, capacity: int):
        if not isinstance(capacity, int) or not 1 <= capacity <= model.config.max_len:
            raise ValueError(f"capacity: expected an integer in [1, {model.config.max_len}] (max_len), "
                             f"got {capacity!r}")
        if model.training:  # the step below leaves dropout out: exact only in eval mode
            raise ValueError("model: a DecoderCache decodes in eval mode; build it under inference(model)")
        n, s, e = memory.shape
        if src_padding.shape != (n, s):
            raise ValueError(f"src_padding: expected shape ({n}, {s}) to match memory, got {src_padding.shape}")
        self.model, self.capacity, self.length = model, capacity, 0
        self.dtype = np.dtype(model.config.dtype)
        self.layers = list(model.transformer.decoder.layers)
        heads = model.config.nhead
        head_dim = e // heads
        self.self_k = [np.zeros((n, heads, capacity, head_dim), self.dtype) for _ in self.layers]
        self.self_v = [np.zeros((n, heads, capacity, head_dim), self.dtype) for _ in self.layers]
        self.cross_k, self.cross_v = [], []
        for layer in self.layers:
            mha: MultiheadAttention = layer.multihead_attn
            self.cross_k.append(_split_heads(_in_projection(mha, memory, 1).data, heads))  # (N, H, S, D)
            self.cross_v.append(_split_heads(_in_projection(mha, memory, 2).data, heads))
        self.tgt_padding = np.zeros((n, capacity), dtype=bool)
        self.memory_bias = attention_bias(None, src_padding, batch=n, nhead=heads, q_len=1, kv_len=s,
                                          dtype=self.dtype)  # (N, 1, 1, S)

    @property
    def batch(self) -> int:
        return self.tgt_padding.shape[0]

    def step(self, tokens) -> np.ndarray:
        """tokens (N,) ids at position `length` -> logits (N, V) for position `length` + 1.

        Appends every layer's K/V for this position; equals the last row of
        `model.decode(prefix)` where prefix is every token fed so far.
        """
        tokens = np.asarray(tokens)
        if tokens.shape != (self.batch,) or not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"tokens: expected integer ids of shape ({self.batch},), "
                             f"got {tokens.dtype} {tokens.shape}")
        t = self.length
        if t >= self.capacity:
            raise ValueError(f"tokens: the cache holds {self.capacity} positions and is full")
        model = self.model
        self.tgt_padding[:, t] = tokens == model.config.pad_id
        x = model.tgt_embed(tokens[:, None]) * math.sqrt(model.config.d_model)  # (N, 1, E)
        x = x + model.positional.table[t : t + 1]  # the PE row of position t (dropout is off)
        self_bias = attention_bias(None, self.tgt_padding[:, : t + 1], batch=self.batch,
                                   nhead=model.config.nhead, q_len=1, kv_len=t + 1, dtype=self.dtype)  # (N, 1, 1, t+1)
        for index, layer in enumerate(self.layers):
            x = self._layer_step(index, layer, x, self_bias)
        self.length = t + 1
        norm = model.transformer.decoder.norm
        hidden = x if norm is None else norm(x)  # (N, 1, E)
        return model.project(hidden).data[:, 0]  # (N, V)

    def reorder(self, rows) -> None:
        """Keep rows `rows` (M,) of every cache, in that order (M may differ from N; repeats allowed)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 1 or (rows.size and (rows.min() < 0 or rows.max() >= self.batch)):
            raise ValueError(f"rows: expected a 1-d array of row indices in [0, {self.batch}), got {rows}")
        for caches in (self.self_k, self.self_v, self.cross_k, self.cross_v):
            caches[:] = [c[rows] for c in caches]
        self.tgt_padding = self.tgt_padding[rows]
        self.memory_bias = self.memory_bias[rows]

    def _layer_step(self, index: int, layer, x: Tensor, self_bias: np.ndarray) -> Tensor:
        """One TransformerDecoderLayer on the newest position: x (N, 1, E) -> (N, 1, E).

        The layer's own formula in eval mode (its dropouts are the identity there)."""

        def self_attention(h: Tensor) -> Tensor:
            mha: MultiheadAttention = layer.self_attn
            q, k, v = (_in_projection(mha, h, part) for part in range(3))  # (N, 1, E) each
            t = self.length
            self.self_k[index][:, :, t] = _split_heads(k.data, mha.num_heads)[:, :, 0]
            self.self_v[index][:, :, t] = _split_heads(v.data, mha.num_heads)[:, :, 0]
            return self._attend(mha, q, self.self_k[index][:, :, : t + 1], self.self_v[index][:, :, : t + 1],
                                self_bias)

        def cross_attention(h: Tensor) -> Tensor:
            mha: MultiheadAttention = layer.multihead_attn
            q = _in_projection(mha, h, 0)  # (N, 1, E)
            return self._attend(mha, q, self.cross_k[index], self.cross_v[index], self.memory_bias)

        def feed_forward(h: Tensor) -> Tensor:
            return layer.linear2(layer.activation(layer.linear1(h)))

        if layer.norm_first:
            x = x + self_attention(layer.norm1(x))
            x = x + cross_attention(layer.norm2(x))
            return x + feed_forward(layer.norm3(x))
        x = layer.norm1(x + self_attention(x))
        x = layer.norm2(x + cross_attention(x))
        return layer.norm3(x + feed_forward(x))

    def _attend(self, mha: MultiheadAttention, q: Tensor, k: np.ndarray, v: np.ndarray,
                bias: np.ndarray) -> Tensor:
        """q (N, 1, E), cached k, v (N, H, L, D) -> out_proj(attention) (N, 1, E), as
        MultiheadAttention.forward computes it (float64 attention, then back to the model dtype)."""
        n, e = q.shape[0], mha.embed_dim
        q = q.reshape(n, 1, mha.num_heads, mha.head_dim).transpose(0, 2, 1, 3)  # (N, H, 1, D)
        k, v = Tensor(k), Tensor(v)
        if q.dtype != np.float64:
            q, k, v = q.astype(np.float64), k.astype(np.float64), v.astype(np.float64)
        out = mha.attention_fn(q, k, v, causal=False, attn_bias=bias, dropout_p=0.0, rng=mha.rng)  # (N, H, 1, D)
        if out.dtype != self.dtype:
            out = out.astype(self.dtype)
        return mha.out_proj(out.transpose(0, 2, 1, 3).reshape(n, 1, e))  # (N, 1, E)


def _in_projection(mha: MultiheadAttention, x: Tensor, part: int) -> Tensor:
    """x (N, L, E) -> part 0/1/2 (Q/K/V) of mha's input projection, x W_part^T + b_part (N, L, E):
    one linear on its slice of in_proj_weight, as MultiheadAttention projects."""
    e, w, b = mha.embed_dim, mha.in_proj_weight, mha.in_proj_bias
    rows = slice(part * e, (part + 1) * e)
    return F.linear(x, w[rows], None if b is None else b[rows])


def _split_heads(x: np.ndarray, heads: int) -> np.ndarray:
    """(N, L, E) -> (N, H, L, E / H), MultiheadAttention's head layout."""
    n, length, e = x.shape
    return x.reshape(n, length, heads, e // heads).transpose(0, 2, 1, 3)


def greedy_decode(model: Seq2SeqModel, src, *, max_new_tokens: int | None = None, bos_id: int = BOS,
                  eos_id: int = EOS, use_cache: bool = True) -> list[list[int]]:
    """src (N, S) ids -> for each row, the argmax continuation: ids after BOS, ending with
    EOS unless max_new_tokens ran out first. use_cache=False reruns the decoder on the whole
    prefix every step (the reference the cache is checked against)."""
    src = model.check_ids("src", src)
    steps = _max_new_tokens(model, src.shape[1], max_new_tokens)
    pad = model.config.pad_id
    with inference(model):
        memory = model.encode(src)  # (N, S, E), once
        src_padding = src == pad  # (N, S)
        ys = np.full((src.shape[0], 1), bos_id, dtype=np.int64)  # (N, 1)
        finished = np.zeros(src.shape[0], dtype=bool)  # (N,)
        cache = DecoderCache(model, memory, src_padding, capacity=steps) if use_cache else None
        for _ in range(steps):
            if cache is not None:
                logits = cache.step(ys[:, -1])  # (N, V): only the newest token goes through the decoder
            else:
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
                length_penalty: float = 0.0, bos_id: int = BOS, eos_id: int = EOS,
                use_cache: bool = True) -> list[Hypothesis]:
    """One source sequence src (S,) ids -> up to beam_size hypotheses, best first.

    Each step extends every live beam by every token, keeps the beam_size best live
    extensions, and sets finished ones (EOS) aside. With length_penalty = 0, log-probs only
    fall as a prefix grows, so the search stops once the best finished hypothesis beats
    every live beam; with a beam as wide as the number of prefixes the result is exact.
    With use_cache the live beams' caches are reordered by their parents' indices each step;
    use_cache=False reruns the decoder on every whole prefix (the reference).
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
        cache = DecoderCache(model, Tensor(memory), src_padding, capacity=steps) if use_cache else None
        for _ in range(steps):
            k = len(live)
            ys = np.array([(bos_id,) + h.tokens for h in live], dtype=np.int64)  # (k, t)
            if cache is not None:
                logits = cache.step(ys[:, -1])  # (k, V); cache row i holds live[i]'s prefix
            else:
                mem = Tensor(np.repeat(memory, k, axis=0))  # (k, S, E)
                logits = model.decode(ys, mem, np.repeat(src_padding, k, axis=0)).data[:, -1]  # (k, V)
            logp = log_softmax(logits)  # (k, V)
            totals = np.array([h.log_prob for h in live])[:, None] + logp  # (k, V)
            order = np.argsort(-totals, axis=None, kind="stable")
            new_live, parents = [], []
            for flat in order:
                beam, token = divmod(int(flat), vocab)
                hyp = Hypothesis(live[beam].tokens + (token,), float(totals[beam, token]), token == eos_id)
                if hyp.finished:
                    finished.append(hyp)
                else:
                    new_live.append(hyp)
                    parents.append(beam)
                if len(new_live) == beam_size:
                    break
            live = new_live
            if cache is not None and live:
                cache.reorder(parents)  # row i now holds the prefix live[i] extends
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
