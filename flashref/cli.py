"""The `flashref` command line: one subcommand per user job."""

from __future__ import annotations

import argparse
import sys

from flashref import __version__
from flashref.commands import audit, bench, compile_report, evaluate, generate, mutate, serve, train, tune, verify

# In the order `--help` lists them: the correctness gate first.
COMMANDS = (verify, mutate, audit, compile_report, tune, bench, train, evaluate, generate, serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flashref",
        description="Triton fused attention, checked against a float64 NumPy oracle.",
    )
    parser.add_argument("--version", action="version", version=f"flashref {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
