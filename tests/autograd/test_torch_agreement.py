"""Values and gradients against torch.autograd in float64 (an independent second opinion).

Each row runs the same function in both engines on the same random inputs, backpropagates
the same random cotangent, and compares outputs and every input gradient normwise:
``max|ours - torch| <= 1e-12 * max|torch|``.
"""

import numpy as np
import pytest
import torch

import flashref.autograd.functional as F
from flashref.autograd import Tensor, concatenate, masked_fill, split, stack, take, where
from flashref.autograd.opcheck import distinct, normal, off_zero, positive

TF = torch.nn.functional
IDS = np.array([[0, 3, 3], [1, 0, 3]])
TARGET = np.array([2, -100, 0, 4, 4, 1, -100, 3])
TARGET_3D = np.array([[1, 3, 1], [0, 0, 2]])  # used with ignore_index=1
MASK = np.array([[True, False, True, False], [False, False, True, True], [True, True, True, False]])

CASES = [
    # name, ours, torch's, input makers
    ("add", lambda a, b: a + b, lambda a, b: a + b, [normal(3, 4), normal(4)]),
    ("sub", lambda a, b: a - b, lambda a, b: a - b, [normal(2, 1, 3), normal(4, 1)]),
    ("mul", lambda a, b: a * b, lambda a, b: a * b, [normal(3, 4), normal(3, 1)]),
    ("div", lambda a, b: a / b, lambda a, b: a / b, [normal(2, 3), off_zero(3)]),
    ("neg", lambda a: -a, lambda a: -a, [normal(3)]),
    ("pow", lambda a: a**2.5 + a**-1.0, lambda a: a**2.5 + a**-1.0, [positive(2, 3)]),
    ("exp", lambda a: a.exp(), torch.exp, [normal(3, 3)]),
    ("log", lambda a: a.log(), torch.log, [positive(3, 3)]),
    ("sqrt", lambda a: a.sqrt(), torch.sqrt, [positive(3, 3)]),
    ("tanh", lambda a: a.tanh(), torch.tanh, [normal(3, 3)]),
    ("relu", lambda a: a.relu(), torch.relu, [off_zero(3, 4)]),
    ("erf", lambda a: a.erf(), torch.erf, [normal(50)]),
    ("matmul", lambda a, b: a @ b, lambda a, b: a @ b, [normal(2, 1, 3, 4), normal(3, 4, 5)]),
    ("matmul[vec]", lambda a, b: a @ b, lambda a, b: a @ b, [normal(4), normal(2, 4, 3)]),
    ("matmul[nd@2d]", lambda a, b: a @ b, lambda a, b: a @ b, [normal(2, 3, 4), normal(4, 5)]),
    ("sum", lambda a: a.sum(axis=(0, 2)), lambda a: a.sum(dim=(0, 2)), [normal(2, 3, 4)]),
    ("mean", lambda a: a.mean(axis=-1, keepdims=True), lambda a: a.mean(dim=-1, keepdim=True), [normal(2, 3, 4)]),
    ("max", lambda a: a.max(axis=1), lambda a: torch.amax(a, dim=1), [distinct(3, 5)]),
    ("reshape", lambda a: a.reshape(4, 6), lambda a: a.reshape(4, 6), [normal(2, 3, 4)]),
    ("transpose", lambda a: a.transpose(2, 0, 1), lambda a: a.permute(2, 0, 1), [normal(2, 3, 4)]),
    ("getitem", lambda a: a[np.array([0, 2, 0]), 1:3], lambda a: a[torch.tensor([0, 2, 0]), 1:3], [normal(3, 4)]),
    ("take", lambda w: take(w, IDS, axis=0), lambda w: w[torch.tensor(IDS)], [normal(4, 3)]),
    ("concatenate", lambda a, b: concatenate([a, b], axis=1), lambda a, b: torch.cat([a, b], dim=1), [normal(2, 3), normal(2, 2)]),
    ("stack", lambda a, b: stack([a, b], axis=1), lambda a, b: torch.stack([a, b], dim=1), [normal(2, 3), normal(2, 3)]),
    ("split", lambda a: split(a, [1, 3], axis=1)[1], lambda a: torch.tensor_split(a, [1, 3], dim=1)[1], [normal(2, 5)]),
    ("where", lambda a, b: where(MASK, a, b), lambda a, b: torch.where(torch.tensor(MASK), a, b), [normal(3, 4), normal(4)]),
    ("masked_fill", lambda a: masked_fill(a, MASK, -2.0), lambda a: a.masked_fill(torch.tensor(MASK), -2.0), [normal(3, 4)]),
    ("F.softmax", lambda a: F.softmax(a, axis=0), lambda a: TF.softmax(a, dim=0), [normal(4, 3)]),
    ("F.log_softmax", lambda a: F.log_softmax(a), lambda a: TF.log_softmax(a, dim=-1), [normal(4, 7)]),
    ("F.logsumexp", lambda a: F.logsumexp(a, axis=1), lambda a: torch.logsumexp(a, dim=1), [normal(4, 7)]),
    ("F.layer_norm", lambda x, w, b: F.layer_norm(x, 6, w, b, eps=1e-5),
     lambda x, w, b: TF.layer_norm(x, (6,), w, b, eps=1e-5), [normal(2, 3, 6), normal(6), normal(6)]),
    ("F.layer_norm[2d]", lambda x: F.layer_norm(x, (3, 4), eps=1e-3), lambda x: TF.layer_norm(x, (3, 4), eps=1e-3), [normal(2, 3, 4)]),
    ("F.gelu", lambda a: F.gelu(a), lambda a: TF.gelu(a), [normal(200)]),
    ("F.gelu[tanh]", lambda a: F.gelu(a, approximate="tanh"), lambda a: TF.gelu(a, approximate="tanh"), [normal(200)]),
    ("F.relu", F.relu, TF.relu, [off_zero(5)]),
    ("F.linear", lambda x, w, b: F.linear(x, w, b), TF.linear, [normal(2, 3, 4), normal(5, 4), normal(5)]),
    ("F.embedding", lambda w: F.embedding(IDS, w), lambda w: TF.embedding(torch.tensor(IDS), w), [normal(4, 3)]),
    ("F.cross_entropy", lambda z: F.cross_entropy(z, TARGET), lambda z: TF.cross_entropy(z, torch.tensor(TARGET)), [normal(8, 5)]),
    ("F.cross_entropy[smooth]", lambda z: F.cross_entropy(z, TARGET, label_smoothing=0.15),
     lambda z: TF.cross_entropy(z, torch.tensor(TARGET), label_smoothing=0.15), [normal(8, 5)]),
    ("F.cross_entropy[smooth,sum]", lambda z: F.cross_entropy(z, TARGET, label_smoothing=0.3, reduction="sum"),
     lambda z: TF.cross_entropy(z, torch.tensor(TARGET), label_smoothing=0.3, reduction="sum"), [normal(8, 5)]),
    ("F.cross_entropy[smooth,none]", lambda z: F.cross_entropy(z, TARGET, label_smoothing=0.3, reduction="none"),
     lambda z: TF.cross_entropy(z, torch.tensor(TARGET), label_smoothing=0.3, reduction="none"), [normal(8, 5)]),
    ("F.cross_entropy[3d,ignore=1]", lambda z: F.cross_entropy(z, TARGET_3D, ignore_index=1, label_smoothing=0.1),
     lambda z: TF.cross_entropy(z, torch.tensor(TARGET_3D), ignore_index=1, label_smoothing=0.1), [normal(2, 4, 3)]),
]


def assert_close_normwise(ours: np.ndarray, theirs: np.ndarray, what: str, rtol: float = 1e-12) -> None:
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != torch's {theirs.shape}"
    error = np.max(np.abs(ours - theirs), initial=0.0)
    scale = np.max(np.abs(theirs), initial=0.0)
    assert error <= rtol * scale + 1e-300, f"{what}: max|ours - torch| = {error:.3e}, max|torch| = {scale:.3e}"


@pytest.mark.parametrize("name, ours, theirs, makers", CASES, ids=[c[0] for c in CASES])
def test_values_and_gradients_match_torch(name, ours, theirs, makers, rng):
    arrays = [make(rng) for make in makers]
    mine = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    torchs = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    out, expected = ours(*mine), theirs(*torchs)
    assert_close_normwise(out.data, expected.detach().numpy(), f"{name} value")
    cotangent = rng.standard_normal(out.shape)
    out.backward(cotangent)
    expected.backward(torch.tensor(cotangent))
    for i, (m, t) in enumerate(zip(mine, torchs)):
        assert_close_normwise(m.grad, t.grad.numpy(), f"{name} grad of input {i}")
