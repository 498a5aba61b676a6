"""Attention implementations the gate can judge: flashref's kernels, torch SDPA's backends,
FlexAttention, or anyone's callable.

An ``Implementation`` is ``attention(q, k, v, **kw)`` plus what it declares it can do: the
keyword names are flashref's (``causal``, ``causal_alignment``, ``kv_lens``, ``window_size``,
``softcap``, ``alibi_slopes``, ``sinks``, ``dropout_p``, ``dropout_seed``), passed only when a
case uses them; it returns ``out`` or ``(out, lse)`` and gradients come from torch autograd
through ``out`` (and ``sinks``). ``layout`` "bhld" is (B, H, L, D), "blhd" FlashAttention's
(B, L, H, D). Optional ``varlen`` and ``kvcache`` callables with flashref's signatures
(``flash_attention_varlen``, ``flash_attention_with_kvcache``) let it be judged on the packed
families too (declare ``varlen``, ``kvcache``, ``paged``). A case that needs a feature, dtype,
head dim or device the implementation does not declare is *unsupported*: reported, never
failed, never dropped (``unsupported_reason``).

``run_implementation`` calls it on a case's inputs and checks what comes back (shape, dtype,
device, no NaN or Inf where the oracle is finite, the inputs left as they were); anything wrong
raises ``ImplementationError``, which the gate reports as ERROR for that case.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

from .cases import FEATURES, Case
from .dense import CaseInputs, attention_kwargs
from .families import family_of
from .results import ImplementationError
from .rule import DTYPES

LAYOUTS = ("bhld", "blhd")
ENTRY_POINT_GROUP = "flashref.implementations"


@dataclass(frozen=True)
class Implementation:
    """A named attention function and what it declares it can do (module docstring).

    ``fused``: whether it computes the FlashAttention algorithm (P in float32, rounded once to
    the dtype for P V): then the RMS criterion against the algorithm baseline applies
    (docs/design.md); plain attention rounds S and P to the dtype and is judged by the
    max-norm rule alone. ``available(device)`` returns why it cannot run there, or None.
    ``backward_devices``: where it has a backward; elsewhere its forward alone (out, lse) is
    judged, and the report says so. ``varlen``, ``kvcache``: its packed entry points, or None."""

    name: str
    attention: Callable[..., Any]
    layout: str = "bhld"
    features: frozenset = frozenset()
    dtypes: tuple = DTYPES
    devices: tuple = ("cpu", "cuda")
    head_dims: Callable[[int], bool] | None = None
    fused: bool = False
    available: Callable[[str], str | None] | None = field(default=None, compare=False)
    backward_devices: tuple = ("cpu", "cuda")
    varlen: Callable[..., Any] | None = field(default=None, compare=False)
    kvcache: Callable[..., Any] | None = field(default=None, compare=False)

    def __post_init__(self):
        for role in ("attention", "varlen", "kvcache"):
            fn = getattr(self, role)
            if not callable(fn) and not (role != "attention" and fn is None):
                raise TypeError(f"implementation {self.name!r}: {role} must be callable, got {type(fn)}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"implementation {self.name!r}: layout must be one of {LAYOUTS}, got {self.layout!r}")
        unknown = set(self.features) - set(FEATURES)
        if unknown:
            raise ValueError(f"implementation {self.name!r}: unknown features {sorted(unknown)}; "
                             f"the vocabulary is {FEATURES}")
        bad = set(self.dtypes) - set(DTYPES)
        if bad:
            raise ValueError(f"implementation {self.name!r}: dtypes must be among {DTYPES}, got {sorted(bad)}")
        object.__setattr__(self, "features", frozenset(self.features))


def required_features(case) -> set[str]:
    """The features (``FEATURES``) an implementation must declare to run ``case``, of any family."""
    return family_of(case).features(case)


def unsupported_reason(impl: Implementation, case, device: str) -> str | None:
    """Why ``impl`` cannot run ``case`` on ``device``, or None: no entry point for the case's
    family, then the device (``devices``, its own ``available``: one reason for every case where
    nothing runs), then a missing feature, dtype or head dim."""
    family = family_of(case)
    if family.implementation_attribute is None:
        return None if impl.name == "flashref" else f"the {family.name} family judges flashref's kernels only"
    if getattr(impl, family.implementation_attribute) is None:
        return f"no {family.implementation_attribute} entry point (the {family.name} family)"
    if device not in impl.devices:
        return f"does not run on {device}"
    if impl.available is not None:
        reason = impl.available(device)
        if reason is not None:  # nothing runs here: the one reason every case gives
            return reason
    missing = sorted(required_features(case) - impl.features)
    if missing:
        return f"needs {', '.join(missing)}"
    if case.dtype not in impl.dtypes:
        return f"no {case.dtype}"
    if impl.head_dims is not None and not impl.head_dims(case.head_dim):
        return f"no head dim {case.head_dim}"
    return None


def _to_layout(t, layout: str):
    return t if layout == "bhld" else t.transpose(1, 2)


def run_implementation(impl: Implementation, case: Case, inputs: CaseInputs, oracle: dict) -> dict:
    """out, dq, dk, dv (dsinks with sinks, lse when returned) of ``impl`` on the case's inputs,
    in flashref's (B, H, L, D) layout; ImplementationError for anything attention would not do."""
    import torch

    backward = inputs.q.device.type in impl.backward_devices
    q, k, v = (_to_layout(t.detach().clone(), impl.layout).requires_grad_(backward)
               for t in (inputs.q, inputs.k, inputs.v))
    before = [t.detach().clone() for t in (q, k, v)]
    kw = {key: value for key, value in attention_kwargs(case, inputs).items()
          if not (key == "causal" and value is False)
          and not (key == "causal_alignment" and "causal_bottom_right" not in required_features(case))
          and not (key == "kv_lens" and value is None)}
    wrt = [q, k, v]
    if inputs.sinks is not None:
        kw["sinks"] = inputs.sinks.detach().clone().requires_grad_(backward)
        wrt.append(kw["sinks"])
    try:
        result = impl.attention(q, k, v, **kw)
    except Exception as exc:
        raise ImplementationError(f"{impl.name} raised {type(exc).__name__}: {exc}") from exc
    out, lse = (result if isinstance(result, tuple) else (result, None))[:2]
    if not isinstance(out, torch.Tensor):
        raise ImplementationError(f"{impl.name} returned {type(out).__name__}, not a torch.Tensor")
    want = tuple(_to_layout(inputs.q, impl.layout).shape)
    if tuple(out.shape) != want:
        raise ImplementationError(f"{impl.name} returned out of shape {tuple(out.shape)}, expected {want}")
    if out.dtype != q.dtype or out.device != q.device:
        raise ImplementationError(f"{impl.name} returned out as {out.dtype} on {out.device}, "
                                  f"expected {q.dtype} on {q.device}")
    for name, t, old in zip("qkv", (q, k, v), before):
        if not torch.equal(t.detach(), old):
            raise ImplementationError(f"{impl.name} wrote into its input {name}")
    out_bhld = _to_layout(out, impl.layout)
    finite = torch.from_numpy(oracle["out"]).isfinite().to(out.device)
    if not bool(out_bhld.detach().isfinite()[finite].all()):
        raise ImplementationError(f"{impl.name} returned NaN or Inf where the oracle is finite")
    forward = dict(out=out_bhld.detach())
    if lse is not None and "lse" in impl.features:
        forward["lse"] = lse.detach().float()
    if not backward:
        return forward
    try:
        grads = torch.autograd.grad(out, wrt, _to_layout(inputs.dout, impl.layout), allow_unused=True)
    except Exception as exc:
        raise ImplementationError(f"{impl.name}'s backward raised {type(exc).__name__}: {exc}") from exc
    if any(g is None for g in grads):
        raise ImplementationError(f"{impl.name}: no gradient reaches {[n for n, g in zip('qkvs', grads) if g is None]}")
    grads = [_to_layout(g, impl.layout) if i < 3 else g for i, g in enumerate(grads)]
    return {**forward, **dict(zip(("dq", "dk", "dv", "dsinks"), grads))}


# ---------------------------------------------------------------------------- built-ins
def visibility(batch: int, seqlen_q: int, seqlen_k: int, *, causal=False, causal_alignment="top_left", kv_lens=None,
               window_size=(-1, -1), device="cpu"):
    """The boolean (B, 1, Lq, Lk) mask of flashref's semantics, built with torch for the
    adapters of other implementations (the gate's baseline takes the oracle's instead):
    key j visible to query i of row b iff j < kv_len_b, and with causal j <= i + shift_b, and
    within the window ``i + shift_b - left <= j <= i + shift_b + right``; shift_b is 0 for
    top_left, kv_len_b - Lq (or Lk - Lq) for bottom_right."""
    import torch

    lens = kv_lens.to(device).long() if kv_lens is not None else torch.full((batch,), seqlen_k, device=device)
    shift = (lens - seqlen_q) if causal_alignment == "bottom_right" else torch.zeros_like(lens)
    i = torch.arange(seqlen_q, device=device)[None, :, None] + shift[:, None, None]
    j = torch.arange(seqlen_k, device=device)[None, None, :]
    visible = j < lens[:, None, None]
    left, right = window_size
    if causal:
        right = 0 if right < 0 else min(right, 0)
    if right >= 0:
        visible = visible & (j <= i + right)
    if left >= 0:
        visible = visible & (j >= i - left)
    return visible.expand(batch, seqlen_q, seqlen_k)[:, None]


def _alibi_bias(slopes, batch, heads, seqlen_q, seqlen_k, shift):
    import torch

    i = torch.arange(seqlen_q, device=slopes.device)[None, :, None] + shift[:, None, None]
    j = torch.arange(seqlen_k, device=slopes.device)[None, None, :]
    distance = (i - j).abs().float()[:, None]  # (B, 1, Lq, Lk)
    per_head = slopes.float().reshape(-1 if slopes.dim() == 2 else 1, heads)[:, :, None, None]
    return -per_head * distance


def _sdpa(backend_name: str):
    def attention(q, k, v, *, causal=False, causal_alignment="top_left", kv_lens=None, window_size=(-1, -1),
                  alibi_slopes=None):
        import torch
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = getattr(SDPBackend, backend_name)
        batch, heads, seqlen_q, _ = q.shape
        seqlen_k = k.shape[2]
        gqa = dict(enable_gqa=True) if heads != k.shape[1] else {}
        plain_causal = causal and causal_alignment == "top_left" and kv_lens is None and window_size == (-1, -1)
        with sdpa_kernel(backend):
            if alibi_slopes is None and (plain_causal or not (causal or kv_lens is not None
                                                                or window_size != (-1, -1))):
                return F.scaled_dot_product_attention(q, k, v, is_causal=plain_causal, **gqa)
            mask = visibility(batch, seqlen_q, seqlen_k, causal=causal, causal_alignment=causal_alignment,
                              kv_lens=kv_lens, window_size=window_size, device=q.device)
            if alibi_slopes is not None:
                lens = kv_lens.long() if kv_lens is not None else torch.full((batch,), seqlen_k, device=q.device)
                shift = lens - seqlen_q if causal_alignment == "bottom_right" else torch.zeros_like(lens)
                bias = _alibi_bias(alibi_slopes, batch, heads, seqlen_q, seqlen_k, shift)
                mask = torch.where(mask, bias, float("-inf")).to(q.dtype)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **gqa)

    return attention


def _sdpa_available(backend_name: str):
    def available(device: str) -> str | None:
        import torch
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel

        if device == "cuda" and not torch.cuda.is_available():
            return "no CUDA device"
        probe = torch.zeros(1, 1, 2, 8, device=device, dtype=torch.float16 if device == "cuda" else torch.float32)
        try:
            with sdpa_kernel(getattr(SDPBackend, backend_name)):
                F.scaled_dot_product_attention(probe, probe, probe)
        except RuntimeError as exc:
            return f"torch's {backend_name.lower()} SDPA backend does not run on {device}: {str(exc).splitlines()[0]}"
        return None

    return available


def _flex_masked(q, k, v, **kw):
    """FlexAttention eager with the mask as a score_mod (-inf where hidden): what an eager
    call runs; rows that see no key give 0 (flex's convention), as flashref's."""
    import torch
    from torch.nn.attention.flex_attention import AuxRequest, flex_attention

    batch, heads, seqlen_q, _ = q.shape
    seqlen_k = k.shape[2]
    causal, alignment = kw.get("causal", False), kw.get("causal_alignment", "top_left")
    kv_lens, window, softcap = kw.get("kv_lens"), kw.get("window_size", (-1, -1)), kw.get("softcap", 0.0)
    alibi_slopes = kw.get("alibi_slopes")
    visible = visibility(batch, seqlen_q, seqlen_k, causal=causal, causal_alignment=alignment, kv_lens=kv_lens,
                         window_size=window, device=q.device)[:, 0]
    lens = kv_lens.long() if kv_lens is not None else torch.full((batch,), seqlen_k, device=q.device)
    shift = lens - seqlen_q if alignment == "bottom_right" else torch.zeros_like(lens)
    slopes = None if alibi_slopes is None else alibi_slopes.float().reshape(-1 if alibi_slopes.dim() == 2 else 1, heads)

    def score_mod(score, b, h, i, j):
        if softcap > 0:
            score = softcap * torch.tanh(score / softcap)
        if slopes is not None:
            score = score - slopes[b if slopes.shape[0] > 1 else 0, h] * (i + shift[b] - j).abs()
        return torch.where(visible[b, i, j], score, -float("inf"))

    with warnings.catch_warnings():  # "called without torch.compile": eager is what `flex` judges
        warnings.simplefilter("ignore", UserWarning)
        out, aux = flex_attention(q, k, v, score_mod=score_mod, enable_gqa=heads != k.shape[1],
                                  return_aux=AuxRequest(lse=True))
    return out, aux.lse


def _flashref(q, k, v, **kw):
    from flashref.kernels import flash_attention

    return flash_attention(q, k, v, return_lse=True, **kw)


def _flashref_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **kw):
    from flashref.kernels import flash_attention_varlen

    return flash_attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **kw)


def _flashref_kvcache(q, k_cache, v_cache, k=None, v=None, **kw):
    from flashref.kernels import flash_attention_with_kvcache

    return flash_attention_with_kvcache(q, k_cache, v_cache, k=k, v=v, **kw)


MASKS = frozenset({"causal_top_left", "causal_bottom_right", "kv_lens", "gqa", "window"})


def builtin_implementations() -> dict[str, Implementation]:
    """The built-in implementations by name: ``flashref`` (the Triton kernels), one per torch
    SDPA backend (``sdpa-math``, ``sdpa-flash``, ``sdpa-efficient``, ``sdpa-cudnn``: masks as
    ``attn_mask``, ALiBi as an additive float mask), and ``flex`` (FlexAttention eager: masks
    and ALiBi and softcap as a score_mod; lse). Sinks and dropout are flashref's alone: no
    torch entry point takes a sink logit, and only flashref's keep mask can be replayed."""
    sdpa = {f"sdpa-{short}": Implementation(f"sdpa-{short}", _sdpa(backend), features=MASKS | {"alibi"},
                                            available=_sdpa_available(backend))
            for short, backend in (("math", "MATH"), ("flash", "FLASH_ATTENTION"),
                                   ("efficient", "EFFICIENT_ATTENTION"), ("cudnn", "CUDNN_ATTENTION"))}
    return {
        "flashref": Implementation("flashref", _flashref, features=frozenset(FEATURES),
                                   head_dims=lambda d: 1 <= d <= 256, fused=True, varlen=_flashref_varlen,
                                   kvcache=_flashref_kvcache),
        **sdpa,
        # torch 2.13's eager FlexAttention has no backward on the CPU.
        "flex": Implementation("flex", _flex_masked, features=MASKS | {"softcap", "alibi", "lse"},
                               backward_devices=("cuda",)),
    }


def resolve_implementation(spec: str, *, features=None, layout: str | None = None) -> Implementation:
    """An implementation from a command-line spec: a built-in name, an installed entry point of
    the group ``flashref.implementations``, or ``module:attribute`` (an ``Implementation``, or
    a callable judged with ``features`` (default: plain attention only) and ``layout``).
    ValueError with one clear line for anything else."""
    builtins = builtin_implementations()
    if spec in builtins:
        return builtins[spec]
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name == spec:
            return _as_implementation(entry.load(), spec, features, layout)
    if ":" not in spec:
        raise ValueError(f"unknown implementation {spec!r}: built-ins are {sorted(builtins)}; or give "
                         f"module:attribute, or install a package with a {ENTRY_POINT_GROUP!r} entry point")
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute.isidentifier():
        raise ValueError(f"--impl {spec!r}: expected module:attribute, e.g. mypkg.attn:my_attention")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ValueError(f"--impl {spec!r}: cannot import {module_name!r}: {type(exc).__name__}: {exc}") from exc
    if not hasattr(module, attribute):
        raise ValueError(f"--impl {spec!r}: module {module_name!r} has no attribute {attribute!r}")
    return _as_implementation(getattr(module, attribute), spec, features, layout)


def _as_implementation(obj, name: str, features, layout) -> Implementation:
    if isinstance(obj, Implementation):
        return obj
    if not callable(obj):
        raise ValueError(f"--impl {name!r} is neither an Implementation nor callable ({type(obj).__name__})")
    return Implementation(name, obj, layout=layout or "bhld", features=frozenset(features or ()))


def parse_features(text: str) -> frozenset:
    """``a,b,c`` -> the features, ValueError naming an unknown one."""
    chosen = frozenset(f.strip() for f in text.split(",") if f.strip())
    unknown = sorted(chosen - set(FEATURES))
    if unknown:
        raise ValueError(f"unknown features {unknown}; the vocabulary is {', '.join(FEATURES)}")
    return chosen


__all__ = ["FEATURES", "LAYOUTS", "Implementation", "ImplementationError", "builtin_implementations",
           "parse_features", "required_features", "resolve_implementation", "run_implementation",
           "unsupported_reason", "visibility"]
