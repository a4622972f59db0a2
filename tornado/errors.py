"""One-line errors for bad input, and the exit convention of every command."""
from __future__ import annotations

import numbers
import os
import sys
from typing import Any, Callable, TypeVar

T = TypeVar("T")


class TornadoError(Exception):
    """A fault in the user's input or config (or an interruption): printed as one line, exit status `code`."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def is_int(v: Any) -> bool:
    """An integer config value (numpy's too); a bool is not one."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A real-number config value; a bool is not one."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def run_cli(fn: Callable[[], T]) -> T:
    """Run a command's body: its errors, a file it cannot write and Ctrl-C end as one `error:` line."""
    try:
        return fn()
    except TornadoError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(e.code) from None
    except BrokenPipeError:  # output piped into a reader that stopped (`| head`): quietly, as a shell tool
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        raise SystemExit(141) from None
    except OSError as e:  # an output folder that cannot be written, a full disk, ...
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e} ({type(e).__name__})", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C)", file=sys.stderr)
        raise SystemExit(130) from None
