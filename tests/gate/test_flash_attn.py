"""The ``flash-attn`` built-in (flashref/gate/implementations.py) judged on the CPU through a
stand-in ``flash_attn`` module with FlashAttention 2's signatures and semantics
(tests/gate/flash_attn_standin.py): the adapter's mapping (layout, bottom-right causal, windows
shifted for a top-left mask, ALiBi, softcap, kv_lens through the varlen entry, lse) passes the
quick preset, each planted semantic bug fails it, and what FlashAttention cannot express is
unsupported with its reason.
"""

from __future__ import annotations

import dataclasses
import sys

import pytest

import flash_attn_standin
from flashref import gate
from flashref.gate import builtin_implementations, check
from flashref.gate.implementations import flash_attn_mask


@pytest.fixture
def flash_attn(monkeypatch):
    """install(bug=None): the stand-in as ``flash_attn``, and the built-in adapter allowed on the
    CPU (FlashAttention itself runs on CUDA only; the adapter's mapping is what is checked)."""

    def install(bug=None):
        monkeypatch.setitem(sys.modules, "flash_attn", flash_attn_standin.module(bug))
        return dataclasses.replace(builtin_implementations()["flash-attn"], devices=("cpu",))

    return install


def test_the_mapped_standin_passes_the_quick_preset(flash_attn, seed):
    report = check(flash_attn(), "quick", device="cpu", seed=seed)
    judged = report.count("pass")
    assert report.passed and judged >= 15, [r.failure_summary() for r in report.results if r.status != "unsupported"]
    assert {key for key in report.worst_ratios()} >= {("float16", "lse"), ("bfloat16", "dq")}  # lse and backward judged


# Top-left masks FlashAttention can say only as a shifted window (Lq > Lk), with kv_lens through
# the varlen entry, ALiBi per batch row, softcap.
MAPPED = [
    "b1-hq4-hkv2-lq33-lk17-d32-bfloat16-causal_top_left-dense",
    "b2-hq2-hkv2-lq40-lk20-d16-float16-noncausal-dense-win25_3",
    "b2-hq2-hkv1-lq9-lk30-d16-float16-causal_bottom_right-kvlens-alibi_bh",
    "b2-hq2-hkv2-lq17-lk17-d40-bfloat16-causal_top_left-dense-win5_inf-softcap5",
]


def test_top_left_masks_map_to_a_shifted_window(flash_attn, seed):
    report = check(flash_attn(), [gate.case_from_name(n, seed + i) for i, n in enumerate(MAPPED)], device="cpu")
    assert report.passed and report.count("pass") == len(MAPPED), [r.failure_summary() for r in report.results]


@pytest.mark.parametrize("bug, name", [
    ("top_left_causal", "b1-hq4-hkv2-lq113-lk203-d32-bfloat16-causal_bottom_right-dense"),
    ("top_left_causal", "b2-hq2-hkv1-lq9-lk30-d16-float16-causal_bottom_right-kvlens"),
    ("window_sides_swapped", "b2-hq2-hkv2-lq17-lk17-d40-float16-noncausal-dense-win19_0"),
    ("window_sides_swapped", "b2-hq2-hkv2-lq40-lk20-d16-float16-noncausal-dense-win25_3"),
])
def test_a_standin_with_a_planted_mapping_bug_fails(flash_attn, bug, name, seed):
    result = check(flash_attn(bug), [gate.case_from_name(name, seed)], device="cpu").results[0]
    assert result.status == "fail", result.summary()
    assert result.replay.startswith("flashref verify --impl flash-attn --case ")


@pytest.mark.parametrize("name, reason", [
    ("b2-hq2-hkv2-lq17-lk33-d16-float16-causal_top_left-dense", "would need the window (-1, -16)"),
    ("b1-hq2-hkv2-lq33-lk47-d16-bfloat16-causal_top_left-dense-alibi_h", "top-left ALiBi"),
    ("b2-hq2-hkv1-lq20-lk20-d16-float16-causal_top_left-kvlens", "with kv_lens is not expressible"),
    ("b1-hq2-hkv2-lq17-lk17-d16-float32-noncausal-dense", "no float32"),
    ("b1-hq2-hkv2-lq17-lk17-d16-float16-noncausal-dense-sinks", "needs sinks"),
])
def test_what_flash_attn_cannot_express_is_unsupported(flash_attn, name, reason):
    result = check(flash_attn(), [gate.case_from_name(name, 0)], device="cpu").results[0]
    assert result.status == "unsupported" and reason in result.unsupported


@pytest.mark.parametrize("args, expected", [
    ((5, 9, True, "bottom_right", (-1, -1)), (True, (-1, -1))),  # FlashAttention's own alignment
    ((9, 5, True, "top_left", (-1, -1)), (False, (-1, 4))),  # j <= i is j <= i + (Lk - Lq) + 4
    ((9, 5, False, "top_left", (6, 2)), (False, (2, 6))),
    ((7, 7, True, "top_left", (3, -1)), (True, (3, -1))),  # Lq == Lk: the alignments agree
])
def test_the_mask_mapping(args, expected):
    lq, lk, causal, alignment, window = args
    assert flash_attn_mask(lq, lk, causal=causal, causal_alignment=alignment, window_size=window) == expected


def test_without_the_package_or_a_gpu_it_says_why(monkeypatch):
    impl = builtin_implementations()["flash-attn"]
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # import flash_attn raises ImportError
    assert "the flash_attn package is not importable" in impl.available("cuda")
    case = gate.case_from_name("b1-hq2-hkv2-lq17-lk17-d16-float16-noncausal-dense", 0)
    reason = check(impl, [case], device="cpu").results[0].unsupported
    assert reason.startswith("does not run on cpu (the flash_attn package is not importable (ModuleNotFoundError")


def test_verify_exits_3_when_nothing_could_run(monkeypatch, capsys):
    """Unavailable on this device: every case unsupported, one line says so, and the exit status
    is not a pass (a CI job gating on flash-attn without a GPU must not go green)."""
    from flashref.cli import main

    monkeypatch.setitem(sys.modules, "flash_attn", None)
    assert main(["verify", "--impl", "flash-attn", "--case", "b1-hq2-hkv2-lq17-lk17-d16-float16-noncausal-dense",
                 "--device", "cpu"]) == 3
    out = capsys.readouterr().out
    assert "NOTHING RAN" in out and "flash_attn package is not importable" in out
