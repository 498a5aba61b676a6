"""flashref.autograd: a tiny reverse-mode autograd over ``numpy.ndarray`` (float64 by default).

    from flashref.autograd import Tensor, no_grad, gradcheck, tensor
    from flashref.autograd import concatenate, stack, split, where, masked_fill, take
    import flashref.autograd.functional as F

Modules: ``tensor`` (Tensor, the graph and reverse mode), ``primitives`` (the one registry
of forward/backward pairs), ``functional`` (torch.nn.functional-style composites),
``special`` (erf), ``gradcheck`` (finite-difference checker), ``opcheck`` (every op
checked, for ``flashref audit gradcheck``). Derivations: docs/autograd.md.
"""

from .gradcheck import GradcheckError, GradcheckReport, gradcheck
from .primitives import REGISTRY, Context, Primitive, register, unbroadcast
from .tensor import (
    Tensor,
    apply,
    concatenate,
    is_grad_enabled,
    masked_fill,
    no_grad,
    split,
    stack,
    take,
    tensor,
    where,
)
from . import functional

__all__ = [
    "REGISTRY",
    "Context",
    "Primitive",
    "register",
    "GradcheckError",
    "GradcheckReport",
    "Tensor",
    "apply",
    "concatenate",
    "functional",
    "gradcheck",
    "is_grad_enabled",
    "masked_fill",
    "no_grad",
    "split",
    "stack",
    "take",
    "tensor",
    "unbroadcast",
    "where",
]
