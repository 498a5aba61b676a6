"""Checkpoints round-trip exactly; bad files give a clear CheckpointError and change nothing."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from flashref.workflow.checkpoint import FORMAT_VERSION, CheckpointError, load_checkpoint, save_checkpoint
from flashref.reference.optim import SGD, Adam, AdamW
from flashref.reference.seq2seq import Seq2SeqConfig, Seq2SeqModel

from transformer_cases import fresh_seed

CONFIG = Seq2SeqConfig(d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=6,
                       max_len=12)


def trained_pair(seed: int, optimizer_cls=AdamW, config=CONFIG):
    """A model and optimizer after two steps, so the optimizer state is not trivial."""
    model = Seq2SeqModel(config, rng=np.random.default_rng(seed))
    opt = optimizer_cls(model.parameters(), lr=1e-2)
    src, tgt = np.array([[4, 5, 2, 0], [6, 7, 8, 2]]), np.array([[1, 5, 4, 2, 0], [1, 8, 7, 6, 2]])
    for _ in range(2):
        loss, _ = model.loss(src, tgt[:, :-1], tgt[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, opt


@pytest.mark.parametrize("optimizer_cls", [Adam, AdamW, SGD])
@pytest.mark.parametrize("tie", [False, True])
def test_round_trip_is_exact(tmp_path, optimizer_cls, tie):
    model, opt = trained_pair(fresh_seed("checkpoint round trip"), optimizer_cls,
                              Seq2SeqConfig(**(CONFIG.to_dict() | {"tie_embeddings": tie})))
    path = save_checkpoint(tmp_path / "m.safetensors", model, opt, extra={"note": "x"})
    ckpt = load_checkpoint(path)
    assert ckpt.config == model.config and ckpt.extra == {"note": "x"}
    original, loaded = model.state_dict(), ckpt.model.state_dict()
    assert original.keys() == loaded.keys()
    assert all(np.array_equal(original[k], loaded[k]) for k in original)
    restored = ckpt.make_optimizer()
    assert type(restored) is optimizer_cls and restored.step_count == opt.step_count
    for ours, theirs in zip(opt.state, restored.state):
        assert ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours)


def test_load_into_existing_model_and_optimizer(tmp_path):
    model, opt = trained_pair(1)
    path = save_checkpoint(tmp_path / "m.safetensors", model, opt)
    other, other_opt = trained_pair(2)
    load_checkpoint(path, model=other, optimizer=other_opt)
    assert all(np.array_equal(v, other.state_dict()[k]) for k, v in model.state_dict().items())
    assert np.array_equal(opt.state[0]["exp_avg"], other_opt.state[0]["exp_avg"])


def corrupt_truncate(data: bytes) -> bytes:
    return data[: len(data) - 100]


def corrupt_flip_a_weight_byte(data: bytes) -> bytes:
    out = bytearray(data)
    out[-3] ^= 0x5A  # inside the last tensor's data: only the checksum can notice
    return bytes(out)


def corrupt_header(data: bytes) -> bytes:
    return data[:8] + b"{not json" + data[17:]


def corrupt_version(data: bytes) -> bytes:
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"]["format_version"] = "99"
    raw = json.dumps(header).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    return struct.pack("<Q", len(raw)) + raw + data[8 + n :]


@pytest.mark.parametrize("corrupt, message", [
    (corrupt_truncate, "not a readable safetensors"),
    (corrupt_flip_a_weight_byte, "checksum"),
    (corrupt_header, "not a readable safetensors"),
    (corrupt_version, "format_version '99'"),
    (lambda data: b"", "not a readable safetensors"),
])
def test_bad_files_are_clear_errors_and_leave_the_model_untouched(tmp_path, corrupt, message):
    model, opt = trained_pair(3)
    path = save_checkpoint(tmp_path / "m.safetensors", model, opt)
    path.write_bytes(corrupt(path.read_bytes()))
    target, target_opt = trained_pair(4)
    before, before_opt = target.state_dict(), target_opt.state_dict()
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path, model=target, optimizer=target_opt)
    assert all(np.array_equal(before[k], v) for k, v in target.state_dict().items())
    assert target_opt.step_count == before_opt["step_count"]
    assert np.array_equal(target_opt.state[0]["exp_avg"], before_opt["state"][0]["exp_avg"])


def test_mismatched_config_or_optimizer_is_rejected_before_any_write(tmp_path):
    model, opt = trained_pair(5)
    path = save_checkpoint(tmp_path / "m.safetensors", model, opt)
    bigger = Seq2SeqModel(Seq2SeqConfig(**(CONFIG.to_dict() | {"d_model": 12})))
    with pytest.raises(CheckpointError, match="config"):
        load_checkpoint(path, model=bigger)
    same, _ = trained_pair(6)
    before = same.state_dict()
    sgd = SGD(same.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(CheckpointError, match="optimizer"):
        load_checkpoint(path, model=same, optimizer=sgd)
    assert all(np.array_equal(before[k], v) for k, v in same.state_dict().items())


def test_missing_file_and_foreign_format(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "absent.safetensors")
    from safetensors.numpy import save_file

    save_file({"w": np.ones(2)}, str(tmp_path / "other.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="format 'pt'"):
        load_checkpoint(tmp_path / "other.safetensors")


def test_format_version_is_recorded(tmp_path):
    from safetensors import safe_open

    model, _ = trained_pair(7)
    path = save_checkpoint(tmp_path / "m.safetensors", model)
    with safe_open(str(path), framework="numpy") as f:
        assert f.metadata()["format_version"] == FORMAT_VERSION
    assert load_checkpoint(path).optimizer_state is None
