"""Checkpoints: weights + model config + optimizer state in one safetensors file.

safetensors holds raw arrays and a string-to-string header: loading one cannot execute
code. Layout:

    tensors   "model/<state_dict key>"             every model parameter
              "optimizer/<i>/<state name>"         per-parameter optimizer state (i = parameter index)
    metadata  format = "flashref.seq2seq", format_version = "1",
              model_config (JSON of Seq2SeqConfig), optimizer (JSON: type, hyperparameters,
              step_count; absent without an optimizer), extra (JSON, free-form: task config,
              training summary), sha256 (hex digest of every tensor's name, dtype, shape, bytes)

safetensors itself rejects a truncated file or a broken header; the sha256 catches
flipped bytes inside tensor data. Loading builds everything in temporaries and checks it
before touching a caller's model or optimizer, so a bad file leaves them as they were.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flashref.reference import optim
from flashref.reference.seq2seq import Seq2SeqConfig, Seq2SeqModel

FORMAT = "flashref.seq2seq"
FORMAT_VERSION = "1"
OPTIMIZERS = {"SGD": optim.SGD, "Adam": optim.Adam, "AdamW": optim.AdamW}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded: missing, truncated, corrupted or mismatched."""


@dataclass
class Checkpoint:
    config: Seq2SeqConfig
    model: Seq2SeqModel
    optimizer_state: dict | None
    extra: dict = field(default_factory=dict)

    def make_optimizer(self, model: Seq2SeqModel | None = None) -> optim.Optimizer:
        """A new optimizer of the saved type over `model` (default: self.model), state restored."""
        if self.optimizer_state is None:
            raise CheckpointError("checkpoint: holds no optimizer state")
        model = model or self.model
        cls = OPTIMIZERS[self.optimizer_state["type"]]
        optimizer = cls(model.parameters(), **_constructor_args(self.optimizer_state["hyperparameters"]))
        optimizer.load_state_dict(self.optimizer_state)
        return optimizer


def _constructor_args(hyper: dict) -> dict:
    return {k: tuple(v) if k == "betas" else v for k, v in hyper.items()}


def _digest(tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def save_checkpoint(path, model: Seq2SeqModel, optimizer: optim.Optimizer | None = None,
                    extra: dict | None = None) -> Path:
    """Write model (+ optimizer) to `path` atomically (a temporary file, then a rename)."""
    from safetensors.numpy import save_file

    path = Path(path)
    tensors = {f"model/{k}": np.ascontiguousarray(v) for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": json.dumps(model.config.to_dict()),
        "extra": json.dumps(extra or {}),
    }
    if optimizer is not None:
        state = optimizer.state_dict()
        for i, per_param in enumerate(state["state"]):
            for name, value in per_param.items():
                tensors[f"optimizer/{i}/{name}"] = np.ascontiguousarray(value)
        metadata["optimizer"] = json.dumps({"type": state["type"], "hyperparameters": state["hyperparameters"],
                                            "step_count": state["step_count"], "num_params": len(state["state"])})
    metadata["sha256"] = _digest(tensors)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def _read(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"checkpoint: no such file {str(path)!r}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as err:  # noqa: BLE001 -- safetensors raises its own error types
        raise CheckpointError(f"checkpoint {str(path)!r}: not a readable safetensors file "
                              f"(truncated or corrupted?): {err}") from err
    return tensors, metadata


def _json_field(metadata: dict, name: str, path: Path):
    try:
        return json.loads(metadata[name])
    except (KeyError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r}: metadata field {name!r} missing or not JSON") from err


def load_checkpoint(path, model: Seq2SeqModel | None = None,
                    optimizer: optim.Optimizer | None = None) -> Checkpoint:
    """Read and verify `path`; return a Checkpoint with a freshly built model.

    If `model` (and `optimizer`) are given, their configs must match the file; they are
    updated only after the whole file has loaded into temporaries without error.
    """
    path = Path(path)
    tensors, metadata = _read(path)
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r}: format {metadata.get('format')!r}, expected {FORMAT!r}")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {str(path)!r}: format_version {metadata.get('format_version')!r} "
                              f"is not supported (this flashref reads version {FORMAT_VERSION})")
    if metadata.get("sha256") != _digest(tensors):
        raise CheckpointError(f"checkpoint {str(path)!r}: checksum mismatch, the tensor data is corrupted")
    try:
        config = Seq2SeqConfig.from_dict(_json_field(metadata, "model_config", path))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r}: invalid model_config: {err}") from err
    extra = _json_field(metadata, "extra", path)

    fresh = Seq2SeqModel(config, rng=np.random.default_rng(0))
    weights = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    try:
        fresh.load_state_dict(weights)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r}: weights do not match the config: {err}") from err

    optimizer_state = None
    if "optimizer" in metadata:
        info = _json_field(metadata, "optimizer", path)
        if info.get("type") not in OPTIMIZERS:
            raise CheckpointError(f"checkpoint {str(path)!r}: unknown optimizer type {info.get('type')!r}")
        per_param: list[dict] = [{} for _ in range(int(info.get("num_params", 0)))]
        for key, value in tensors.items():
            if key.startswith("optimizer/"):
                _, index, name = key.split("/", 2)
                if not index.isdigit() or int(index) >= len(per_param):
                    raise CheckpointError(f"checkpoint {str(path)!r}: optimizer tensor {key!r} has no parameter")
                # safetensors stores a 0-d array as shape (1,): the step counter comes back 0-d
                per_param[int(index)][name] = value.reshape(()) if name == "step" and value.size == 1 else value
        optimizer_state = {"type": info["type"], "hyperparameters": info["hyperparameters"],
                           "step_count": info["step_count"], "state": per_param}
    checkpoint = Checkpoint(config=config, model=fresh, optimizer_state=optimizer_state, extra=extra)
    try:
        staged_optimizer = checkpoint.make_optimizer() if optimizer_state is not None else None
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r}: optimizer state does not match the model: {err}") from err

    if model is not None:
        if model.config != config:
            raise CheckpointError(f"checkpoint {str(path)!r}: its model config {config} differs from the "
                                  f"model's {model.config}")
        if optimizer is not None:
            if staged_optimizer is None:
                raise CheckpointError(f"checkpoint {str(path)!r}: holds no optimizer state to restore")
            if type(optimizer) is not type(staged_optimizer) or len(optimizer.params) != len(staged_optimizer.params):
                raise CheckpointError(f"checkpoint {str(path)!r}: optimizer {optimizer_state['type']} does not "
                                      f"match the given {type(optimizer).__name__}")
        # Everything is verified: commit. These cannot fail now (same config, same shapes).
        model.load_state_dict(fresh.state_dict())
        if optimizer is not None:
            optimizer.load_state_dict(staged_optimizer.state_dict())
        checkpoint.model = model
    elif optimizer is not None:
        raise ValueError("optimizer: pass the model it optimizes too")
    return checkpoint
