r"""An audit trace of attention: every intermediate, labelled, printable at fixed precision.

``explain_attention`` computes attention for one sequence the slow, visible way and keeps
each step, so that a person can check the arithmetic by hand (the seed article's worked
example is a test: tests/reference/test_explain.py, docs/seed_worked_example.md).

Single head (q: (Lq, D), k: (Lk, D), v: (Lk, Dv)):

    1. QK^T                          (Lq, Lk)
    2. scaled scores  S = scale * QK^T (+ bias)
    3. mask           1 = the query sees the key
    4. masked scores  S with -inf at hidden keys
    5. softmax weights P, row by row (each row sums to 1; an empty row is all 0)
    6. output         O = P V        (Lq, Dv)

Each variant that is on adds its own labelled step(s), in the order of the score pipeline
(docs/attention.md): ``softcapped_scores`` (c * tanh(S / c), then + bias) after step 2;
``alibi_bias`` (-slope * |i + shift - j|) and ``alibi_scores`` before the mask (the window
shows in the mask); ``sink_weights`` (exp(sink - lse) per row, the weight the sink takes:
the rows of P then sum to 1 minus it) after the weights; ``dropout_keep`` (1 = kept, the
kernels' Philox draw for ``dropout_seed``) and ``dropped_weights`` (P * keep / (1 - p))
before the output, which is then ``dropped_weights V``.

Multi-head, with projection weights in the paper's layout (``x @ W``; d = d_model):

    q: (Lq, d), k, v: (Lk, d), w_q, w_k: (d, H * Dh), w_v: (d, H * Dv), w_o: (H * Dv, d_out)
    head h: Q_h = q W_q[:, h*Dh:(h+1)*Dh], likewise K_h, V_h, then steps 1-6 above
    concat = [O_1 ... O_H]           (Lq, H * Dv)
    output = concat W_o              (Lq, d_out)

The numbers are the oracle's: the output of every head equals `attention_forward`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .attention import attention_forward, probabilities_from_lse
from .attention_inputs import as_float64, check_attention_inputs


@dataclass(frozen=True)
class TraceStep:
    """One labelled intermediate. ``key`` is stable for programs ("head0.weights")."""

    key: str
    title: str
    value: np.ndarray


@dataclass
class AttentionTrace:
    """The ordered steps of one attention computation; ``format()`` prints them."""

    steps: list = field(default_factory=list)
    precision: int = 4

    def __getitem__(self, key: str) -> np.ndarray:
        for step in self.steps:
            if step.key == key:
                return step.value
        raise KeyError(f"no step {key!r}; steps: {[s.key for s in self.steps]}")

    def keys(self) -> list:
        return [step.key for step in self.steps]

    def to_dict(self) -> dict:
        """{key: nested lists}, JSON-ready (-inf becomes the float -inf)."""
        return {step.key: step.value.tolist() for step in self.steps}

    def format(self, precision: int | None = None) -> str:
        """All steps, numbered and titled, matrices at ``precision`` fixed decimals."""
        digits = self.precision if precision is None else precision
        lines = []
        for number, step in enumerate(self.steps, start=1):
            rows, cols = np.atleast_2d(step.value).shape
            lines.append(f"Step {number}. {step.title}  [{step.key}, {rows} x {cols}]")
            if step.key.endswith("weights"):
                for i, row in enumerate(step.value):
                    lines.append(f"  row {i}: {_row(row, digits)}  sum = {row.sum():.{digits}f}")
            else:
                lines.extend(f"  {_row(row, digits)}" for row in np.atleast_2d(step.value))
            lines.append("")
        return "\n".join(lines).rstrip() + "\n"

    def __str__(self) -> str:
        return self.format()


def explain_attention(
    q,
    k,
    v,
    *,
    w_q=None,
    w_k=None,
    w_v=None,
    w_o=None,
    num_heads=1,
    causal=False,
    causal_alignment="top_left",
    softmax_scale=None,
    kv_len=None,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    sinks=None,
    attn_bias=None,
    dropout_p=0.0,
    dropout_seed=None,
    precision=4,
) -> AttentionTrace:
    """Trace attention for one sequence; see the module docstring for the steps and layouts.

    q: (Lq, d), k: (Lk, d), v: (Lk, dv). Without weights, q, k, v are used as they are
    (``num_heads`` must be 1). With weights, all four of w_q, w_k, w_v, w_o are needed and
    the model width is split into ``num_heads`` equal heads. ``softmax_scale`` defaults to
    1/sqrt(head dim); ``kv_len`` (an int) hides keys at positions >= kv_len (and is the
    sequence length bottom_right aligns to); ``attn_bias`` broadcasts to (Lq, Lk) (or
    (H, Lq, Lk)). window_size, softcap as in `attention_forward`; alibi_slopes and sinks:
    (H,), one per head; dropout from ``dropout_seed`` (the sequence is batch row 0, head h
    is query head h of H for the Philox counters).
    """
    q, k, v = as_float64("q", q), as_float64("k", k), as_float64("v", v)
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 2:
            raise ValueError(f"{name}: expected a (length, dim) matrix for one sequence, got shape {x.shape}")
    weights = {"w_q": w_q, "w_k": w_k, "w_v": w_v, "w_o": w_o}
    given = [name for name, w in weights.items() if w is not None]
    if given and len(given) != 4:
        raise ValueError(f"w_q, w_k, w_v, w_o: give all four projections or none; got only {given}")
    if not isinstance(num_heads, int) or isinstance(num_heads, bool) or num_heads < 1:
        raise ValueError(f"num_heads: expected a positive integer, got {num_heads!r}")
    if not given and num_heads != 1:
        raise ValueError("num_heads: more than one head needs the projections w_q, w_k, w_v, w_o")
    trace = AttentionTrace(precision=precision)
    lengths = None if kv_len is None else np.array([kv_len])
    common = dict(causal=causal, causal_alignment=causal_alignment, softmax_scale=softmax_scale,
                  kv_lens=lengths, window_size=window_size, softcap=softcap)  # fmt: skip
    if given:
        w_q, w_k, w_v, w_o = (as_float64(name, w) for name, w in weights.items())
        _check_projections(q, k, v, w_q, w_k, w_v, w_o, num_heads)
        head_dim, v_head_dim = w_q.shape[1] // num_heads, w_v.shape[1] // num_heads
    else:
        head_dim, v_head_dim = q.shape[1], v.shape[1]
    # Check every argument once for all heads, (1, H, L, Dh) as attention_forward sees them.
    inputs = check_attention_inputs(
        (1, num_heads, q.shape[0], head_dim), (1, num_heads, k.shape[0], head_dim),
        (1, num_heads, v.shape[0], v_head_dim), alibi_slopes=alibi_slopes, sinks=sinks,
        dropout_p=dropout_p, dropout_seed=dropout_seed, **common,
    )  # fmt: skip

    def head_kwargs(h: int, bias) -> dict:
        """Head h's keyword arguments for a (1, 1, L, D) attention."""
        kwargs = dict(common, attn_bias=bias)
        if inputs.alibi_slopes is not None:
            kwargs["alibi_slopes"] = inputs.alibi_slopes[0, h : h + 1]
        if inputs.sinks is not None:
            kwargs["sinks"] = inputs.sinks[h : h + 1]
        if inputs.has_dropout:
            kwargs["dropout_p"] = inputs.dropout_p
            kwargs["dropout_mask"] = inputs.dropout_keep()[:, h : h + 1]
        return kwargs

    if not given:
        _explain_head(trace, "", q, k, v, head_kwargs(0, attn_bias))
        return trace

    heads = []
    bias = None if attn_bias is None else as_float64("attn_bias", attn_bias)
    for h in range(num_heads):
        qs, vs = slice(h * head_dim, (h + 1) * head_dim), slice(h * v_head_dim, (h + 1) * v_head_dim)
        prefix = f"head{h}."
        q_h, k_h, v_h = q @ w_q[:, qs], k @ w_k[:, qs], v @ w_v[:, vs]
        trace.steps.append(TraceStep(prefix + "q", f"head {h}: Q_h = Q W_q[:, {qs.start}:{qs.stop}]", q_h))
        trace.steps.append(TraceStep(prefix + "k", f"head {h}: K_h = K W_k[:, {qs.start}:{qs.stop}]", k_h))
        trace.steps.append(TraceStep(prefix + "v", f"head {h}: V_h = V W_v[:, {vs.start}:{vs.stop}]", v_h))
        head_bias = bias[h] if bias is not None and bias.ndim == 3 else bias
        heads.append(_explain_head(trace, prefix, q_h, k_h, v_h, head_kwargs(h, head_bias)))
    concat = np.concatenate(heads, axis=-1)  # (Lq, H * Dv)
    trace.steps.append(TraceStep("concat", "concat of the head outputs [O_1 ... O_H]", concat))
    trace.steps.append(TraceStep("output", "output projection: concat W_o", concat @ w_o))
    return trace


def _explain_head(trace, prefix, q, k, v, kwargs) -> np.ndarray:
    """Append the steps for one head (q: (Lq, D), k: (Lk, D), v: (Lk, Dv)); return O.

    kwargs: this head's attention arguments for a (1, 1, L, D) problem.
    """
    inputs = check_attention_inputs((1, 1) + q.shape, (1, 1) + k.shape, (1, 1) + v.shape, **kwargs)
    head = f"head {prefix[4:-1]}: " if prefix else ""  # "head0." -> "head 0: "
    steps = []

    def step(key: str, title: str, value: np.ndarray) -> None:
        steps.append(TraceStep(prefix + key, head + title, value))

    raw = q @ k.T  # (Lq, Lk)
    scaled = inputs.softmax_scale * raw
    bias = None if inputs.attn_bias is None else inputs.bias()[0, 0]
    bias_note = " + bias" if bias is not None else ""
    title_scale = f"{inputs.softmax_scale:.6g}"
    step("scores", "QK^T", raw)
    if inputs.softcap > 0.0:
        step("scaled_scores", f"scaled scores S = QK^T * {title_scale}", scaled)
        scaled = inputs.softcap * np.tanh(scaled / inputs.softcap)
        scaled = scaled if bias is None else scaled + bias
        cap = f"{inputs.softcap:.6g}"
        step("softcapped_scores", f"softcap: S = {cap} * tanh(S / {cap}){bias_note}", scaled)
    else:
        scaled = scaled if bias is None else scaled + bias
        step("scaled_scores", f"scaled scores S = QK^T * {title_scale}{bias_note}", scaled)
    alibi = inputs.alibi()
    if alibi is not None:
        slope = f"{inputs.alibi_slopes[0, 0]:.6g}"
        step("alibi_bias", f"ALiBi bias -{slope} * |i + shift - j| (shift {int(inputs.shifts()[0])})", alibi[0, 0])
        scaled = scaled + alibi[0, 0]
        step("alibi_scores", "S + ALiBi bias", scaled)
    visible = inputs.mask()[0, 0]  # (Lq, Lk)
    window = "" if inputs.window_size == (-1, -1) else f"; window (left, right) = {inputs.window_size}"
    step("mask", f"mask (1 = the query sees the key{window})", visible.astype(np.int64))
    masked = np.where(visible, scaled, -np.inf)
    step("masked_scores", "masked scores (-inf = hidden key)", masked)
    out4, lse4 = attention_forward(q[None, None], k[None, None], v[None, None], **kwargs)
    lse = lse4[0, 0]
    weights = probabilities_from_lse(masked, lse)
    if inputs.sinks is None:
        step("weights", "softmax weights P, row by row", weights)
    else:
        sink = f"{inputs.sinks[0]:.6g}"
        step("weights", f"softmax weights P with sink logit {sink} in each denominator", weights)
        step("sink_weights", "the sink's weight exp(sink - lse) per row (rows of P sum to 1 minus it)",
             np.exp(inputs.sinks[0] - lse)[:, None])  # fmt: skip
    if inputs.has_dropout:
        keep = inputs.dropout_keep()[0, 0]
        p = f"{inputs.dropout_p:.6g}"
        step("dropout_keep", f"dropout keep (1 = kept, p = {p})", keep.astype(np.int64))
        weights = weights * keep / (1.0 - inputs.dropout_p)
        step("dropped_weights", f"dropped weights P * keep / (1 - {p})", weights)
    out = weights @ v
    # The trace is only worth reading if it is the oracle's arithmetic: hold it to that.
    if not np.allclose(out, out4[0, 0], rtol=1e-12, atol=1e-12):
        raise RuntimeError("explain_attention: the step-by-step output disagrees with attention_forward")
    step("out", "output O = P V" if not inputs.has_dropout else "output O = dropped weights V", out)
    trace.steps.extend(steps)
    return out


def _check_projections(q, k, v, w_q, w_k, w_v, w_o, num_heads) -> None:
    for name, w, x in (("w_q", w_q, q), ("w_k", w_k, k), ("w_v", w_v, v)):
        if w.ndim != 2 or w.shape[0] != x.shape[1]:
            raise ValueError(f"{name}: expected shape ({x.shape[1]}, heads * head_dim), got {w.shape}")
        if w.shape[1] % num_heads:
            raise ValueError(f"{name}: {w.shape[1]} columns do not split into {num_heads} heads")
    if w_k.shape[1] != w_q.shape[1]:
        raise ValueError(f"w_k: expected {w_q.shape[1]} columns like w_q, got {w_k.shape[1]}")
    if w_o.ndim != 2 or w_o.shape[0] != w_v.shape[1]:
        raise ValueError(f"w_o: expected shape ({w_v.shape[1]}, d_out), got {w_o.shape}")


def _row(row: np.ndarray, digits: int) -> str:
    if np.issubdtype(row.dtype, np.integer):
        return "[" + " ".join(f"{x:d}" for x in row) + "]"
    width = digits + 4
    return "[" + " ".join(f"{x:{width}.{digits}f}" for x in row) + "]"
