"""The model family: a whole ``torch.nn.Transformer`` on the kernels against the NumPy
Transformer (``flashref verify --model``).

For one ``ModelCase`` (sizes, dtype, seed) ``check_model`` builds a ``torch.nn.Transformer``
(encoder-decoder, batch-first, dropout 0, training mode) with seeded weights (LayerNorm
weights and biases perturbed away from 1 and 0 so that their gradients mean something), draws
seeded inputs, a causal target mask, right key padding on the source, the memory and the
target (every query keeps at least one visible key), and a random cotangent for the output,
then computes the output and EVERY parameter gradient three ways:

- ``ref``: the NumPy Transformer (``flashref.reference.Transformer``) in float64, loaded with
  the torch model's ``state_dict``;
- ``kernel``: the torch model cast to ``dtype``, its attention on the kernels through
  ``flashref.kernels.sdpa_routing(fallback="error")`` (so nothing silently stays on torch);
- ``base``: the same torch model in ``dtype`` on torch's own attention, run twice: on the math
  SDPA backend and on torch's fused backend for the device (the flash kernel on the CPU,
  memory-efficient attention on CUDA, both of which take the masks). Each tensor's baseline
  error is the larger of the two.

Each tensor is judged by the project's rule (``flashref.gate.judge``):
``max|kernel - ref| <= factor * max|base - ref| + slack``, factor 2 for the output and 3 for
gradients, with ``slack = u32 * max|ref|`` (one float32 rounding of the tensor's largest
reference value: the kernels accumulate in float32, so an error that small says nothing
against them; next to a baseline that has gone through a whole model's roundings it is
negligible).

The baseline error of one tensor is a draw of a whole model's rounding, and one draw can be
lucky: a gradient whose max error happens to be 3x below its typical size makes a bound that a
kernel model of ordinary accuracy misses by chance. Two things make the baseline sturdier.

- Two independent roundings. Torch's math and fused attentions round differently, so the
  model's roundings downstream of them differ too; the baseline takes the larger error of the
  two. Seen in float16 (``encoder.layers.0.norm1.weight``, seed 935163935 of the e1d1 case):
  math SDPA 2.16e-3, torch's CPU flash 6.68e-3, the kernels 6.68e-3, so a math-only baseline
  failed the kernels at 3.1x, though they were exactly as accurate as torch's fused path.
- Pooling over a group: each tensor's baseline is its own error or its group's largest
  *relative* baseline error (max over the group's tensors of ``max|base - ref| / max|ref|``)
  times the tensor's own scale ``max|ref|``, whichever is larger (seen before: float16,
  decoder norm3.bias, 1 seed in 8 with a math-only, unpooled baseline). A group is the tensors
  of one sublayer; the output is a group of its own.

Both are torch's own attention in the same dtype, and the kernel model differs from them only
in its attention, so the rule asks: does running a real model's attention on the kernels cost
more accuracy than torch's attention in the same precision? GQA is not covered:
``nn.MultiheadAttention`` has no grouped kv heads (the kernel-level sweep covers GQA).

The feed-forward activation is GELU unless the case says ``relu``. The rule compares sizes of
errors, so it needs a problem whose gradients move about as much as its forward values do.
ReLU breaks that: its derivative jumps from 0 to 1 at zero. A pre-activation within one
rounding of zero (seen in bfloat16: -0.0028 on the kernels, +0.0005 on math SDPA, after
a one-ulp difference in an attention output) switches a whole row of ``linear1``'s gradient
on or off: an O(1) gradient error (8.7x the bound on that seed, 26x the baseline) for either attention,
whichever model happens to cross the kink. That is a property of ReLU, not of the attention,
so the default check (and CI) uses GELU, which is smooth. ``relu`` cases run on request, and
their gradient verdicts say how close to a kink the model is, not how accurate the kernels are.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .rule import U32, TensorError, judge, max_abs_error

if TYPE_CHECKING:  # torch loads when a model is checked, not when the gate is imported
    import torch

DTYPES = ("float32", "bfloat16", "float16")
# gelu by default: the rule needs gradients that move as little as the forward does (module docstring).
ACTIVATIONS = ("gelu", "relu")
OUT_FACTOR = 2.0
GRAD_FACTOR = 3.0


@dataclass(frozen=True)
class ModelCase:
    """``torch.nn.Transformer(d_model, nhead, encoder_layers, decoder_layers, dim_feedforward)``
    on src (batch, src_len, d_model) and tgt (batch, tgt_len, d_model), in ``dtype``."""

    dtype: str = "float32"
    seed: int = 0
    d_model: int = 32
    nhead: int = 2
    encoder_layers: int = 2
    decoder_layers: int = 2
    dim_feedforward: int = 64
    batch: int = 2
    src_len: int = 13
    tgt_len: int = 11
    norm_first: bool = False
    activation: str = "gelu"

    _NAME = re.compile(r"transformer-e(\d+)d(\d+)-dm(\d+)-h(\d+)-ff(\d+)-b(\d+)-s(\d+)-t(\d+)-(post|pre)norm"
                       r"-(relu|gelu)-(float32|bfloat16|float16)")

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.d_model % self.nhead:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of nhead ({self.nhead})")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")

    @property
    def name(self) -> str:
        return (f"transformer-e{self.encoder_layers}d{self.decoder_layers}-dm{self.d_model}-h{self.nhead}"
                f"-ff{self.dim_feedforward}-b{self.batch}-s{self.src_len}-t{self.tgt_len}"
                f"-{'pre' if self.norm_first else 'post'}norm-{self.activation}-{self.dtype}")

    @classmethod
    def from_name(cls, name: str, seed: int = 0) -> "ModelCase":
        m = cls._NAME.fullmatch(name.strip())
        if m is None:
            raise ValueError(f"model case name must look like 'transformer-e2d2-dm32-h2-ff64-b2-s13-t11-postnorm-"
                             f"gelu-bfloat16', got {name!r}")
        e, d, dm, h, ff, b, s, t = (int(g) for g in m.groups()[:8])
        return cls(m.group(11), seed, dm, h, e, d, ff, b, s, t, m.group(9) == "pre", m.group(10))

    def replay_command(self) -> str:
        return f'flashref verify --model --case "{self.name}" --seed {self.seed}'


@dataclass(frozen=True)
class TensorCheck:
    """One judged tensor: "output" or a parameter name, its group, and its ``TensorError``."""

    name: str
    group: str
    error: TensorError


@dataclass
class ModelResult:
    case: ModelCase
    checks: list[TensorCheck] = field(default_factory=list)
    routed_calls: int = 0
    seconds: float = 0.0
    baselines: tuple[str, ...] = ()  # torch's SDPA backends the baseline ran on
    refused: str = ""  # why the fused baseline could not run, if it could not

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.error.passed for c in self.checks)

    def worst(self) -> TensorCheck:
        return max(self.checks, key=lambda c: _ratio(c.error))


def _ratio(error: TensorError) -> float:
    return float("inf") if not np.isfinite(error.ratio) else error.ratio


def parameter_group(name: str) -> str:
    """'decoder.layers.1.multihead_attn.in_proj_weight' -> 'decoder.layers.1 cross-attention'."""
    m = re.match(r"(encoder|decoder)\.layers\.(\d+)\.(\w+)", name)
    if m is None:  # encoder.norm / decoder.norm
        return "final norms"
    block = m.group(3)
    kind = {"self_attn": "self-attention", "multihead_attn": "cross-attention",
            "linear1": "feed-forward", "linear2": "feed-forward"}.get(block, "norms")
    return f"{m.group(1)}.layers.{m.group(2)} {kind}"


@dataclass
class _Problem:
    """One case's weights (float64 state dict), inputs and masks, drawn from its seed."""

    state: dict
    src: torch.Tensor  # (N, S, E) float64
    tgt: torch.Tensor  # (N, T, E) float64
    dout: torch.Tensor  # (N, T, E) float64
    masks: dict  # keyword arguments of nn.Transformer.forward (bool masks, True = masked)


def _torch_model(case: ModelCase):
    import torch

    return torch.nn.Transformer(d_model=case.d_model, nhead=case.nhead, num_encoder_layers=case.encoder_layers,
                                num_decoder_layers=case.decoder_layers, dim_feedforward=case.dim_feedforward,
                                dropout=0.0, activation=case.activation, batch_first=True, norm_first=case.norm_first,
                                dtype=torch.float64)


def _padding(gen: torch.Generator, batch: int, length: int) -> torch.Tensor:
    """(N, L) bool, True at right padding; the first row is full, every row keeps >= 1 position."""
    import torch

    lengths = torch.randint(1, length + 1, (batch,), generator=gen)
    lengths[0] = length
    return torch.arange(length)[None, :] >= lengths[:, None]


def make_problem(case: ModelCase) -> _Problem:
    import torch

    gen = torch.Generator().manual_seed(case.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(case.seed)
        model = _torch_model(case)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name, value in state.items():
        if "norm" in name:  # LayerNorm: ones / zeros at init
            value += 0.1 * torch.randn(value.shape, generator=gen, dtype=torch.float64)
    n, s, t, e = case.batch, case.src_len, case.tgt_len, case.d_model
    src = torch.randn(n, s, e, generator=gen, dtype=torch.float64)
    tgt = torch.randn(n, t, e, generator=gen, dtype=torch.float64)
    dout = torch.randn(n, t, e, generator=gen, dtype=torch.float64)
    src_pad = _padding(gen, n, s)
    masks = dict(tgt_mask=torch.ones(t, t, dtype=torch.bool).triu(1), src_key_padding_mask=src_pad,
                 memory_key_padding_mask=src_pad, tgt_key_padding_mask=_padding(gen, n, t), tgt_is_causal=True)
    return _Problem(state, src, tgt, dout, masks)


def oracle_model(case: ModelCase, problem: _Problem) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The NumPy Transformer in float64: (output, {parameter name: gradient})."""
    import torch

    from flashref.autograd import Tensor
    from flashref.reference import Transformer

    model = Transformer(d_model=case.d_model, nhead=case.nhead, num_encoder_layers=case.encoder_layers,
                        num_decoder_layers=case.decoder_layers, dim_feedforward=case.dim_feedforward,
                        dropout=0.0, activation=case.activation, batch_first=True, norm_first=case.norm_first,
                        dtype=np.float64,
                        rng=np.random.default_rng(case.seed))
    model.load_state_dict({k: v.numpy() for k, v in problem.state.items()})
    masks = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in problem.masks.items()}
    out = model(Tensor(problem.src.numpy()), Tensor(problem.tgt.numpy()), **masks)
    out.backward(problem.dout.numpy())
    return out.data, {name: p.grad for name, p in model.named_parameters()}


def baseline_backends(device: str) -> tuple:
    """Torch's attentions the baseline runs on: math, and the fused backend that takes an
    arbitrary mask on ``device`` (flash on the CPU; on CUDA flash takes no mask, so the
    memory-efficient kernel)."""
    from torch.nn.attention import SDPBackend

    fused = SDPBackend.FLASH_ATTENTION if device == "cpu" else SDPBackend.EFFICIENT_ATTENTION
    return SDPBackend.MATH, fused


def torch_model_run(case: ModelCase, problem: _Problem, device: str, *, backend=None):
    """The torch model in the case's dtype: attention on the kernels (``backend=None``, every
    SDPA call must route) or on torch's SDPA ``backend`` alone (an ``SDPBackend``; torch
    raises if it cannot take a call). Returns (output, {name: gradient}, routed calls)."""
    import torch

    from torch.nn.attention import sdpa_kernel

    dtype = getattr(torch, case.dtype)
    model = _torch_model(case)
    model.load_state_dict(problem.state)
    model = model.to(device=device, dtype=dtype).train()
    src, tgt, dout = (x.to(device=device, dtype=dtype) for x in (problem.src, problem.tgt, problem.dout))
    masks = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in problem.masks.items()}
    if backend is None:
        from flashref.kernels import sdpa_routing

        context = sdpa_routing(fallback="error")
    else:
        context = sdpa_kernel(backend)
    with context:
        out = model(src, tgt, **masks)
        out.backward(dout)
    routed = context.routed if backend is None else 0
    return out.detach(), {name: p.grad for name, p in model.named_parameters()}, routed


def check_model(case: ModelCase, device: str = "cpu") -> ModelResult:
    """Judge the output and every parameter gradient of the kernel-backed model (module docstring)."""
    start = time.perf_counter()
    problem = make_problem(case)
    ref_out, ref_grads = oracle_model(case, problem)
    bases, baselines, refused = [], [], ""
    for backend in baseline_backends(device):
        try:
            bases.append(torch_model_run(case, problem, device, backend=backend))
            baselines.append(backend.name.lower())
        except RuntimeError as err:  # a fused backend that cannot take these masks: say so, judge on math alone
            if not baselines:
                raise
            refused = f"{backend.name.lower()} refused the calls ({str(err).splitlines()[0]})"
    kern_out, kern_grads, routed = torch_model_run(case, problem, device)
    tensors = [("output", "output", kern_out, [b[0] for b in bases], ref_out, OUT_FACTOR)]
    tensors += [(name, parameter_group(name), kern_grads[name], [b[1][name] for b in bases], ref, GRAD_FACTOR)
                for name, ref in ref_grads.items()]
    # Two roundings, pooled over the group relative to each tensor's scale (module docstring).
    scale = {name: float(np.max(np.abs(ref))) if ref.size else 0.0 for name, _, _, _, ref, _ in tensors}
    base_err = {name: max(max_abs_error(b, ref) for b in base) for name, _, _, base, ref, _ in tensors}
    group_rel: dict[str, float] = {}
    for name, group, *_ in tensors:
        if scale[name] > 0:
            group_rel[group] = max(group_rel.get(group, 0.0), base_err[name] / scale[name])
    checks = []
    for name, group, kern, _, ref, factor in tensors:
        baseline = max(base_err[name], group_rel.get(group, 0.0) * scale[name])
        checks.append(TensorCheck(name, group, judge(max_abs_error(kern, ref), baseline, factor, U32 * scale[name])))
    return ModelResult(case, checks, routed, time.perf_counter() - start, tuple(baselines), refused)


def model_cases(dtypes=None, *, seed: int, **sizes) -> list[ModelCase]:
    """One case per dtype (all three by default), all with the same seed (the same weights and inputs)."""
    dtypes = tuple(dtypes) if dtypes else DTYPES
    return [ModelCase(dtype=d, seed=seed, **sizes) for d in dtypes]


__all__ = ["ModelCase", "ModelResult", "TensorCheck", "check_model", "model_cases", "parameter_group"]
