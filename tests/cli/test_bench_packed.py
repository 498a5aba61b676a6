"""flashref bench --sweep varlen|decode: on the CPU the command says a GPU is needed; the sweep's
pure parts (length mix, byte and FLOP counts, tables) are checked here."""

import pytest
import torch

from flashref.cli import main
from flashref.bench.packed import Point, decode_bytes, markdown, useful_flops, varlen_lengths


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU message")
@pytest.mark.parametrize("sweep", ["varlen", "decode"])
def test_without_a_gpu_the_packed_sweeps_say_so(sweep, capsys):
    assert main(["bench", "--sweep", sweep]) == 1
    assert "No CUDA GPU" in capsys.readouterr().out


def test_length_mix_fills_the_token_budget():
    for seed in range(5):
        lengths = varlen_lengths(seed=seed)
        assert sum(lengths) == 16384 and max(lengths) <= 4096 and len(set(lengths)) > 3
        assert all(n >= 1 for n in lengths)


def test_counts():
    # One sequence of 1k tokens, 8 kv heads of 128 in bfloat16: K and V, 2 bytes each.
    assert decode_bytes([1024], 8, 128) == 2 * 1024 * 8 * 128 * 2
    # Padding earns nothing: the useful FLOPs of (1, 3) are those of each sequence alone.
    assert useful_flops([1, 3], [1, 3], 2, 64, False, "fwd") == 4 * 2 * 64 * (1 + 9)


def test_markdown_has_a_row_per_config_and_the_copy_bandwidth():
    points = [Point("decode", {"batch": 1, "context": 1024}, "flashref_paged", 0.01, 2000.0, "GB/s"),
              Point("decode", {"batch": 1, "context": 1024}, "sdpa_contiguous", None, None, "GB/s", "out of memory")]
    text = markdown(points, copy_gbs=3900.0)
    assert "3900 GB/s" in text and "2000 (0.010 ms)" in text and "out of memory" in text
