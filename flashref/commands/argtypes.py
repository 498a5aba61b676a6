"""argparse `type=` callables shared by the subcommands.

Each raises `argparse.ArgumentTypeError` with a message naming what was expected,
which argparse turns into `flashref <cmd>: error: argument --x: ...` and exit 2.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, Sequence


def comma_list(cast: Callable[[str], Any], allowed: Sequence[Any] | None = None) -> Callable[[str], tuple]:
    """A type for '64,128'-style options: returns a tuple of `cast` items, each in `allowed` if given."""

    def parse(text: str) -> tuple:
        items = []
        for raw in text.split(","):
            raw = raw.strip()
            if not raw:
                continue
            try:
                item = cast(raw)
            except ValueError:
                raise argparse.ArgumentTypeError(f"cannot read {raw!r} as {cast.__name__}") from None
            if allowed is not None and item not in allowed:
                choices = ", ".join(map(str, allowed))
                raise argparse.ArgumentTypeError(f"{raw!r} is not one of: {choices}")
            items.append(item)
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list, got nothing")
        return tuple(items)

    parse.__name__ = f"list of {cast.__name__}"
    return parse
