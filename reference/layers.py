"""The small layers: Linear, Embedding, LayerNorm, Dropout, sinusoidal positional encoding.

Parameter names, shapes and initialisations follow torch.nn (``weight`` is (out, in)), so
torch state dicts load directly. Each forward is one call into `flashref.autograd.functional`,
where the math and its backward live.
"""

from __future__ import annotations

import math

import numpy as np

import flashref.autograd.functional as F
from flashref.autograd import Tensor

from .module import Module


def default_rng(rng: np.random.Generator | None) -> np.random.Generator:
    if rng is None:
        return np.random.default_rng()
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
    return rng


def parameter(array: np.ndarray, dtype) -> Tensor:
    return Tensor(np.asarray(array, dtype=dtype), requires_grad=True)


def uniform(rng: np.random.Generator, bound: float, shape, dtype) -> Tensor:
    return parameter(rng.uniform(-bound, bound, size=shape), dtype)


def xavier_uniform_(param: Tensor, rng: np.random.Generator) -> None:
    """torch.nn.init.xavier_uniform_: U(-a, a), a = sqrt(6 / (fan_in + fan_out)), for (out, in)."""
    fan_out, fan_in = param.data.shape[0], int(np.prod(param.data.shape[1:]))
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    param.data[...] = rng.uniform(-bound, bound, size=param.data.shape)


class Linear(Module):
    """y = x W^T + b.  x: (..., in_features) -> (..., out_features); W: (out, in), b: (out,).

    Init as torch: W, b ~ U(-1/sqrt(in), 1/sqrt(in)).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, dtype=np.float64,
                 rng: np.random.Generator | None = None):
        super().__init__()
        rng = default_rng(rng)
        bound = 1.0 / math.sqrt(in_features)
        self.in_features, self.out_features = in_features, out_features
        self.weight = uniform(rng, bound, (out_features, in_features), dtype)
        self.bias = uniform(rng, bound, (out_features,), dtype) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


class Embedding(Module):
    """ids (...) int -> weight[ids] (..., embedding_dim); weight: (num_embeddings, embedding_dim).

    Init N(0, init_std^2); torch's default is init_std = 1.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, *, init_std: float = 1.0,
                 dtype=np.float64, rng: np.random.Generator | None = None):
        super().__init__()
        rng = default_rng(rng)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = parameter(rng.normal(0.0, init_std, size=(num_embeddings, embedding_dim)), dtype)

    def forward(self, ids) -> Tensor:
        ids = np.asarray(ids)
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"ids: expected integer token ids, got dtype {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_embeddings):
            raise ValueError(
                f"ids: expected token ids in [0, {self.num_embeddings}), got range [{ids.min()}, {ids.max()}]"
            )
        return F.embedding(ids, self.weight)


class LayerNorm(Module):
    """torch.nn.LayerNorm over the last dimension: (x - mean) / sqrt(biased var + eps) * w + b.

    x: (..., normalized_shape). weight ones, bias zeros (bias=False: no bias, as torch).
    """

    def __init__(self, normalized_shape: int, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, *, dtype=np.float64):
        super().__init__()
        self.normalized_shape, self.eps = (int(normalized_shape),), float(eps)
        self.weight = parameter(np.ones(normalized_shape), dtype) if elementwise_affine else None
        self.bias = parameter(np.zeros(normalized_shape), dtype) if elementwise_affine and bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class Dropout(Module):
    """Zero each element with probability p in training mode and scale the rest by 1/(1-p)."""

    def __init__(self, p: float = 0.5, *, rng: np.random.Generator | None = None):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"p: expected a dropout probability in [0, 1), got {p}")
        self.p = float(p)
        self.rng = default_rng(rng)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        return F.dropout(x, self.p, training=True, rng=self.rng)


def sinusoidal_table(max_len: int, d_model: int) -> np.ndarray:
    """PE (max_len, d_model): PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(same)."""
    position = np.arange(max_len)[:, None]  # (max_len, 1)
    inv_freq = np.exp(-math.log(10000.0) * np.arange(0, d_model, 2) / d_model)  # (ceil(d/2),)
    table = np.zeros((max_len, d_model))
    table[:, 0::2] = np.sin(position * inv_freq)
    table[:, 1::2] = np.cos(position * inv_freq[: d_model // 2])
    return table


class PositionalEncoding(Module):
    """x (B, L, d_model) -> dropout(x + PE[:L]); PE is a fixed table, not a parameter."""

    def __init__(self, d_model: int, dropout: float = 0.1, max_len: int = 5000, *, dtype=np.float64,
                 rng: np.random.Generator | None = None):
        super().__init__()
        self.max_len = max_len
        self.table = sinusoidal_table(max_len, d_model).astype(dtype)  # (max_len, d_model) buffer
        self.dropout = Dropout(dropout, rng=rng)

    def forward(self, x: Tensor) -> Tensor:
        length = x.shape[-2]
        if length > self.max_len:
            raise ValueError(f"x: sequence length {length} exceeds the positional table's max_len {self.max_len}")
        return self.dropout(x + self.table[:length])  # (B, L, d_model)
