"""Optimizers, gradient clipping and learning-rate schedules, with torch's update rules.

An optimizer holds a list of parameters: objects with `.data` (ndarray, updated in place)
and `.grad` (ndarray or None; None means "no gradient this step", the parameter is
skipped, as in torch). Each rule below is written exactly as `torch.optim` computes it, in
the same order, so that a float64 run agrees with torch step for step.

    SGD (momentum mu, dampening tau, weight decay wd, nesterov):
        g <- g + wd * p
        b <- g                          on the first step
        b <- mu * b + (1 - tau) * g     afterwards
        g <- g + mu * b  (nesterov)  or  g <- b
        p <- p - lr * g

    Adam (betas b1, b2; L2 weight decay folded into the gradient):
        g <- g + wd * p
        m <- b1 m + (1 - b1) g ;  v <- b2 v + (1 - b2) g^2 ;  t <- t + 1
        v_max <- max(v_max, v)          (amsgrad only; v_max replaces v below)
        p <- p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    AdamW: the same with decoupled weight decay, applied first: p <- p * (1 - lr * wd),
        and g left alone.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np


def _as_param_list(params) -> list:
    params = list(params)
    if not params:
        raise ValueError("params: expected at least one parameter")
    for i, p in enumerate(params):
        if not isinstance(getattr(p, "data", None), np.ndarray):
            raise TypeError(f"params[{i}]: expected an object with an ndarray .data, got {type(p).__name__}")
    return params


class Optimizer:
    """Base: a parameter list, a learning rate that schedules may change, per-parameter state.

    `state[i]` is a dict of ndarrays for parameter i; `step_count` counts `step()` calls.
    `state_dict()`/`load_state_dict()` round-trip everything needed to resume exactly.
    """

    state_names: tuple[str, ...] = ()

    def __init__(self, params: Iterable, lr: float):
        if not lr >= 0.0:
            raise ValueError(f"lr: expected a non-negative learning rate, got {lr}")
        self.params = _as_param_list(params)
        self.lr = float(lr)
        self.step_count = 0
        self.state: list[dict[str, np.ndarray]] = [{} for _ in self.params]

    def zero_grad(self) -> None:
        """Set every gradient to None (torch's default, set_to_none=True)."""
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        self.step_count += 1
        for i, p in enumerate(self.params):
            if p.grad is not None:
                self._update(i, p)

    def _update(self, i: int, p) -> None:
        raise NotImplementedError

    def hyperparameters(self) -> dict:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """{'type', 'hyperparameters', 'step_count', 'state': [{name: ndarray}] per parameter}."""
        return {
            "type": type(self).__name__,
            "hyperparameters": self.hyperparameters(),
            "step_count": self.step_count,
            "state": [{k: v.copy() for k, v in s.items()} for s in self.state],
        }

    def load_state_dict(self, state: dict) -> None:
        """Validate everything, then replace the state; on error nothing changes."""
        if state.get("type") != type(self).__name__:
            raise ValueError(f"optimizer state: expected type {type(self).__name__}, got {state.get('type')!r}")
        per_param = state.get("state")
        if not isinstance(per_param, (list, tuple)) or len(per_param) != len(self.params):
            n = len(per_param) if isinstance(per_param, (list, tuple)) else "no"
            raise ValueError(f"optimizer state: expected state for {len(self.params)} parameters, got {n}")
        new_state = []
        for i, (p, s) in enumerate(zip(self.params, per_param)):
            unknown = set(s) - set(self.state_names)
            if unknown:
                raise ValueError(f"optimizer state[{i}]: unexpected entries {sorted(unknown)}")
            entry = {}
            for name, value in s.items():
                value = np.asarray(value)
                expected = () if name == "step" else p.data.shape
                if value.shape != expected:
                    raise ValueError(
                        f"optimizer state[{i}].{name}: expected shape {expected}, got {value.shape}"
                    )
                entry[name] = value.astype(p.data.dtype, copy=True)
            new_state.append(entry)
        step_count = int(state.get("step_count", 0))
        hyper = dict(state.get("hyperparameters", {}))
        # Commit only now that everything has been checked.
        self.state = new_state
        self.step_count = step_count
        for name, value in hyper.items():
            if name == "betas":
                value = tuple(value)
            setattr(self, name, value)


class SGD(Optimizer):
    """torch.optim.SGD: lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False."""

    state_names = ("momentum_buffer",)

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params, lr)
        if momentum < 0.0:
            raise ValueError(f"momentum: expected >= 0, got {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"weight_decay: expected >= 0, got {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov: needs momentum > 0 and dampening = 0")
        self.momentum, self.dampening = float(momentum), float(dampening)
        self.weight_decay, self.nesterov = float(weight_decay), bool(nesterov)

    def hyperparameters(self) -> dict:
        return {"lr": self.lr, "momentum": self.momentum, "dampening": self.dampening,
                "weight_decay": self.weight_decay, "nesterov": self.nesterov}

    def _update(self, i, p) -> None:
        g = p.grad
        if self.weight_decay:
            g = g + self.weight_decay * p.data
        if self.momentum:
            state = self.state[i]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = np.array(g, copy=True)
            else:
                buf = state["momentum_buffer"]
                buf *= self.momentum
                buf += (1.0 - self.dampening) * g
            buf = state["momentum_buffer"]
            g = g + self.momentum * buf if self.nesterov else buf
        p.data -= self.lr * g


class Adam(Optimizer):
    """torch.optim.Adam: lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0 (L2), amsgrad=False."""

    state_names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step")
    decoupled_weight_decay = False

    def __init__(self, params, lr: float = 1e-3, betas: Sequence[float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False):
        super().__init__(params, lr)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas: expected two numbers in [0, 1), got {betas}")
        if eps < 0.0:
            raise ValueError(f"eps: expected >= 0, got {eps}")
        if weight_decay < 0.0:
            raise ValueError(f"weight_decay: expected >= 0, got {weight_decay}")
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps, self.weight_decay, self.amsgrad = float(eps), float(weight_decay), bool(amsgrad)

    def hyperparameters(self) -> dict:
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay, "amsgrad": self.amsgrad}

    def _update(self, i, p) -> None:
        beta1, beta2 = self.betas
        state = self.state[i]
        if "step" not in state:
            # Per-parameter step (like torch): a parameter that first gets a gradient late
            # starts its bias correction at t = 1.
            state["step"] = np.zeros((), dtype=p.data.dtype)
            state["exp_avg"] = np.zeros_like(p.data)
            state["exp_avg_sq"] = np.zeros_like(p.data)
            if self.amsgrad:
                state["max_exp_avg_sq"] = np.zeros_like(p.data)
        g = p.grad
        if self.weight_decay:
            if self.decoupled_weight_decay:
                p.data *= 1.0 - self.lr * self.weight_decay
            else:
                g = g + self.weight_decay * p.data
        state["step"] += 1
        t = float(state["step"])
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m += (1.0 - beta1) * (g - m)  # torch's lerp form of b1 m + (1 - b1) g
        v *= beta2
        v += (1.0 - beta2) * g * g
        if self.amsgrad:
            np.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
            v = state["max_exp_avg_sq"]
        bias_correction1 = 1.0 - beta1**t
        bias_correction2_sqrt = math.sqrt(1.0 - beta2**t)
        denom = np.sqrt(v) / bias_correction2_sqrt + self.eps
        p.data -= (self.lr / bias_correction1) * (m / denom)


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay; weight_decay defaults to 1e-2."""

    decoupled_weight_decay = True

    def __init__(self, params, lr: float = 1e-3, betas: Sequence[float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


def clip_grad_norm(params, max_norm: float, eps: float = 1e-6) -> float:
    """Scale all gradients together so their global L2 norm is at most max_norm.

    total = sqrt(sum_p ||g_p||^2);  g_p <- g_p * min(1, max_norm / (total + eps)).
    Returns the norm before clipping, as torch.nn.utils.clip_grad_norm_ does.
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm: expected a positive number, got {max_norm}")
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    total = math.sqrt(sum(float(np.vdot(g, g)) for g in grads))
    coef = max_norm / (total + eps)
    if coef < 1.0:
        for g in grads:
            g *= coef
    return total


class WarmupInverseSqrt:
    """Linear warmup to peak_lr over warmup_steps, then peak_lr * sqrt(warmup_steps / step).

    `step` counts from 1 (the learning rate used by the first optimizer step). This is the
    "Attention Is All You Need" schedule with the d_model factor folded into peak_lr.
    """

    def __init__(self, peak_lr: float, warmup_steps: int):
        if peak_lr <= 0 or warmup_steps < 1:
            raise ValueError(f"peak_lr/warmup_steps: expected > 0 and >= 1, got {peak_lr}, {warmup_steps}")
        self.peak_lr, self.warmup_steps = float(peak_lr), int(warmup_steps)

    def __call__(self, step: int) -> float:
        if step < 1:
            raise ValueError(f"step: expected >= 1, got {step}")
        if step <= self.warmup_steps:
            return self.peak_lr * step / self.warmup_steps
        return self.peak_lr * math.sqrt(self.warmup_steps / step)


class WarmupCosine:
    """Linear warmup to peak_lr, then a half cosine down to min_lr at total_steps (held after)."""

    def __init__(self, peak_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0):
        if peak_lr <= 0 or warmup_steps < 1 or total_steps <= warmup_steps or min_lr < 0:
            raise ValueError(
                "peak_lr/warmup_steps/total_steps/min_lr: expected peak_lr > 0, "
                f"1 <= warmup_steps < total_steps, min_lr >= 0; got {peak_lr}, {warmup_steps}, {total_steps}, {min_lr}"
            )
        self.peak_lr, self.warmup_steps = float(peak_lr), int(warmup_steps)
        self.total_steps, self.min_lr = int(total_steps), float(min_lr)

    def __call__(self, step: int) -> float:
        if step < 1:
            raise ValueError(f"step: expected >= 1, got {step}")
        if step <= self.warmup_steps:
            return self.peak_lr * step / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.min_lr + 0.5 * (self.peak_lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))
