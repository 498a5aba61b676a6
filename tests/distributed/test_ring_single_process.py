"""A ring of one process (an in-process gloo group, no spawn): ring attention is exactly the
single-device kernel, forward and backward, bit for bit: the same kernel calls, a merge into
an empty (-inf) accumulator and a float32 dK/dV accumulator that starts at zero are exact."""

import datetime

import pytest
import torch
import torch.distributed as dist

from flashref.distributed import ring_attention
from flashref.gate.ring import _free_port
from flashref.kernels import flash_attention


@pytest.fixture
def group_of_one():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=60))
    try:
        yield dist.new_group([0])
    finally:
        dist.destroy_process_group()


@pytest.mark.interp
@pytest.mark.parametrize("causal, dtype, layout, kv_lens, softcap", [
    (True, torch.bfloat16, "zigzag", None, 0.0),
    (False, torch.float16, "contiguous", None, 0.0),
    (True, torch.float16, "zigzag", [11, 0], 4.0),  # a row with no key: out 0, lse -inf, zero gradients
    (True, torch.float32, "contiguous", [13, 5], 3.0),  # + window and ALiBi: one piece with offset 0
])
def test_a_ring_of_one_is_the_kernel_bit_for_bit(group_of_one, causal, dtype, layout, kv_lens, softcap):
    batch = 1 if kv_lens is None else len(kv_lens)
    q = torch.randn(batch, 4, 18, 16).to(dtype).requires_grad_()
    k, v = (torch.randn(batch, 2, 18, 16).to(dtype).requires_grad_() for _ in range(2))
    dout = torch.randn(batch, 4, 18, 16).to(dtype)
    variants = dict(kv_lens=None if kv_lens is None else torch.tensor(kv_lens), softcap=softcap)
    if dtype == torch.float32:
        variants.update(window_size=(4, -1), alibi_slopes=torch.rand(4))
    out, lse = ring_attention(q, k, v, group=group_of_one, causal=causal, layout=layout, return_lse=True, **variants)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    ref_out, ref_lse = flash_attention(q, k, v, causal=causal, return_lse=True, **variants)
    ref_grads = torch.autograd.grad(ref_out, (q, k, v), dout)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)
    for name, g, r in zip("qkv", grads, ref_grads):
        assert torch.equal(g, r), f"d{name} differs"
