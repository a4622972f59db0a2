"""Run records: the config hash that identifies a job, atomic writes of result files, and what a run's
per-epoch history says."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf

from tornado.errors import is_number


def task_container(cfg: DictConfig) -> dict:
    """The resolved task config (without the `hydra` node) as plain Python."""
    data = OmegaConf.to_container(cfg, resolve=False)
    data.pop("hydra", None)
    return OmegaConf.to_container(OmegaConf.create(data), resolve=True)


def config_hash(cfg: DictConfig | dict) -> str:
    data = cfg if isinstance(cfg, dict) else task_container(cfg)
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple, dict)):  # a list, or an empty group (logger=none): one text cell
            out[key] = json.dumps(v)
        else:
            out[key] = v
    return out


@contextlib.contextmanager
def locked(path: Path, mode: int = fcntl.LOCK_EX, discard_on_error: bool = False) -> Iterator[int]:
    """Hold an flock on ``path`` (created if missing); with LOCK_NB in `mode`, BlockingIOError where another process
    holds it. The file stays, except with `discard_on_error`: one this call created is removed, still held, when
    the block raises. A process that waited on a file so removed takes the lock again on the file now there."""
    while True:
        made = True
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:  # or a link to a file not there (made then, as without O_EXCL)
            made = False
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode)
            if _same_file(fd, path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield fd
    except BaseException:
        if made and discard_on_error:
            path.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino)


SWEEP_LOCK = ".launcher.lock"  # in a sweep folder: held (`hold`) by the launcher that runs the sweep; names its pid


class HeldElsewhere(Exception):
    """Another process holds the lock; `pid` is the one its file names ("" where it names none)."""

    def __init__(self, pid: str) -> None:
        super().__init__(pid)
        self.pid = pid


def hold(path: Path) -> contextlib.ExitStack:
    """An exclusive lock on ``path`` for as long as the returned stack stays open, this process's pid written in
    it; HeldElsewhere where another process holds it."""
    stack = contextlib.ExitStack()
    try:
        fd = stack.enter_context(locked(path, fcntl.LOCK_EX | fcntl.LOCK_NB))
    except BlockingIOError:
        with contextlib.suppress(OSError):
            pid = path.read_text().strip()
            raise HeldElsewhere(pid if pid.isdigit() else "") from None
        raise HeldElsewhere("") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return stack


def held_by(path: Path) -> str | None:
    """Who holds `hold`'s lock on ``path``: the pid its file names ("" where it names none), or None where no
    process holds it (or there is no such file). The lock tells, not the pid: one not running here may be another
    host's (a folder both see) or another pid namespace's."""
    try:
        named = path.read_text().strip()
    except OSError:
        return None
    pid = named if named.isdigit() else ""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # let go at once, with the file
    except BlockingIOError:
        return pid
    finally:
        os.close(fd)
    return None


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Write to a temp file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def load_result(path: str | os.PathLike) -> dict:
    """A result.json's object; ValueError naming the file and its fault where it cannot be read or holds no JSON
    object (FileNotFoundError where there is none)."""
    path = Path(path)
    try:
        res = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ValueError(f"result.json unreadable: {path}: {e.strerror or e}") from None
    except ValueError as e:  # bad JSON, or bytes that are no text
        raise ValueError(f"result.json unreadable: {path}: {e}") from None
    if not isinstance(res, dict):
        raise ValueError(f"result.json unreadable: {path}: holds a JSON {type(res).__name__}, not an object")
    return res


def read_result(run_dir: str | os.PathLike) -> dict | None:
    """result.json of a run dir, or None if missing, unreadable (a run killed mid-way) or not a JSON object."""
    try:
        return load_result(Path(run_dir) / "result.json")
    except (OSError, ValueError):
        return None


def best_epoch(history: Any) -> int | None:
    """The epoch (from 1) whose validation ROC AUC was highest, the first of ties; None without per-epoch scores.
    Past it, more epochs did not help."""
    rows = enumerate(history if isinstance(history, list) else [])
    pairs = [(h["val_roc_auc"], int(h.get("epoch", i))) for i, h in rows
             if isinstance(h, dict) and is_number(h.get("val_roc_auc")) and math.isfinite(h["val_roc_auc"])]
    if not pairs:
        return None
    top = max(v for v, _ in pairs)
    return 1 + min(e for v, e in pairs if v == top)
