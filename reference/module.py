"""`Module`: named parameters, submodules, state dicts and train/eval mode, torch-style.

A module's parameters are the autograd `Tensor`s with ``requires_grad=True`` assigned as
attributes; its submodules are the `Module`s assigned as attributes (or held in a
`ModuleList`). Names are dotted paths exactly like torch's `state_dict()` keys
(``encoder.layers.0.self_attn.in_proj_weight``), so a torch module's state dict loads here
key for key.
"""

from __future__ import annotations

from typing import Iterator, Mapping

import numpy as np

from flashref.autograd import Tensor


def to_numpy(value, name: str = "value") -> np.ndarray:
    """An ndarray from an ndarray, an autograd Tensor, or a torch tensor (duck-typed: the
    oracle never imports torch). Torch tensors are detached and copied to host memory."""
    if isinstance(value, Tensor):
        return value.data
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch.Tensor
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except Exception as err:  # noqa: BLE001 -- re-raised with the argument's name
        raise TypeError(f"{name}: expected an array or tensor, got {type(value).__name__}") from err


class Module:
    """Base class: register parameters/submodules by attribute assignment, in order."""

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)

    def __setattr__(self, name: str, value) -> None:
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}: call Module.__init__() before assigning attributes")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Tensor) and value.requires_grad:
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError

    # --- traversal ------------------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator["Module"]:
        for _, module in self.named_modules():
            yield module

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
        """(dotted name, Tensor) for every parameter, each shared tensor once."""
        seen: set[int] = set()
        for module_name, module in self.named_modules(prefix):
            for name, param in module._parameters.items():
                if id(param) in seen:
                    continue
                seen.add(id(param))
                yield (f"{module_name}.{name}" if module_name else name), param

    def parameters(self) -> list[Tensor]:
        return [p for _, p in self.named_parameters()]

    def num_parameters(self) -> int:
        return int(sum(p.data.size for p in self.parameters()))

    # --- mode and gradients -----------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        for module in self.modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    # --- state dicts ------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """{dotted name: a copy of the parameter's ndarray}."""
        return {name: p.data.copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state: Mapping, strict: bool = True) -> None:
        """Copy values into the parameters by name; values may be ndarrays, Tensors or torch
        tensors. Every key, shape and value is checked before anything is written, so an
        error leaves the module untouched. strict=True: missing and unexpected keys are
        errors (buffers in a torch state dict that this module does not have are unexpected).
        """
        params = dict(self.named_parameters())
        missing = [k for k in params if k not in state]
        unexpected = [k for k in state if k not in params]
        if strict and (missing or unexpected):
            raise ValueError(
                f"state_dict: keys do not match {type(self).__name__}; "
                f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
                f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}"
            )
        staged: dict[str, np.ndarray] = {}
        for name, param in params.items():
            if name not in state:
                continue
            value = to_numpy(state[name], f"state_dict[{name!r}]")
            if value.shape != param.data.shape:
                raise ValueError(
                    f"state_dict[{name!r}]: expected shape {param.data.shape}, got {value.shape}"
                )
            if not np.issubdtype(value.dtype, np.floating):
                raise TypeError(f"state_dict[{name!r}]: expected a floating-point array, got {value.dtype}")
            if not np.all(np.isfinite(value)):
                raise ValueError(f"state_dict[{name!r}]: contains NaN or inf")
            staged[name] = value.astype(param.data.dtype, copy=True)
        for name, value in staged.items():  # commit: nothing above has touched the module
            params[name].data[...] = value


class ModuleList(Module):
    """An indexable list of submodules named "0", "1", ... (torch's ModuleList keys)."""

    def __init__(self, modules=()) -> None:
        super().__init__()
        for module in modules:
            self.append(module)

    def append(self, module: Module) -> None:
        setattr(self, str(len(self._modules)), module)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __getitem__(self, index: int) -> Module:
        return list(self._modules.values())[index]
