"""`flashref audit`: show the oracle's math step by step, and prove its gradients.

`flashref audit attention` prints the attention oracle's labelled trace (scores,
scale, mask, row max, exponentials, row sums, probabilities, output, log-sum-exp)
for small matrices: by default the worked example of section 4.1.1 of the seed
article (three tokens, d_k = 3), which this command also checks against the
article's printed result. Matrices come as `--q "1,0,1;0,1,0;1,1,0"` (rows split by
';', columns by ',') or as `.npy` files; 2-D `(L, D)`, 3-D `(H, L, D)` or 4-D
`(B, H, L, D)`; `--heads N` splits a 2-D `(L, D)` input's columns into N heads of
D/N (the article's multi-head example, without projections).

`flashref audit gradcheck` runs the autograd's central-difference gradient check
on every op and prints the worst relative error per op; exit 1 if any op fails.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# Seed article, section 4.1.1: the example inputs and the result it prints for them.
ARTICLE_Q = "1,0,1;0,1,0;1,1,0"
ARTICLE_K = "1,1,1;0,1,1;1,0,1"
ARTICLE_V = "1,0,1;0,1,0;1,1,0"
ARTICLE_CLAIMED_WEIGHTS = ((0.5, 0.5, 0.0), (0.5, 0.5, 0.0), (0.0, 0.5, 0.5))
ARTICLE_CLAIMED_OUTPUT = ((0.5, 0.0, 0.5), (0.5, 0.0, 0.5), (0.0, 0.5, 0.5))


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "audit", help="print the oracle's step-by-step attention trace, or run every op's gradient check",
        description="Tools for engineers checking the math of the float64 oracle.",
    )
    sub = p.add_subparsers(dest="audit_command", metavar="WHAT", required=True)

    att = sub.add_parser(
        "attention", help="step-by-step attention trace (default: the seed article's worked example)",
        description="Print the oracle's labelled attention trace for small matrices. With no matrices, "
                    "uses the seed article's example (section 4.1.1) and checks the article's printed result.",
    )
    att.add_argument("--q", type=matrix_argument, default=None, metavar="MATRIX|FILE.npy",
                     help='rows split by ";", columns by ",", e.g. "1,0,1;0,1,0;1,1,0" (write --q="-1,0;..." when '
                          'it starts with a minus sign), or a .npy file')
    att.add_argument("--k", type=matrix_argument, default=None, metavar="MATRIX|FILE.npy")
    att.add_argument("--v", type=matrix_argument, default=None, metavar="MATRIX|FILE.npy")
    att.add_argument("--causal", action="store_true", help="causal mask")
    att.add_argument("--alignment", choices=("top_left", "bottom_right"), default="top_left",
                     help="causal alignment when Lq != Lk (default top_left)")
    att.add_argument("--scale", type=float, default=None, metavar="S", help="softmax scale (default 1/sqrt(D))")
    att.add_argument("--heads", type=int, default=None, metavar="N",
                     help="split 2-D (L, D) inputs into N heads of D/N columns")
    att.add_argument("--precision", type=int, default=4, help="digits printed (default 4)")
    att.set_defaults(func=run_attention)

    gc = sub.add_parser("gradcheck", help="central-difference gradient check of every autograd op",
                        description="Run the autograd's gradient check on every op (float64, random cotangent) "
                                    "and print the worst relative error per op. Exit 1 if any fails.")
    gc.add_argument("--seed", type=int, default=0, help="seed of the inputs and cotangents (default 0)")
    gc.set_defaults(func=run_gradcheck)


def parse_matrix(text: str):
    """'1,0,1;0,1,0' -> float64 array (2, 3). Raises ValueError naming the problem."""
    import numpy as np

    rows = [r for r in text.replace(" ", "").split(";") if r]
    if not rows:
        raise ValueError("empty matrix")
    try:
        values = [[float(x) for x in r.split(",")] for r in rows]
    except ValueError:
        raise ValueError(f"entries must be numbers, got {text!r}") from None
    widths = {len(r) for r in values}
    if len(widths) != 1:
        raise ValueError(f"rows have different lengths {sorted(widths)} in {text!r}")
    return np.array(values, dtype=np.float64)


def matrix_argument(text: str):
    """argparse type: a .npy path or an inline matrix."""
    import numpy as np

    if text.endswith(".npy") or Path(text).is_file():
        try:
            return np.load(text).astype(np.float64)
        except (OSError, ValueError) as err:
            raise argparse.ArgumentTypeError(f"cannot load {text!r}: {err}") from None
    try:
        return parse_matrix(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def sequences(x, name: str):
    """(L, D) | (H, L, D) | (B, H, L, D) -> list of ((b, h), (L, D) matrix), one per sequence and head."""
    if x.ndim == 2:
        return [((0, 0), x)]
    if x.ndim == 3:
        return [((0, h), x[h]) for h in range(x.shape[0])]
    if x.ndim == 4:
        return [((b, h), x[b, h]) for b in range(x.shape[0]) for h in range(x.shape[1])]
    raise ValueError(f"{name} must be 2-D (L, D), 3-D (H, L, D) or 4-D (B, H, L, D), got shape {x.shape}")


def run_attention(args: argparse.Namespace) -> int:
    import numpy as np
    from rich.console import Console

    from flashref.reference import explain_attention

    console = Console()
    default = args.q is None and args.k is None and args.v is None
    if not default and (args.q is None or args.k is None or args.v is None):
        console.print("[red]flashref audit attention: give all of --q, --k, --v (or none, for the article's example)[/]")
        return 2
    q, k, v = (parse_matrix(m) for m in (ARTICLE_Q, ARTICLE_K, ARTICLE_V)) if default else (args.q, args.k, args.v)
    options = dict(causal=args.causal, causal_alignment=args.alignment, softmax_scale=args.scale,
                   precision=args.precision)
    if default:
        console.print("Seed article, section 4.1.1: Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V, "
                      "three tokens, d_k = 3.\n")
    try:
        if args.heads:
            # Split the model width into heads with identity projections: head h sees columns
            # h*D/N .. (h+1)*D/N, and the output is the concatenation of the head outputs.
            if q.ndim != 2 or k.ndim != 2 or v.ndim != 2:
                raise ValueError("--heads splits 2-D (L, D) inputs; pass (H, L, D) arrays for separate heads")
            eye_qk, eye_v = np.eye(q.shape[1]), np.eye(v.shape[1])
            console.print(f"{args.heads} heads: identity projections W_q = W_k = W_v = W_o = I, so head h "
                          f"attends with its own slice of the columns\n")
            traces = [((0, None), explain_attention(q, k, v, w_q=eye_qk, w_k=eye_qk, w_v=eye_v, w_o=eye_v,
                                                    num_heads=args.heads, **options))]
        else:
            pairs = zip(sequences(q, "q"), sequences(k, "k"), sequences(v, "v"))
            traces = [(where, explain_attention(qs, ks, vs, **options)) for (where, qs), (_, ks), (_, vs) in pairs]
    except (ValueError, TypeError) as err:
        console.print(f"[red]flashref audit attention: {err}[/]")
        return 2
    for (b, h), trace in traces:
        if len(traces) > 1:
            console.print(f"[bold]batch {b}, head {h}[/]")
        print(trace.format(args.precision))
    if default and not (args.causal or args.scale is not None or args.heads):
        _check_article(console, traces[0][1], v)
    return 0


def _check_article(console, trace, v) -> None:
    """Compare the oracle's trace with what the article prints for its example (v: (3, 3))."""
    import numpy as np

    claimed_out = np.array(ARTICLE_CLAIMED_OUTPUT)
    claimed_w = np.array(ARTICLE_CLAIMED_WEIGHTS)
    weights, out = trace["weights"], trace["out"]
    def show(label, m):
        console.print(f"  {label:<20}" + "  ".join("[" + " ".join(f"{x:6.4f}" for x in row) + "]" for row in m),
                      soft_wrap=True, highlight=False)

    console.print("[bold]Against the article's printed result[/]")
    show("article's weights", claimed_w)
    show("oracle's weights", weights)
    show("article's output", claimed_out)
    show("oracle's output", out)
    show("article's P times V", claimed_w @ v)
    console.print(f"  max |oracle - article| on the output: {np.abs(out - claimed_out).max():.4f}; "
                  "the article's printed output is not even its own weights times V", soft_wrap=True)
    verdict = "matches" if np.allclose(out, claimed_out, atol=1e-3) else "does NOT match"
    console.print(f"  verdict: the article's worked example {verdict} softmax(QK^T/sqrt(3))V.", soft_wrap=True)


def run_gradcheck(args: argparse.Namespace) -> int:
    import time

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from flashref.autograd.opcheck import check_all_ops

    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 100))
    t0 = time.perf_counter()
    results = list(check_all_ops(seed=args.seed))
    seconds = time.perf_counter() - t0
    table = Table(title=f"autograd gradient checks, float64 central differences, seed {args.seed}",
                  title_justify="left")
    table.add_column("op")
    table.add_column("worst relative error", justify="right")
    table.add_column("result")
    failed = 0
    for r in results:
        passed = bool(r.passed)
        failed += not passed
        table.add_row(escape(str(r.op)), f"{float(r.worst_rel_error):.2e}",
                      "[green]PASS[/]" if passed else "[bold red]FAIL[/]")
    console.print(table)
    if not results:
        console.print("[red]no ops were checked[/]")
        return 1
    worst = max(results, key=lambda r: float(r.worst_rel_error))
    line = (f"{len(results) - failed}/{len(results)} ops pass in {seconds:.1f} s; "
            f"worst: {escape(str(worst.op))} at {float(worst.worst_rel_error):.2e}")
    console.print(("[bold green]PASS[/]: " if not failed else "[bold red]FAIL[/]: ") + line)
    return 0 if not failed else 1

