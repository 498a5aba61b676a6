"""torch.nn.Transformer in NumPy: MultiheadAttention, encoder/decoder layers and stacks.

Same constructor arguments, defaults, parameter names and mask conventions as torch, so
``ours.load_state_dict(theirs.state_dict())`` works and both compute the same function.

Masks, as torch takes them (converted here into one additive float bias):
    attn_mask / src_mask / tgt_mask / memory_mask: (L, S) or (N * nhead, L, S);
        bool (True = NOT allowed to attend) or float (added to the scores; -inf blocks)
    key_padding_mask: (N, S); bool (True = padding, ignored) or float (added)
    is_causal / tgt_is_causal: with no mask given, apply the causal mask; with a mask given
        it is only torch's hint, and the mask is what we apply.
A query row that can see no key outputs zeros (the oracle's rule; torch gives NaN there).

Every attention in the model is one call to ``self.attention_fn``, by default the oracle's
`scaled_dot_product_attention`; `set_attention_fn(model, fn)` swaps it everywhere (e.g. for
the fused kernel), so two models can be compared layer by layer.

Shapes: N batch, L target length, S source length, E = d_model, H = nhead, D = E / H.
"""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np

import flashref.autograd.functional as F
from flashref.autograd import Tensor

from .layers import Dropout, LayerNorm, Linear, default_rng, parameter, xavier_uniform_
from .module import Module, ModuleList, to_numpy


def default_attention_fn():
    from .sdpa import scaled_dot_product_attention  # the oracle, on autograd Tensors

    return scaled_dot_product_attention


def set_attention_fn(model: Module, attention_fn: Callable) -> None:
    """Make every MultiheadAttention inside `model` call `attention_fn(q, k, v, **kwargs)`."""
    for module in model.modules():
        if isinstance(module, MultiheadAttention):
            module.attention_fn = attention_fn


def _activation(activation) -> Callable:
    if activation == "relu":
        return F.relu
    if activation == "gelu":
        return F.gelu
    if callable(activation):
        return activation
    raise ValueError(f"activation: expected 'relu', 'gelu' or a callable, got {activation!r}")


def mask_to_bias(mask, name: str, dtype) -> np.ndarray:
    """A torch-style mask -> additive float bias: bool True -> -inf, False -> 0; float as is."""
    mask = to_numpy(mask, name)
    if mask.dtype == np.bool_:
        return np.where(mask, -np.inf, 0.0).astype(dtype)
    if not np.issubdtype(mask.dtype, np.floating):
        raise TypeError(f"{name}: expected a bool or float mask, got dtype {mask.dtype}")
    return mask.astype(dtype)


def attention_bias(attn_mask, key_padding_mask, *, batch: int, nhead: int, q_len: int, kv_len: int,
                   dtype) -> np.ndarray | None:
    """attn_mask (L, S) | (N*H, L, S) and key_padding_mask (N, S) -> one bias broadcastable
    to (N, H, L, S), or None when both are None."""
    bias = None
    if attn_mask is not None:
        bias = mask_to_bias(attn_mask, "attn_mask", dtype)
        if bias.shape == (q_len, kv_len):
            bias = bias[None, None]  # (1, 1, L, S)
        elif bias.shape == (batch * nhead, q_len, kv_len):
            bias = bias.reshape(batch, nhead, q_len, kv_len)  # torch's (N*H) is batch-major
        else:
            raise ValueError(
                f"attn_mask: expected shape ({q_len}, {kv_len}) or ({batch * nhead}, {q_len}, {kv_len}), "
                f"got {bias.shape}"
            )
    if key_padding_mask is not None:
        padding = mask_to_bias(key_padding_mask, "key_padding_mask", dtype)
        if padding.shape != (batch, kv_len):
            raise ValueError(f"key_padding_mask: expected shape ({batch}, {kv_len}), got {padding.shape}")
        padding = padding[:, None, None, :]  # (N, 1, 1, S)
        bias = padding if bias is None else bias + padding
    return bias


def generate_square_subsequent_mask(sz: int, dtype=np.float64) -> np.ndarray:
    """(sz, sz) float mask: 0 on and below the diagonal, -inf above (torch's causal mask)."""
    return np.triu(np.full((sz, sz), -np.inf, dtype=dtype), k=1)


class MultiheadAttention(Module):
    """torch.nn.MultiheadAttention (kdim = vdim = embed_dim), returning only the output.

    Parameters (torch names): in_proj_weight (3E, E) = [W_q; W_k; W_v], in_proj_bias (3E,),
    out_proj.weight (E, E), out_proj.bias (E,).
        Q = query W_q^T + b_q,  K = key W_k^T + b_k,  V = value W_v^T + b_v   (split into H heads)
        out = concat_h attention_fn(Q_h, K_h, V_h) W_o^T + b_o
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 batch_first: bool = False, *, dtype=np.float64, rng: np.random.Generator | None = None,
                 attention_fn: Callable | None = None):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"num_heads: embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        rng = default_rng(rng)
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.dropout, self.batch_first, self.rng = float(dropout), batch_first, rng
        self.attention_fn = attention_fn or default_attention_fn()
        self.in_proj_weight = parameter(np.zeros((3 * embed_dim, embed_dim)), dtype)
        xavier_uniform_(self.in_proj_weight, rng)
        self.in_proj_bias = parameter(np.zeros(3 * embed_dim), dtype) if bias else None
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias, dtype=dtype, rng=rng)
        if bias:
            self.out_proj.bias.data[...] = 0.0

    def _project(self, x: Tensor, part: int) -> Tensor:
        """x (L, N, E) | (N, L, E) if batch_first -> part 0/1/2 (Q/K/V) of the input
        projection, split into heads: (N, H, L, D).

        Each projection is a linear layer on its slice of in_proj_weight, computed in the
        input's own layout (the batch axis stays where it is, as in torch), so the matmuls
        run on contiguous rows; only the small head split transposes.
        """
        E, w, b = self.embed_dim, self.in_proj_weight, self.in_proj_bias
        rows = slice(part * E, (part + 1) * E)
        x = F.linear(x, w[rows], None if b is None else b[rows])  # (L, N, E) | (N, L, E)
        x = x.reshape(x.shape[0], x.shape[1], self.num_heads, self.head_dim)  # (L, N, H, D) | (N, L, H, D)
        return x.transpose(0, 2, 1, 3) if self.batch_first else x.transpose(1, 2, 0, 3)  # (N, H, L, D)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask=None, attn_mask=None,
                is_causal: bool = False) -> Tensor:
        """query (L, N, E) | (N, L, E) if batch_first; key, value (S, N, E) | (N, S, E)."""
        batch_axis, length_axis = (0, 1) if self.batch_first else (1, 0)
        n, q_len, e = query.shape[batch_axis], query.shape[length_axis], query.shape[-1]
        kv_len = key.shape[length_axis]
        if e != self.embed_dim:
            raise ValueError(f"query: expected embedding size {self.embed_dim}, got {e}")
        q, k, v = self._project(query, 0), self._project(key, 1), self._project(value, 2)  # (N, H, L|S, D)
        bias = attention_bias(attn_mask, key_padding_mask, batch=n, nhead=self.num_heads,
                              q_len=q_len, kv_len=kv_len, dtype=query.dtype)  # (N|1, H|1, L, S)
        if q.dtype != np.float64:  # the oracle attends in float64 (its bias is float64)
            q, k, v = q.astype(np.float64), k.astype(np.float64), v.astype(np.float64)
        out = self.attention_fn(
            q, k, v,
            causal=bool(is_causal and attn_mask is None),
            attn_bias=bias,
            dropout_p=self.dropout if self.training else 0.0,
            rng=self.rng,
        )  # (N, H, L, D)
        if out.dtype != query.dtype:
            out = out.astype(query.dtype)
        if self.batch_first:
            out = out.transpose(0, 2, 1, 3).reshape(n, q_len, self.embed_dim)  # (N, L, E)
        else:
            out = out.transpose(2, 0, 1, 3).reshape(q_len, n, self.embed_dim)  # (L, N, E)
        return self.out_proj(out)  # (L, N, E) | (N, L, E) if batch_first


class _TransformerLayer(Module):
    """What torch's encoder and decoder layers share, built in torch's order (so a seed
    draws the same weights as before and the state-dict keys are torch's):
    self_attn, [multihead_attn], linear1, dropout, linear2, norm1..normS, dropout1..dropoutS,
    S = 2 sublayers for an encoder layer (SA, FF), 3 for a decoder layer (SA, cross MHA, FF).
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, activation,
                 layer_norm_eps: float, batch_first: bool, norm_first: bool, bias: bool, *, cross_attention: bool,
                 dtype, rng: np.random.Generator | None, attention_fn: Callable | None):
        super().__init__()
        rng = default_rng(rng)
        attention = dict(dropout=dropout, bias=bias, batch_first=batch_first, dtype=dtype, rng=rng,
                         attention_fn=attention_fn)
        self.self_attn = MultiheadAttention(d_model, nhead, **attention)
        if cross_attention:
            self.multihead_attn = MultiheadAttention(d_model, nhead, **attention)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, dtype=dtype, rng=rng)
        self.dropout = Dropout(dropout, rng=rng)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, dtype=dtype, rng=rng)
        self.norm_first = norm_first
        self.sublayers = 3 if cross_attention else 2
        for i in range(1, self.sublayers + 1):
            setattr(self, f"norm{i}", LayerNorm(d_model, eps=layer_norm_eps, bias=bias, dtype=dtype))
        for i in range(1, self.sublayers + 1):
            setattr(self, f"dropout{i}", Dropout(dropout, rng=rng))
        self.activation = _activation(activation)

    def _sa_block(self, x, attn_mask, key_padding_mask, is_causal) -> Tensor:
        x = self.self_attn(x, x, x, key_padding_mask=key_padding_mask, attn_mask=attn_mask, is_causal=is_causal)
        return self.dropout1(x)

    def _ff_block(self, x) -> Tensor:
        x = self.linear2(self.dropout(self.activation(self.linear1(x))))  # E -> F -> E
        return getattr(self, f"dropout{self.sublayers}")(x)


class TransformerEncoderLayer(_TransformerLayer):
    """torch.nn.TransformerEncoderLayer.

    post-norm (default): x = norm1(x + SA(x));       x = norm2(x + FF(x))
    pre-norm (norm_first): x = x + SA(norm1(x));     x = x + FF(norm2(x))
    SA(x) = dropout1(self_attn(x, x, x)),  FF(x) = dropout2(linear2(dropout(act(linear1(x)))))
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation="relu", layer_norm_eps: float = 1e-5, batch_first: bool = False,
                 norm_first: bool = False, bias: bool = True, *, dtype=np.float64,
                 rng: np.random.Generator | None = None, attention_fn: Callable | None = None):
        super().__init__(d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps, batch_first,
                         norm_first, bias, cross_attention=False, dtype=dtype, rng=rng, attention_fn=attention_fn)

    def forward(self, src: Tensor, src_mask=None, src_key_padding_mask=None, is_causal: bool = False) -> Tensor:
        """src (S, N, E) | (N, S, E) -> same shape."""
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            x = x + self._ff_block(self.norm2(x))
        else:
            x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal))
            x = self.norm2(x + self._ff_block(x))
        return x


class TransformerDecoderLayer(_TransformerLayer):
    """torch.nn.TransformerDecoderLayer.

    post-norm: x = norm1(x + SA(x)); x = norm2(x + MHA(x, memory)); x = norm3(x + FF(x))
    pre-norm:  x = x + SA(norm1(x)); x = x + MHA(norm2(x), memory); x = x + FF(norm3(x))
    MHA(x, memory) = dropout2(multihead_attn(x, memory, memory)); SA and FF as in the encoder
    layer, FF ending in dropout3.
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation="relu", layer_norm_eps: float = 1e-5, batch_first: bool = False,
                 norm_first: bool = False, bias: bool = True, *, dtype=np.float64,
                 rng: np.random.Generator | None = None, attention_fn: Callable | None = None):
        super().__init__(d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps, batch_first,
                         norm_first, bias, cross_attention=True, dtype=dtype, rng=rng, attention_fn=attention_fn)

    def forward(self, tgt: Tensor, memory: Tensor, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_is_causal: bool = False, memory_is_causal: bool = False) -> Tensor:
        """tgt (T, N, E) | (N, T, E), memory (S, N, E) | (N, S, E) -> tgt's shape."""
        x = tgt
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), tgt_mask, tgt_key_padding_mask, tgt_is_causal)
            x = x + self._mha_block(self.norm2(x), memory, memory_mask, memory_key_padding_mask, memory_is_causal)
            x = x + self._ff_block(self.norm3(x))
        else:
            x = self.norm1(x + self._sa_block(x, tgt_mask, tgt_key_padding_mask, tgt_is_causal))
            x = self.norm2(x + self._mha_block(x, memory, memory_mask, memory_key_padding_mask, memory_is_causal))
            x = self.norm3(x + self._ff_block(x))
        return x

    def _mha_block(self, x, memory, attn_mask, key_padding_mask, is_causal) -> Tensor:
        x = self.multihead_attn(x, memory, memory, key_padding_mask=key_padding_mask, attn_mask=attn_mask,
                                is_causal=is_causal)
        return self.dropout2(x)


def _clones(layer: Module, n: int) -> ModuleList:
    """n deep copies of `layer` (as torch does), sharing its random generators rather than
    copying them (copies would draw identical dropout masks in every layer) and its
    attention function (which may be a stateful object, e.g. a recorder)."""
    shared = {}
    for module in layer.modules():
        for name in ("rng", "attention_fn"):  # generators and attention functions stay shared
            if hasattr(module, name):
                shared[id(getattr(module, name))] = getattr(module, name)
    return ModuleList(copy.deepcopy(layer, memo=dict(shared)) for _ in range(n))


class TransformerEncoder(Module):
    """torch.nn.TransformerEncoder: num_layers copies of encoder_layer, then an optional norm."""

    def __init__(self, encoder_layer: TransformerEncoderLayer, num_layers: int, norm: LayerNorm | None = None):
        super().__init__()
        self.layers = _clones(encoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, src: Tensor, mask=None, src_key_padding_mask=None, is_causal: bool | None = None) -> Tensor:
        x = src
        for layer in self.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=bool(is_causal))
        return x if self.norm is None else self.norm(x)


class TransformerDecoder(Module):
    """torch.nn.TransformerDecoder: num_layers copies of decoder_layer, then an optional norm."""

    def __init__(self, decoder_layer: TransformerDecoderLayer, num_layers: int, norm: LayerNorm | None = None):
        super().__init__()
        self.layers = _clones(decoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, tgt: Tensor, memory: Tensor, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_is_causal: bool | None = None,
                memory_is_causal: bool = False) -> Tensor:
        x = tgt
        for layer in self.layers:
            x = layer(x, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                      tgt_key_padding_mask=tgt_key_padding_mask, memory_key_padding_mask=memory_key_padding_mask,
                      tgt_is_causal=bool(tgt_is_causal), memory_is_causal=memory_is_causal)
        return x if self.norm is None else self.norm(x)


class Transformer(Module):
    """torch.nn.Transformer: encoder (+ final LayerNorm) and decoder (+ final LayerNorm).

    Extra keyword-only arguments: dtype (numpy), rng (numpy Generator: init and dropout),
    attention_fn (the attention every layer calls).
    """

    def __init__(self, d_model: int = 512, nhead: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation="relu", custom_encoder: Module | None = None, custom_decoder: Module | None = None,
                 layer_norm_eps: float = 1e-5, batch_first: bool = False, norm_first: bool = False,
                 bias: bool = True, *, dtype=np.float64, rng: np.random.Generator | None = None,
                 attention_fn: Callable | None = None):
        super().__init__()
        rng = default_rng(rng)
        layer_args = dict(d_model=d_model, nhead=nhead, dim_feedforward=dim_feedforward, dropout=dropout,
                          activation=activation, layer_norm_eps=layer_norm_eps, batch_first=batch_first,
                          norm_first=norm_first, bias=bias, dtype=dtype, rng=rng, attention_fn=attention_fn)
        if custom_encoder is None:
            custom_encoder = TransformerEncoder(TransformerEncoderLayer(**layer_args), num_encoder_layers,
                                                LayerNorm(d_model, eps=layer_norm_eps, bias=bias, dtype=dtype))
        if custom_decoder is None:
            custom_decoder = TransformerDecoder(TransformerDecoderLayer(**layer_args), num_decoder_layers,
                                                LayerNorm(d_model, eps=layer_norm_eps, bias=bias, dtype=dtype))
        self.encoder, self.decoder = custom_encoder, custom_decoder
        self.d_model, self.nhead, self.batch_first = d_model, nhead, batch_first
        for p in self.parameters():  # torch's _reset_parameters: xavier on every matrix
            if p.data.ndim > 1:
                xavier_uniform_(p, rng)

    def forward(self, src: Tensor, tgt: Tensor, src_mask=None, tgt_mask=None, memory_mask=None,
                src_key_padding_mask=None, tgt_key_padding_mask=None, memory_key_padding_mask=None,
                src_is_causal: bool | None = None, tgt_is_causal: bool | None = None,
                memory_is_causal: bool = False) -> Tensor:
        """src (S, N, E) | (N, S, E), tgt (T, N, E) | (N, T, E) -> (T, N, E) | (N, T, E)."""
        batch_axis = 0 if self.batch_first else 1
        if src.shape[batch_axis] != tgt.shape[batch_axis]:
            raise ValueError(f"src, tgt: batch sizes differ ({src.shape[batch_axis]} vs {tgt.shape[batch_axis]})")
        if src.shape[-1] != self.d_model or tgt.shape[-1] != self.d_model:
            raise ValueError(f"src, tgt: expected feature size d_model={self.d_model}, got {src.shape[-1]}, {tgt.shape[-1]}")
        memory = self.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask,
                              is_causal=src_is_causal)
        return self.decoder(tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                            tgt_key_padding_mask=tgt_key_padding_mask,
                            memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=tgt_is_causal,
                            memory_is_causal=memory_is_causal)

    generate_square_subsequent_mask = staticmethod(generate_square_subsequent_mask)


__all__ = [
    "MultiheadAttention",
    "Transformer",
    "TransformerDecoder",
    "TransformerDecoderLayer",
    "TransformerEncoder",
    "TransformerEncoderLayer",
    "attention_bias",
    "generate_square_subsequent_mask",
    "set_attention_fn",
]
