"""`flashref generate CHECKPOINT "3 1 4 1 5"`: decode one digit sequence with a trained model
(greedy by default, beam search with --beam N) and print the output digits. Decodes with
the KV cache; --no-cache reruns the decoder on the whole prefix (same output)."""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="run a trained checkpoint on one input sequence",
                                   description=__doc__)
    parser.add_argument("checkpoint", help="a model.safetensors written by `flashref train`")
    parser.add_argument("input", help='digits separated by spaces, e.g. "3 1 4 1 5"')
    parser.add_argument("--beam", type=int, default=None, metavar="N", help="beam search with N beams")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--verbose", action="store_true", help="print every beam with its log-probability")
    parser.add_argument("--no-cache", action="store_true",
                        help="rerun the decoder on the whole prefix every step instead of using the KV cache "
                             "(the reference the cache is checked against; same output, slower)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from flashref.commands.device import single_threaded_blas

    single_threaded_blas()
    import numpy as np

    from flashref.workflow.checkpoint import CheckpointError, load_checkpoint
    from flashref.workflow.data import decode_tokens, encode_digits, source_ids
    from flashref.workflow.decoding import beam_search, greedy_decode

    try:
        src = np.array(source_ids(encode_digits(args.input)), dtype=np.int64)  # (S,)
        checkpoint = load_checkpoint(args.checkpoint)
        if args.beam is None:
            tokens = greedy_decode(checkpoint.model, src[None], max_new_tokens=args.max_new_tokens,
                                   use_cache=not args.no_cache)[0]
            print(decode_tokens(tokens))
            return 0
        hypotheses = beam_search(checkpoint.model, src, beam_size=args.beam, max_new_tokens=args.max_new_tokens,
                                 use_cache=not args.no_cache)
    except (CheckpointError, ValueError) as err:
        print(f"flashref generate: error: {err}", file=sys.stderr)
        return 2
    print(decode_tokens(hypotheses[0].tokens))
    if args.verbose:
        for hyp in hypotheses:
            state = "" if hyp.finished else " (no end token)"
            print(f"  {hyp.log_prob:9.4f}  {decode_tokens(hyp.tokens) or '(empty)'}{state}", file=sys.stderr)
    return 0
