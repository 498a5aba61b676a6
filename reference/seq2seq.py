"""Seq2SeqModel: token embeddings, positional encoding, a Transformer, a vocabulary projection.

    memory = Encoder(PE(E_src[src] * sqrt(d_model)))                      (N, S, E)
    hidden = Decoder(PE(E_tgt[tgt_in] * sqrt(d_model)), memory, causal)   (N, T, E)
    logits = hidden W_out^T + b_out                                       (N, T, V)

Batch-first throughout; PAD positions are excluded through key padding masks (a PAD
source token is never attended to; a PAD target position is never attended to by later
positions, and its own logits are ignored by the loss). With tie_embeddings the output
projection reuses tgt_embed.weight (V, E) as W_out, so `generator.weight` does not exist.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Callable

import numpy as np

import flashref.autograd.functional as F
from flashref.autograd import Tensor

from .layers import Embedding, Linear, PositionalEncoding, default_rng, parameter
from .module import Module
from .transformer import Transformer


@dataclass(frozen=True)
class Seq2SeqConfig:
    """Everything needed to rebuild the model (stored in checkpoints)."""

    vocab_size: int = 13
    d_model: int = 64
    nhead: int = 4
    num_encoder_layers: int = 2
    num_decoder_layers: int = 2
    dim_feedforward: int = 128
    dropout: float = 0.0
    activation: str = "relu"
    layer_norm_eps: float = 1e-5
    norm_first: bool = False
    bias: bool = True
    max_len: int = 64
    tie_embeddings: bool = False
    pad_id: int = 0
    dtype: str = "float64"

    def __post_init__(self) -> None:
        positive = ("vocab_size", "d_model", "nhead", "num_encoder_layers", "num_decoder_layers",
                    "dim_feedforward", "max_len")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        if self.d_model % self.nhead:
            raise ValueError(f"nhead: d_model {self.d_model} must be divisible by nhead {self.nhead}")
        if self.activation not in ("relu", "gelu"):
            raise ValueError(f"activation: expected 'relu' or 'gelu', got {self.activation!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {self.dropout}")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"pad_id: expected an id in [0, {self.vocab_size}), got {self.pad_id}")
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"dtype: expected 'float64' or 'float32', got {self.dtype!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Seq2SeqConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"config: unknown fields {sorted(unknown)}")
        return cls(**values)


class Seq2SeqModel(Module):
    """An encoder-decoder Transformer over token ids (shared source/target vocabulary)."""

    def __init__(self, config: Seq2SeqConfig | None = None, *, rng: np.random.Generator | None = None,
                 attention_fn: Callable | None = None):
        super().__init__()
        config = config or Seq2SeqConfig()
        rng = default_rng(rng)
        dtype = np.dtype(config.dtype)
        self.config = config
        # N(0, 1/d_model): after the sqrt(d_model) scale, embeddings are ~unit like the PE.
        init_std = 1.0 / math.sqrt(config.d_model)
        self.src_embed = Embedding(config.vocab_size, config.d_model, init_std=init_std, dtype=dtype, rng=rng)
        self.tgt_embed = Embedding(config.vocab_size, config.d_model, init_std=init_std, dtype=dtype, rng=rng)
        self.positional = PositionalEncoding(config.d_model, config.dropout, config.max_len, dtype=dtype, rng=rng)
        self.transformer = Transformer(
            d_model=config.d_model, nhead=config.nhead, num_encoder_layers=config.num_encoder_layers,
            num_decoder_layers=config.num_decoder_layers, dim_feedforward=config.dim_feedforward,
            dropout=config.dropout, activation=config.activation, layer_norm_eps=config.layer_norm_eps,
            batch_first=True, norm_first=config.norm_first, bias=config.bias, dtype=dtype, rng=rng,
            attention_fn=attention_fn,
        )
        if config.tie_embeddings:
            self.generator_bias = parameter(np.zeros(config.vocab_size), dtype)
        else:
            self.generator = Linear(config.d_model, config.vocab_size, dtype=dtype, rng=rng)
        self.causal_masks: dict[int, np.ndarray] = {}

    def check_ids(self, name: str, ids) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"{name}: expected integer token ids of shape (batch, length), got {ids.dtype} {ids.shape}")
        if ids.shape[1] > self.config.max_len:
            raise ValueError(f"{name}: length {ids.shape[1]} exceeds max_len {self.config.max_len}")
        return ids

    def embed(self, embedding: Embedding, ids: np.ndarray) -> Tensor:
        x = embedding(ids) * math.sqrt(self.config.d_model)  # (N, L, E)
        return self.positional(x)  # (N, L, E)

    def encode(self, src) -> Tensor:
        """src (N, S) ids -> memory (N, S, E). PAD keys are masked."""
        src = self.check_ids("src", src)
        return self.transformer.encoder(self.embed(self.src_embed, src),
                                        src_key_padding_mask=src == self.config.pad_id)  # (N, S, E)

    def decode(self, tgt_in, memory: Tensor, src_padding_mask: np.ndarray) -> Tensor:
        """tgt_in (N, T) ids, memory (N, S, E), src_padding_mask (N, S) bool -> logits (N, T, V).

        Position t sees target positions <= t (causal) that are not PAD, and every non-PAD
        source position.
        """
        tgt_in = self.check_ids("tgt_in", tgt_in)
        length = tgt_in.shape[1]
        if length not in self.causal_masks:
            self.causal_masks[length] = np.triu(np.ones((length, length), dtype=bool), k=1)  # (T, T)
        hidden = self.transformer.decoder(
            self.embed(self.tgt_embed, tgt_in), memory,
            tgt_mask=self.causal_masks[length], tgt_key_padding_mask=tgt_in == self.config.pad_id,
            memory_key_padding_mask=src_padding_mask, tgt_is_causal=True,
        )  # (N, T, E)
        return self.project(hidden)  # (N, T, V)

    def project(self, hidden: Tensor) -> Tensor:
        """hidden (..., E) -> logits (..., V)."""
        if self.config.tie_embeddings:
            return F.linear(hidden, self.tgt_embed.weight, self.generator_bias)
        return self.generator(hidden)

    def forward(self, src, tgt_in) -> Tensor:
        """Teacher forcing: src (N, S), tgt_in (N, T) ids -> logits (N, T, V)."""
        src = self.check_ids("src", src)
        return self.decode(tgt_in, self.encode(src), src == self.config.pad_id)

    def loss(self, src, tgt_in, tgt_out, label_smoothing: float = 0.0) -> tuple[Tensor, Tensor]:
        """Mean cross-entropy over non-PAD labels; returns (loss, logits (N, T, V))."""
        logits = self(src, tgt_in)  # (N, T, V)
        n, t, v = logits.shape
        loss = F.cross_entropy(logits.reshape(n * t, v), np.asarray(tgt_out).reshape(n * t),
                               ignore_index=self.config.pad_id, label_smoothing=label_smoothing)
        return loss, logits
