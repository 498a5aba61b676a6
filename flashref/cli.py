"""The `flashref` command line: one subcommand per user job."""

from __future__ import annotations

import argparse
import importlib
import sys

from flashref import __version__

# Modules under flashref.commands, in the order `--help` lists them.
COMMANDS = ("verify", "audit", "compile_report", "bench", "train", "evaluate", "generate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flashref",
        description="Triton fused attention, checked against a float64 NumPy oracle.",
    )
    parser.add_argument("--version", action="version", version=f"flashref {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"flashref.commands.{name}")
        except ModuleNotFoundError as err:  # during development a command may not exist yet
            if err.name != f"flashref.commands.{name}":
                raise
            continue
        module.register(subparsers)
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
