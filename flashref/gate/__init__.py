"""flashref.gate: the correctness gate for any attention implementation.

One module per concept, each calling only the ones above it in this list:

- ``rule``: the rule (``TensorError``, ``RmsError``, ``judge``, ``slack``, ``baseline_ceiling``,
  ``rms_check``), taking a dtype and magnitudes;
- ``cases``: the dense ``Case`` and its name grammar; ``results``: ``CaseResult``;
- ``dense``: a dense case's inputs, oracle, baselines, magnitudes and verdict;
- ``boundaries`` and ``sweeps``: the dense presets (covering design, variants, block edges);
- ``packed``: the varlen and KV-cache families; ``model``: a whole torch.nn.Transformer on
  the kernels; ``ring``: ring attention on N processes;
- ``families``: the registry that makes the families peers (``sweep``, ``case_from_name``,
  ``check_case``);
- ``implementations``: ``Implementation`` (anyone's attention and what it declares), the
  built-ins, ``resolve_implementation``; ``check``: ``check(impl, cases)`` -> ``GateReport``;
- ``fuzz``: drawing cases over what an implementation declares, shrinking a failure;
- ``reports``: tables, JSON and JUnit of results.

The names below are the package's public API (docs/architecture.md).
"""

from .boundaries import (BOUNDARY_QUANTITIES, KV_LEN_PAIRING, QUICK_TILES, RESIDUES, SHIFT_PAIRING, boundary_cases,
                         boundary_quantities, residue_gaps, table_tiles, tile_triples)
from .cases import CAUSAL_MODES, TILE_LAUNCHES, Case, ReplayableCase, Suffix
from .check import GateReport, check, check_case_with, resolve_cases
from .dense import (MASK_KEYWORDS, CaseInputs, algorithm_attention, attention_kwargs, baseline_attention,
                    float32_matmuls_in_ieee, judge_all, kernel_attention, magnitudes, make_inputs, oracle_attention)
from .families import FAMILIES, PRESETS, Family, case_from_name, check_case, family_of, register_family, sweep
from .model import ModelCase, ModelResult, check_model, model_cases
from .implementations import (FEATURES, Implementation, ImplementationError, builtin_implementations, parse_features,
                              required_features, resolve_implementation, run_implementation, unsupported_reason,
                              visibility)
from .packed import (DECODE_TILES, KvcacheCase, VarlenCase, kvcache_boundary_rows, kvcache_sweep,
                     varlen_boundary_rows, varlen_sweep)
from .results import CaseResult
from .ring import RingCase, check_ring, ring_sweep, run_ring_check
from .rule import (BASELINE_CEILING, DS_ROUNDING, DTYPES, FACTORS, FLOAT32_REGIME, LAMBDA, LSE_ROUNDING,
                   RMS_FACTOR_16BIT, RMS_FACTOR_FLOAT32, TANH_ROUNDING, TENSORS, U32, UNIT_ROUNDOFF, RmsError,
                   TensorError, as_float64, baseline_ceiling, error_ratio, finite_error, half_ulp, judge,
                   max_abs_error, max_or_zero, rms_check, rms_error, slack)
from .sweeps import (CI_HEAD_DIMS, CI_SEQLENS, FP8_CASES, HEAD_LAYOUTS, QUICK_FP8, QUICK_HEAD_DIMS, QUICK_SEQLENS,
                     VALUE_HEAD_DIM_PAIRS, VARIANT_FAMILIES, dense_sweep, fp8_cases)
from .fp8 import check_fp8_case
from .rule import FP8

__all__ = [
    "BASELINE_CEILING", "BOUNDARY_QUANTITIES", "CAUSAL_MODES", "CI_HEAD_DIMS", "CI_SEQLENS", "DECODE_TILES", "DS_ROUNDING", "DTYPES", "FACTORS",
    "FAMILIES", "FEATURES", "FLOAT32_REGIME", "HEAD_LAYOUTS", "KV_LEN_PAIRING", "LAMBDA", "LSE_ROUNDING", "MASK_KEYWORDS", "PRESETS", "QUICK_HEAD_DIMS", "QUICK_SEQLENS",
    "QUICK_TILES", "RESIDUES",
    "RMS_FACTOR_16BIT", "RMS_FACTOR_FLOAT32", "SHIFT_PAIRING", "TANH_ROUNDING", "TENSORS", "TILE_LAUNCHES", "U32",
    "UNIT_ROUNDOFF", "VALUE_HEAD_DIM_PAIRS", "VARIANT_FAMILIES", "Case", "CaseInputs", "CaseResult", "Family", "GateReport",
    "Implementation", "ImplementationError", "KvcacheCase", "ModelCase", "ModelResult", "ReplayableCase", "RingCase", "RmsError", "Suffix", "TensorError",
    "VarlenCase", "algorithm_attention", "as_float64", "attention_kwargs", "baseline_attention",
    "baseline_ceiling", "boundary_cases", "boundary_quantities", "builtin_implementations", "case_from_name",
    "check", "check_case", "check_case_with", "check_model", "check_ring", "dense_sweep", "error_ratio", "family_of", "finite_error",
    "float32_matmuls_in_ieee", "half_ulp", "judge", "judge_all", "kernel_attention", "kvcache_boundary_rows",
    "kvcache_sweep", "magnitudes", "make_inputs", "model_cases", "max_abs_error", "max_or_zero", "oracle_attention",
    "parse_features", "register_family", "required_features", "residue_gaps", "resolve_cases",
    "resolve_implementation", "ring_sweep", "rms_check", "rms_error", "run_implementation", "run_ring_check", "slack", "sweep", "table_tiles",
    "tile_triples", "unsupported_reason", "varlen_boundary_rows", "varlen_sweep", "visibility",
    "FP8", "FP8_CASES", "QUICK_FP8", "check_fp8_case", "fp8_cases",
]
