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
def locked(path: Path, mode: int = fcntl.LOCK_EX) -> Iterator[int]:
    """Hold an flock on ``path`` (created if missing; never deleted, so every process locks one inode); with
    LOCK_NB in `mode`, BlockingIOError where another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, mode)
        yield fd
    finally:
        os.close(fd)


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


def read_result(run_dir: str | os.PathLike) -> dict | None:
    """result.json of a run dir, or None if missing, unreadable (a run killed mid-way) or not a JSON object."""
    try:
        res = json.loads((Path(run_dir) / "result.json").read_text())
    except (OSError, ValueError):
        return None
    return res if isinstance(res, dict) else None


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
