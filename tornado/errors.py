"""One-line errors for bad input, and the exit convention of every command."""
from __future__ import annotations

import sys
from typing import Callable, TypeVar

T = TypeVar("T")


class TornadoError(Exception):
    """A fault in the user's input or config: printed as one line, exit status 2."""


def run_cli(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except TornadoError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
