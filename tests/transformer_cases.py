"""Shared helpers for the Transformer/training tests: fresh seeds, torch twins, comparisons.

torch appears only in tests: an independent implementation, never the oracle.
"""

from __future__ import annotations

import math

import numpy as np
from seeding import SEED_ENV, derived_seed, session_seed

from flashref.workflow.data import BOS
from flashref.workflow.decoding import log_softmax


def fresh_seed(label: str = "") -> int:
    """This run's seed for ``label`` (tests/conftest.py: fresh per run, FLASHREF_SEED=<n>
    replays), printed so that pytest shows it on failure."""
    seed = derived_seed(label)
    print(f"{label} seed: {seed} (replay: {SEED_ENV}={session_seed()})")
    return seed


def rel_err(ours: np.ndarray, theirs: np.ndarray, floor: float = 1e-3) -> float:
    """max |ours - theirs| / max(max |theirs|, floor).

    The floor matters for gradients that are zero in exact arithmetic (e.g. the query-side
    weights of a cross-attention over a single memory position): both sides then hold
    rounding noise of ~1e-16, which a pure relative error would call a 100% mismatch. Our
    inputs and cotangents are O(1) and real gradients O(0.1-10), so below a scale of 1e-3
    the check becomes absolute (1e-10 relative means 1e-13 absolute there).
    """
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    if ours.shape != theirs.shape:
        raise AssertionError(f"shapes differ: {ours.shape} vs {theirs.shape}")
    if not theirs.size:
        return 0.0
    return float(np.abs(ours - theirs).max() / max(float(np.abs(theirs).max()), floor))


def grad_mismatches(ours: dict, theirs: dict, tol: float) -> list[str]:
    """Names whose gradients disagree beyond tol (relative), or exist on one side only.

    ours: {name: ndarray | None}, theirs: {name: ndarray | None}."""
    bad = []
    for name in sorted(set(ours) | set(theirs)):
        a, b = ours.get(name), theirs.get(name)
        if a is None or b is None:
            bad.append(f"{name}: gradient missing on {'ours' if a is None else 'torch'} side")
            continue
        err = rel_err(a, b)
        if not err <= tol:
            bad.append(f"{name}: relative error {err:.3e}")
    return bad


def sequence_log_prob(model, src, tokens) -> float:
    """log p(tokens | src) under a flashref Seq2SeqModel, by one teacher-forced forward pass
    (no cache): src (S,) ids, tokens the continuation after BOS."""
    logits = model(np.asarray(src)[None], np.array([[BOS] + list(tokens[:-1])]))  # (1, T, V)
    logp = log_softmax(logits.data[0])  # (T, V)
    return float(sum(logp[t, tok] for t, tok in enumerate(tokens)))


def adam_drift_bound(lr: float, betas: tuple[float, float], eps: float, steps: list[dict]) -> np.ndarray:
    """How far two Adam runs may drift apart when their gradients differ by rounding.

    steps[t] (t = 1..T) holds one parameter's `grad_gap` = |g_ours - g_theirs| and `v`,
    the theirs-side second moment after step t (torch's `exp_avg_sq`), elementwise.

    Adam's step t moves p by lr * u_t, u_t = mh / (s + eps), where mh = sum_i a_i g_i and
    s = sqrt(sum_i b_i g_i^2) (i = 1..t) with weights that each sum to one:
        a_i = (1 - b1) b1^(t-i) / (1 - b1^t),   b_i = (1 - b2) b2^(t-i) / (1 - b2^t).
    If the gradients differ by at most D = max_i grad_gap_i:
        |mh - mh'| <= D                  (an average of the differences)
        |s - s'|   <= D                  (s is a weighted 2-norm: Minkowski)
        |mh| <= C_t s,  C_t = sqrt(sum_i a_i^2 / b_i)      (Cauchy-Schwarz)
    and  u - u' = (mh - mh') / (s' + eps) + mh (s' - s) / ((s + eps)(s' + eps)),  so
        |u_t - u_t'| <= (1 + C_t) D / (max(s - D, 0) + eps).
    The bound is large exactly where it must be: a gradient that is zero in exact
    arithmetic (the key bias of an attention: softmax ignores a per-row constant) holds
    rounding noise ~1e-17 on both sides, and Adam divides that noise by eps, so the two
    runs move that parameter by different amounts of order lr * 1e-17 / eps. Everywhere
    else s ~ |g| and the bound is lr * 2 D / |g|, i.e. relative rounding.
    Returns sum_t lr |u_t - u_t'| (elementwise), to which a caller adds the arithmetic's own
    rounding.
    """
    b1, b2 = betas
    total, worst_gap = 0.0, 0.0
    for t, step in enumerate(steps, start=1):
        i = np.arange(1, t + 1)
        a = (1 - b1) * b1 ** (t - i) / (1 - b1 ** t)
        b = (1 - b2) * b2 ** (t - i) / (1 - b2 ** t)
        c = math.sqrt(float(np.sum(a * a / b)))
        worst_gap = np.maximum(worst_gap, step["grad_gap"])
        s = np.sqrt(step["v"] / (1 - b2 ** t))
        total = total + lr * (1 + c) * worst_gap / (np.maximum(s - worst_gap, 0.0) + eps)
    return np.asarray(total)


def torch_seq2seq_twin(model):
    """torch's version of a flashref Seq2SeqModel (float64, train mode, same weights).

    Same parameter names, so ``twin.load_state_dict`` takes our state dict. Built from
    torch.nn.Transformer/Embedding/Linear; the sinusoidal table is copied as a buffer.
    """
    import math

    import torch

    config = model.config

    class TorchSeq2Seq(torch.nn.Module):
        def __init__(self):
            super().__init__()
            e, v = config.d_model, config.vocab_size
            kw = dict(dtype=torch.float64)
            self.src_embed = torch.nn.Embedding(v, e, **kw)
            self.tgt_embed = torch.nn.Embedding(v, e, **kw)
            self.transformer = torch.nn.Transformer(
                d_model=e, nhead=config.nhead, num_encoder_layers=config.num_encoder_layers,
                num_decoder_layers=config.num_decoder_layers, dim_feedforward=config.dim_feedforward,
                dropout=config.dropout, activation=config.activation, layer_norm_eps=config.layer_norm_eps,
                batch_first=True, norm_first=config.norm_first, bias=config.bias, **kw)
            if config.tie_embeddings:
                self.generator_bias = torch.nn.Parameter(torch.zeros(v, **kw))
            else:
                self.generator = torch.nn.Linear(e, v, **kw)
            self.register_buffer("table", torch.tensor(model.positional.table), persistent=False)

        def embed(self, embedding, ids):
            return embedding(ids) * math.sqrt(config.d_model) + self.table[: ids.shape[1]]

        def forward(self, src, tgt_in):
            src, tgt_in = torch.as_tensor(src), torch.as_tensor(tgt_in)
            length = tgt_in.shape[1]
            hidden = self.transformer(
                self.embed(self.src_embed, src), self.embed(self.tgt_embed, tgt_in),
                tgt_mask=torch.triu(torch.ones(length, length, dtype=torch.bool), 1),
                src_key_padding_mask=src == config.pad_id, tgt_key_padding_mask=tgt_in == config.pad_id,
                memory_key_padding_mask=src == config.pad_id)
            if config.tie_embeddings:
                return torch.nn.functional.linear(hidden, self.tgt_embed.weight, self.generator_bias)
            return self.generator(hidden)

        def loss(self, src, tgt_in, tgt_out):
            logits = self(src, tgt_in)
            return torch.nn.functional.cross_entropy(
                logits.reshape(-1, config.vocab_size), torch.as_tensor(tgt_out).reshape(-1),
                ignore_index=config.pad_id)

    twin = TorchSeq2Seq().train()
    twin.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
    return twin
