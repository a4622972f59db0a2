"""One-line errors for bad input, and the exit convention of every command."""
from __future__ import annotations

import contextlib
import numbers
import os
import signal
import sys
import threading
from typing import Any, Callable, Iterator, TypeVar

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


def shown(v: Any) -> str:
    """A setting's value as a command line types it: `null`, `true`, and a string quoted where it would read as
    another type (`epochs='2'` is the text "2", not the number)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, str):
        try:
            float(v)
            return repr(v)
        except ValueError:
            return repr(v) if v.strip().lower() in ("", "null", "true", "false", "~") else v
    return str(v)


def quoted(v: Any) -> str:
    """As `shown`, every string quoted (`label.reduce: 'median': ...`)."""
    return repr(v) if isinstance(v, str) else shown(v)


IN_USE = 75  # exit status of a run refused because another process trains in its folder


def die_with_parent() -> None:
    """SIGTERM for this process when the one that started it dies (a sweep's launcher killed, its login lost),
    so that no job trains on unseen and unstoppable; Linux only, elsewhere nothing."""
    try:
        import ctypes
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Terminated(BaseException):
    """SIGTERM (a `kill`, SLURM's scancel), raised where the command is, so that its clean-ups run (a temp file
    is removed) as for Ctrl-C."""


_SIGNALLED: list[type[BaseException]] = []  # what a SIGTERM or Ctrl-C raised (see stop_if_signalled)


def _terminate(signum, frame):
    _SIGNALLED.append(Terminated)
    raise Terminated()


def _interrupt(signum, frame):
    _SIGNALLED.append(KeyboardInterrupt)
    raise KeyboardInterrupt()


def stop_if_signalled() -> None:
    """Raise again what a SIGTERM (`Terminated`) or Ctrl-C (`KeyboardInterrupt`) raised: Python ignores an
    exception raised inside a destructor or a weakref callback (h5py runs some while it writes), so long work
    checks here between its steps."""
    if _SIGNALLED:
        raise _SIGNALLED[0]()


@contextlib.contextmanager
def _handling(signum: int, handler: Callable | int) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signum, handler)
    try:
        yield
    finally:
        signal.signal(signum, previous)


def on_sigterm(handler: Callable | int = _terminate) -> contextlib.AbstractContextManager:
    """`handler` for SIGTERM inside the block, by default raising `Terminated` (main thread only; elsewhere
    nothing changes)."""
    return _handling(signal.SIGTERM, handler)


def run_cli(fn: Callable[[], T]) -> T:
    """Run a command's body: its errors, a file it cannot write, Ctrl-C and SIGTERM end as one `error:` line."""
    _SIGNALLED.clear()
    sigint = signal.getsignal(signal.SIGINT)  # Ctrl-C raises as ever, and is recorded; unless ignored (nohup, &)
    if sigint is signal.default_int_handler:
        sigint = _interrupt
    try:
        with on_sigterm(), _handling(signal.SIGINT, sigint):
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
    except Terminated:
        print("error: interrupted (SIGTERM)", file=sys.stderr)
        raise SystemExit(143) from None
