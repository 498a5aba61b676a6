"""pytest plugin (entry point ``pytest11``): the ``attention_gate`` fixture.

    def test_my_attention(attention_gate):
        attention_gate("mypkg.attn:my_attention", "quick", features="causal_top_left,gqa")

Imports nothing heavy until the fixture is used. Kernels judged on the CPU need the Triton
interpreter switched on before triton is imported (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import pytest


@pytest.fixture
def attention_gate():
    """``flashref.testing.assert_attention_matches_oracle``, features given as "a,b" or a set."""
    from flashref.gate import parse_features
    from flashref.testing import assert_attention_matches_oracle

    def gate(impl, cases="quick", *, features=None, **kw):
        if isinstance(features, str):
            features = parse_features(features)
        return assert_attention_matches_oracle(impl, cases, features=features, **kw)

    return gate
