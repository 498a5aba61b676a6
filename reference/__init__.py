"""flashref.reference: the NumPy oracles (attention, Transformer). Never imports torch/triton."""

# --- attention oracle (issue 3) -------------------------------------------------------
from .attention import attention_backward, attention_forward
from .attention_inputs import CAUSAL_ALIGNMENTS, AttentionInputs, attention_mask
from .explain import AttentionTrace, TraceStep, explain_attention
from .blocked_attention import Tile, blocked_attention_backward, blocked_attention_forward
from .merge_attention import merge_attention
from .sdpa import scaled_dot_product_attention

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
    "Tile",
]
# --- end attention oracle -------------------------------------------------------------
