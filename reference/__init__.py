"""flashref.reference: the NumPy oracles (attention, Transformer). Never imports torch/triton."""

# --- attention oracle -------------------------------------------------------------------
from .attention import attention_backward, attention_forward
from .attention_inputs import CAUSAL_ALIGNMENTS, AttentionInputs, attention_mask
from .explain import AttentionTrace, TraceStep, explain_attention
from .blocked_attention import AttentionTile, blocked_attention_backward, blocked_attention_forward
from .merge_attention import merge_attention
from .sdpa import scaled_dot_product_attention
from .varlen import attention_varlen_backward, attention_varlen_forward
from .kvcache import append_to_kvcache, attention_with_kvcache

__all__ = [
    # attention oracle
    "AttentionInputs",
    "CAUSAL_ALIGNMENTS",
    "attention_backward",
    "attention_forward",
    "attention_mask",
    "AttentionTrace",
    "TraceStep",
    "explain_attention",
    "blocked_attention_backward",
    "blocked_attention_forward",
    "merge_attention",
    "scaled_dot_product_attention",
    "AttentionTile",
    "attention_varlen_forward",
    "attention_varlen_backward",
    "attention_with_kvcache",
    "append_to_kvcache",
]
# --- end attention oracle -------------------------------------------------------------

# --- NumPy Transformer, its layers and optimizers ---------------------------------------
from .module import Module, ModuleList
from .layers import Dropout, Embedding, LayerNorm, Linear, PositionalEncoding
from .transformer import (
    MultiheadAttention,
    Transformer,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
    generate_square_subsequent_mask,
    set_attention_fn,
)
from .seq2seq import Seq2SeqConfig, Seq2SeqModel
from .optim import SGD, Adam, AdamW, WarmupCosine, WarmupInverseSqrt, clip_grad_norm

__all__ += [
    "Module", "ModuleList", "Dropout", "Embedding", "LayerNorm", "Linear", "PositionalEncoding",
    "MultiheadAttention", "Transformer", "TransformerDecoder", "TransformerDecoderLayer",
    "TransformerEncoder", "TransformerEncoderLayer", "generate_square_subsequent_mask", "set_attention_fn",
    "Seq2SeqConfig", "Seq2SeqModel",
    "SGD", "Adam", "AdamW", "WarmupCosine", "WarmupInverseSqrt", "clip_grad_norm",
]
# --- end NumPy Transformer --------------------------------------------------------------
