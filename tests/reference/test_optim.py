"""Optimizers, clipping and schedules follow torch's update rules step for step (float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flashref.autograd import Tensor
from flashref.reference.optim import SGD, Adam, AdamW, WarmupCosine, WarmupInverseSqrt, clip_grad_norm

from transformer_cases import fresh_seed, rel_err

CASES = [
    ("SGD", SGD, torch.optim.SGD, {}),
    ("SGD momentum", SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
    ("SGD nesterov + wd", SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01)),
    ("SGD dampening", SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.5, dampening=0.3)),
    ("Adam", Adam, torch.optim.Adam, {}),
    ("Adam L2 + betas", Adam, torch.optim.Adam, dict(lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)),
    ("Adam amsgrad", Adam, torch.optim.Adam, dict(lr=0.02, amsgrad=True)),
    ("AdamW", AdamW, torch.optim.AdamW, {}),
    ("AdamW strong decay", AdamW, torch.optim.AdamW, dict(lr=0.01, weight_decay=0.3, amsgrad=True)),
]


@pytest.mark.parametrize("name, ours_cls, torch_cls, kwargs", CASES, ids=[c[0] for c in CASES])
def test_matches_torch_step_by_step(name, ours_cls, torch_cls, kwargs):
    rng = np.random.default_rng(fresh_seed(name))
    shapes = [(3, 4), (5,), (2, 1, 3)]
    init = [rng.standard_normal(s) for s in shapes]
    ours = [Tensor(a.copy(), requires_grad=True) for a in init]
    theirs = [torch.tensor(a.copy(), requires_grad=True) for a in init]
    opt, topt = ours_cls(ours, **kwargs), torch_cls(theirs, **kwargs)
    for step in range(7):
        grads = [rng.standard_normal(s) * 10.0 ** rng.uniform(-3, 1) for s in shapes]
        if step == 3:
            grads[1] = None  # a parameter without a gradient this step is skipped, as in torch
        for p, tp, g in zip(ours, theirs, grads):
            p.grad = None if g is None else g.copy()
            tp.grad = None if g is None else torch.tensor(g.copy())
        opt.step()
        topt.step()
        for p, tp in zip(ours, theirs):
            assert rel_err(p.data, tp.detach().numpy()) <= 1e-13, f"step {step}"


def test_checker_notices_a_wrong_rule():
    """Adam without bias correction drifts from torch: the comparison above can fail."""
    p, tp = Tensor(np.ones(3), requires_grad=True), torch.ones(3, dtype=torch.float64, requires_grad=True)
    opt, topt = SGD([p], lr=1e-3, momentum=0.9), torch.optim.Adam([tp])
    p.grad, tp.grad = np.full(3, 0.5), torch.full((3,), 0.5, dtype=torch.float64)
    opt.step()
    topt.step()
    assert rel_err(p.data, tp.detach().numpy()) > 1e-13


def test_state_dict_round_trip_resumes_exactly():
    rng = np.random.default_rng(fresh_seed("optimizer resume"))
    params = [Tensor(rng.standard_normal((4, 3)), requires_grad=True)]
    grads = [rng.standard_normal((4, 3)) for _ in range(6)]
    straight = AdamW([Tensor(params[0].data.copy(), requires_grad=True)], lr=0.01)
    for g in grads:
        straight.params[0].grad = g.copy()
        straight.step()
    first = AdamW(params, lr=0.01)
    for g in grads[:3]:
        params[0].grad = g.copy()
        first.step()
    saved = first.state_dict()
    resumed_params = [Tensor(params[0].data.copy(), requires_grad=True)]
    resumed = AdamW(resumed_params, lr=0.5)  # lr comes back from the state
    resumed.load_state_dict(saved)
    for g in grads[3:]:
        resumed_params[0].grad = g.copy()
        resumed.step()
    assert np.array_equal(resumed_params[0].data, straight.params[0].data)
    assert resumed.step_count == 6 and resumed.lr == 0.01


def test_load_state_dict_rejects_mismatch_and_keeps_state():
    p = Tensor(np.ones((2, 2)), requires_grad=True)
    opt = Adam([p])
    p.grad = np.ones((2, 2))
    opt.step()
    before = opt.state_dict()
    bad = opt.state_dict()
    bad["state"][0]["exp_avg"] = np.zeros((3, 2))
    with pytest.raises(ValueError, match="expected shape"):
        opt.load_state_dict(bad)
    with pytest.raises(ValueError, match="expected type Adam"):
        opt.load_state_dict(SGD([p]).state_dict())
    assert np.array_equal(opt.state[0]["exp_avg"], before["state"][0]["exp_avg"])


@pytest.mark.parametrize("max_norm", [0.1, 1.0, 1e3])
def test_clip_grad_norm_matches_torch(max_norm):
    rng = np.random.default_rng(fresh_seed("clip"))
    grads = [rng.standard_normal(s) for s in [(3, 3), (4,), (1,)]]
    ours = [Tensor(np.zeros_like(g), requires_grad=True) for g in grads]
    theirs = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    for p, tp, g in zip(ours, theirs, grads):
        p.grad, tp.grad = g.copy(), torch.tensor(g)
    total = clip_grad_norm(ours, max_norm)
    torch_total = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    assert math.isclose(total, float(torch_total), rel_tol=1e-14)
    for p, tp in zip(ours, theirs):
        assert rel_err(p.grad, tp.grad.numpy()) <= 1e-14


@pytest.mark.parametrize("schedule, step, expected", [
    (WarmupInverseSqrt(1.0, 100), 1, 0.01),
    (WarmupInverseSqrt(1.0, 100), 100, 1.0),
    (WarmupInverseSqrt(1.0, 100), 400, 0.5),
    (WarmupCosine(1.0, 10, 110, min_lr=0.1), 10, 1.0),
    (WarmupCosine(1.0, 10, 110, min_lr=0.1), 60, 0.55),
    (WarmupCosine(1.0, 10, 110, min_lr=0.1), 110, 0.1),
    (WarmupCosine(1.0, 10, 110, min_lr=0.1), 500, 0.1),
])
def test_schedules(schedule, step, expected):
    assert math.isclose(schedule(step), expected, rel_tol=1e-12)


@pytest.mark.parametrize("make, message", [
    (lambda p: Adam(p, lr=-1.0), "lr"),
    (lambda p: Adam(p, betas=(0.9, 1.0)), "betas"),
    (lambda p: SGD(p, momentum=0.0, nesterov=True), "nesterov"),
    (lambda p: Adam([], lr=1.0), "at least one"),
    (lambda p: WarmupInverseSqrt(1.0, 0), "warmup_steps"),
    (lambda p: WarmupCosine(1.0, 10, 5), "total_steps"),
])
def test_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make([Tensor(np.ones(2), requires_grad=True)])
