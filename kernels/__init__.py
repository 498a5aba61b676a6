"""flashref.kernels: Triton fused attention (FlashAttention-2 forward and backward) for torch.

Set ``TRITON_INTERPRET=1`` before importing this package to run the kernels on CPU tensors
with Triton's interpreter; otherwise they compile for the GPU.
"""

from .tile_tables import KernelConfig, configs_for
from .checks import CAUSAL_ALIGNMENTS
from .flash_attention import flash_attention
from .launch import INTERPRETED, last_dropout_seed, poisoned_outputs
from .flash_attention_varlen import flash_attention_varlen
from .flash_attention_kvcache import flash_attention_with_kvcache
from .fp8_quantize import hadamard_rotation, quantize_fp8

__all__ = ["flash_attention", "flash_attention_varlen", "flash_attention_with_kvcache", "quantize_fp8",
           "hadamard_rotation", "last_dropout_seed", "poisoned_outputs", "INTERPRETED", "CAUSAL_ALIGNMENTS", "KernelConfig",
           "configs_for"]

from .sdpa_routing import SDPARoutingError, sdpa_routing  # noqa: E402 -- issue 12: route torch SDPA to the kernels
__all__ += ["sdpa_routing", "SDPARoutingError"]
