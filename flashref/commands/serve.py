"""`flashref serve CHECKPOINT [--host 127.0.0.1] [--port 8000]`: serve a trained checkpoint over
HTTP (POST /generate, GET /health, GET /model) with FastAPI + uvicorn, decoding with the KV
cache. Needs the `serve` extra: pip install -e '.[serve]'."""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser("serve", help="serve a trained checkpoint over HTTP (POST /generate)",
                                   description=__doc__)
    parser.add_argument("checkpoint", help="a model.safetensors written by `flashref train`")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    parser.set_defaults(func=run)


def run(args) -> int:
    from flashref.commands.device import single_threaded_blas

    single_threaded_blas()
    try:
        import uvicorn
        import fastapi  # noqa: F401 -- checked here so a missing extra fails before loading anything
    except ImportError as err:
        print(f"flashref serve: error: {err.name} is not installed; install the serve extra: "
              "pip install -e '.[serve]'", file=sys.stderr)
        return 2
    from flashref.workflow.checkpoint import CheckpointError
    from flashref.workflow.serve import Generator, create_app

    if not 0 <= args.port <= 65535:
        print(f"flashref serve: error: --port: expected 0..65535, got {args.port}", file=sys.stderr)
        return 2
    try:
        generator = Generator(args.checkpoint)
    except CheckpointError as err:
        print(f"flashref serve: error: {err}", file=sys.stderr)
        return 2
    print(f"flashref serve: {generator.num_parameters:,} parameters, checkpoint sha256 {generator.sha256[:16]}...",
          file=sys.stderr, flush=True)
    uvicorn.run(create_app(generator), host=args.host, port=args.port, log_level=args.log_level)
    return 0
