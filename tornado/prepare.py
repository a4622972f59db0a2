"""NCARSTORM files -> one HDF5 training file (``python -m tornado.prepare``); ``ensure_prepared`` for training.

The file ``<out_dir>/storms-<hash12>.h5`` holds the training originals, their augmented copies (nested: the
first ``m * N`` rows serve multiplier ``m``), the untouched validation and test splits and the scaler (layout in
docs/design.md). It is built once per distinct content hash, under a file lock, streaming file by file
and chunk by chunk, so memory stays a few chunks whatever the size of the data set.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import math
import os
import secrets
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import h5py
import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tqdm import tqdm

import tornado
from tornado import data, synth
from tornado.cli import (check_resolves, counted, folder_fault, missing_folders, names_run_dir,
                         remove_hydra_only_folder, run_hydra_app, typed_overrides, unknown_key)
from tornado.augment import AugmentConfig, augment
from tornado.errors import TornadoError, is_int, is_number, quoted, run_cli, stop_if_signalled
from tornado.records import locked, write_json

log = logging.getLogger(__name__)

FORMAT_VERSION = 2     # 2: a validation split
CHUNK = 2048          # patches per processing step (augmentation, scaler, copying)
H5_ROWS = 64          # patches per HDF5 chunk of x (768 KiB in float32)
H5_VEC = 1 << 16      # entries per HDF5 chunk of y, date, track_id
DTYPES = ("float32", "float16")
SYNTH_KEYS = ("days", "patches_per_day", "seed", "start", "end")
# the keys parse_settings reads (conf/data/synthetic.yaml's)
DATA_KEYS = ("source", "out_dir", "synth", "label", "split", "multipliers", "balance", "balance_ratio", "dtype",
             "nonfinite", "seed")
GROUP_KEYS = {"synth": SYNTH_KEYS, "label": ("reduce", "threshold", "inclusive"),
              "split": ("test_start", "val_fraction")}
PATCH = (len(data.CHANNELS), data.PATCH_SIZE, data.PATCH_SIZE)


@dataclass(frozen=True)
class Settings:
    """The validated settings of one prepared file."""

    source: str | None
    out_dir: Path
    synth: dict | None
    label: data.LabelRule
    test_start: dt.date
    val_fraction: float
    multipliers: tuple[int, ...]
    balance: bool | str  # False, or how positives are copied: "duplicate" (balance=true) or "augmented"
    balance_ratio: float
    dtype: str
    nonfinite: str
    seed: int
    augment: AugmentConfig

    @property
    def copies(self) -> int:
        """R = max(multipliers): the originals block and R - 1 augmented copies."""
        return max(self.multipliers)

    def hashed(self) -> dict:
        """Every setting that changes the file's contents (the source files are added by the caller)."""
        return {
            "format_version": FORMAT_VERSION, "tornado_version": tornado.__version__,
            "label": self.label_dict(), "test_start": self.test_start.isoformat(),
            "val_fraction": self.val_fraction, "multipliers": list(self.multipliers), "balance": self.balance,
            "balance_ratio": self.balance_ratio,
            "dtype": self.dtype, "nonfinite": self.nonfinite, "seed": self.seed,
            "augment": self.augment.to_dict(), "synth": self.synth,
        }

    def label_dict(self) -> dict:
        return {"reduce": self.label.reduce, "threshold": float(self.label.threshold),
                "inclusive": bool(self.label.inclusive)}


def check_keys(cfg: Mapping, prefix: str = "") -> None:
    """Refuse a data key that nothing reads (`+foo=1`, `+label.treshold=0.01`), named with `prefix` (`data.`)."""
    for group, known in ((None, DATA_KEYS), *GROUP_KEYS.items()):
        node = cfg if group is None else cfg.get(group, None)
        if not isinstance(node, Mapping):
            continue
        at = prefix if group is None else f"{prefix}{group}."
        for key in node:
            if key not in known:
                raise unknown_key(f"{at}{key}", [f"{at}{k}" for k in known])


def check_present(cfg: Mapping, augment_cfg: Mapping | None, needs: str, prefix: str = "") -> None:
    """Refuse a setting removed on the command line (`~split.val_fraction`): parse_settings would take its own
    default, which need not be the configured one, and the run's record would lack it. A group set to null
    (`label=null`: the default rule) is a choice, not a removal; the synthetic set's settings are needed only without
    a `source`."""
    groups = {"synth": ("days", "patches_per_day", "seed"), **{k: GROUP_KEYS[k] for k in ("label", "split")}}

    def value(key: str):  # what does not resolve here (`${hydra:runtime.cwd}` outside a run) is left to the run
        try:
            return cfg.get(key, None)
        except OmegaConfBaseException:
            return ...
    synthetic = value("source") in (None, "")
    for key in DATA_KEYS:
        if key == "synth" and not synthetic:
            continue
        if key not in cfg:
            raise TornadoError(f"{prefix}{key}: missing: {needs} needs this setting")
        node = value(key) if key in groups else None
        for sub in groups.get(key, ()) if isinstance(node, Mapping) else ():
            if sub not in node:
                raise TornadoError(f"{prefix}{key}.{sub}: missing: {needs} needs this setting")
    if not isinstance(augment_cfg, Mapping):
        raise TornadoError(f"augment: missing: {needs} needs this group of settings")
    for key in AugmentConfig.__dataclass_fields__:
        if key not in augment_cfg:
            raise TornadoError(f"augment.{key}: missing: {needs} needs this setting")


def parse_settings(data_cfg: Mapping, augment_cfg: Mapping | None) -> Settings:
    """Validate the data config (``cfg.data`` of training, the top level of prepare) and augment config."""
    cfg = data_cfg
    source = cfg.get("source", None)
    out_dir = cfg.get("out_dir", "outputs/data")
    if not out_dir:
        raise TornadoError("out_dir: must name a folder")
    for key, value in (("out_dir", out_dir), ("source", source)):  # `out_dir=[a]` would be the folder "['a']"
        if isinstance(value, (Mapping, list, tuple, ListConfig, bool)):
            raise TornadoError(f"{key}: {OmegaConf.to_container(value) if OmegaConf.is_config(value) else value!r}: "
                               f"must name {'a folder' if key == 'out_dir' else 'a folder or a glob of files'}")
    for key in ("synth", "label", "split"):  # `label=5` would replace the group, not set one of its keys
        group = cfg.get(key, None)
        if group is not None and not isinstance(group, Mapping):
            raise TornadoError(f"{key}: {quoted(group)}: must be a group of settings ({key}.<key>=...), not a value")
    check_keys(cfg)
    synth_cfg = None
    if source is None or str(source) == "":
        source = None
        raw = dict(cfg.get("synth", None) or {})
        synth_cfg = {k: (str(v) if k in ("start", "end") else v) for k, v in raw.items()}
        for key in ("days", "patches_per_day", "seed"):
            v = synth_cfg.get(key, 1)
            if not is_int(v) or v < (0 if key == "seed" else 1):
                raise TornadoError(f"synth.{key}: {quoted(v)}: must be an integer >= {0 if key == 'seed' else 1}")
    label = data.LabelRule.from_cfg(cfg.get("label", None) or {})
    split = cfg.get("split", None) or {}
    start = split.get("test_start", None)
    try:
        test_start = start if isinstance(start, dt.date) else dt.date.fromisoformat(str(start))
    except ValueError:
        raise TornadoError(f"split.test_start: {quoted(start)}: not a date (YYYY-MM-DD)") from None
    val_fraction = split.get("val_fraction", 0.0)
    if not is_number(val_fraction) or not 0 <= val_fraction < 1:
        raise TornadoError(f"split.val_fraction: {quoted(val_fraction)}: must be a number in [0, 1)")
    mult = cfg.get("multipliers", None)
    if isinstance(mult, (tuple, ListConfig)):
        mult = list(mult)
    if not isinstance(mult, list) or not mult or not all(is_int(m) and m >= 1 for m in mult):
        raise TornadoError(f"multipliers: {quoted(mult)}: must be a list of positive integers, e.g. [1, 2, 4]")
    balance = cfg.get("balance", False)
    if not (isinstance(balance, bool) or balance == "augmented"):
        raise TornadoError(f"balance: {quoted(balance)}: must be false, true (duplicates of the positives) or "
                           "augmented")
    balance = "duplicate" if balance is True else balance
    ratio = cfg.get("balance_ratio", 1.0)
    if not is_number(ratio) or not 0 < ratio < math.inf:
        raise TornadoError(f"balance_ratio: {quoted(ratio)}: must be a positive number (positives per negative)")
    dtype = cfg.get("dtype", "float32")
    if dtype not in DTYPES:
        raise TornadoError(f"dtype: {quoted(dtype)}: must be one of {', '.join(DTYPES)}")
    nonfinite = cfg.get("nonfinite", "drop")
    if nonfinite not in data.NONFINITE:
        raise TornadoError(f"nonfinite: {quoted(nonfinite)}: must be one of {', '.join(data.NONFINITE)}")
    seed = cfg.get("seed", 0)
    if not is_int(seed) or seed < 0:
        raise TornadoError(f"seed: {quoted(seed)}: must be an integer >= 0")
    return Settings(
        source=None if source is None else str(source), out_dir=Path(str(out_dir)), synth=synth_cfg,
        label=label, test_start=test_start, val_fraction=float(val_fraction),
        multipliers=tuple(sorted({int(m) for m in mult})),
        balance=balance, balance_ratio=float(ratio), dtype=dtype, nonfinite=nonfinite, seed=int(seed),
        augment=AugmentConfig.from_cfg(augment_cfg),
    )


# ---------------------------------------------------------------------------------------------- locking
# ---------------------------------------------------------------------------------------------- synthetic
def _synthetic_listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(data.FILE_GLOB))


def _synthetic_current(folder: Path, want: dict) -> bool:
    try:
        marker = json.loads((folder / "synth.json").read_text())
    except (OSError, ValueError):
        return False
    return marker.get("settings") == want and marker.get("files") == _synthetic_listing(folder)


def _clear_synthetic_temps(folder: Path) -> None:
    """Remove the temp files of a generation that was killed (synth.write_file's `.NAME.nc.RANDOM.tmp`).
    Call only under the folder's exclusive lock: no other process is writing there then."""
    for tmp in folder.glob(f".{data.FILE_GLOB}.*.tmp"):
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def synthetic_source(out_dir: Path, settings: dict) -> Iterator[Path]:
    """The synthetic set under ``out_dir/synthetic``, generated if missing or made with other settings.

    Yields the folder while holding a shared lock on it, so no other process regenerates it while it is read.
    """
    folder = out_dir / "synthetic"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TornadoError(f"out_dir: {folder}: cannot create the synthetic set's folder there "
                           f"({folder_fault(folder, e)})") from None
    with locked(folder / ".lock") as fd:
        while True:
            fcntl.flock(fd, fcntl.LOCK_EX)  # again after a shared lock that found the set changed
            if not _synthetic_current(folder, settings):
                (folder / "synth.json").unlink(missing_ok=True)
                for old in folder.glob(data.FILE_GLOB):
                    old.unlink()
                _clear_synthetic_temps(folder)
                log.info("generating synthetic storms %s in %s", settings, folder)
                paths = synth.generate(folder, **settings)
                write_json(folder / "synth.json", {"settings": settings, "files": sorted(p.name for p in paths)})
            fcntl.flock(fd, fcntl.LOCK_SH)  # not atomic: another process may regenerate in between, so check
            if _synthetic_current(folder, settings):
                break
        yield folder


# ---------------------------------------------------------------------------------------------- hashing
def source_listing(files: list[Path]) -> list[dict]:
    """Each file's name, size and modification time: files rewritten in place (fixed-size netCDF keeps its size
    when its values change) or another folder's files of the same names give another hash."""
    return [{"name": f.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns} for f in files for st in [f.stat()]]


def content_hash(settings: Settings, files: list[Path]) -> str:
    blob = json.dumps({**settings.hashed(), "source_files": source_listing(files)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _warn_copies(files: list[Path]) -> None:
    """A file of the same run date and size as another is most likely a copy (`... (1).nc`, downloaded twice):
    said, as its storms would count twice in training and in the scaler; both are read."""
    seen: dict[tuple, Path] = {}
    for f in files:
        first = seen.setdefault((data.run_date(f), f.stat().st_size), f)
        if first != f:
            log.warning("%s and %s: the same run date and size, one a copy of the other? Both are read", first, f.name)


def _note_others(path: Path) -> None:
    """Prepared files are kept (another sweep may use them) and never pruned: say what they take, once, as a new
    one is built beside them."""
    others = sorted(p for p in path.parent.glob("storms-*.h5") if p != path)
    if others:
        size = sum(p.stat().st_size for p in others)
        size_text = f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"
        log.info("%s also holds %s of other settings or source files (%s): delete those no longer needed "
                 "(each file's settings: its HDF5 attributes)", path.parent, counted(len(others), "prepared file"),
                 size_text)


def _is_current(path: Path, chash: str) -> bool:
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("content_hash") == chash
    except (OSError, KeyError):
        return False


# ---------------------------------------------------------------------------------------------- entry
def ensure_prepared(data_cfg: Mapping, augment_cfg: Mapping | None) -> Path:
    """The prepared HDF5 file for these settings, built first if missing. See ``prepare``."""
    return prepare(data_cfg, augment_cfg)[0]


def prepare(data_cfg: Mapping, augment_cfg: Mapping | None) -> tuple[Path, bool]:
    """(path of the prepared file, whether this call built it)."""
    s = parse_settings(data_cfg, augment_cfg)
    if s.out_dir.exists() and not s.out_dir.is_dir():
        raise TornadoError(f"out_dir: {s.out_dir}: exists and is not a folder")
    try:
        s.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TornadoError(f"out_dir: {s.out_dir}: cannot create it ({folder_fault(s.out_dir, e)})") from None
    with contextlib.ExitStack() as stack:
        if s.source is None:
            folder = stack.enter_context(synthetic_source(s.out_dir, s.synth))
            files = data.find_files(folder)
            source = f"synthetic {json.dumps(s.synth, sort_keys=True)}: {folder.resolve()}"
        else:
            files = data.find_files(s.source, key="source")
            source = str(Path(s.source).absolute())
        _warn_copies(files)
        chash = content_hash(s, files)
        path = s.out_dir / f"storms-{chash[:12]}.h5"
        # hidden: it stays, one per settings prepared; one made for a build that fails goes with it
        with locked(path.with_name(f".{path.name}.lock"), discard_on_error=True):
            if _is_current(path, chash):
                log.info("prepared data: %s (up to date)", path)
                return path, False
            for stale in path.parent.glob(f".{path.name}.*.tmp"):  # a killed build's; its builder held this lock
                stale.unlink(missing_ok=True)
            build(path, s, files, source, chash)
        _note_others(path)
        return path, True


# ---------------------------------------------------------------------------------------------- building
def _yyyymmdd(d: dt.date) -> int:
    return d.year * 10000 + d.month * 100 + d.day


class _Moments:
    """Per-channel mean and (population) variance, streamed in float64 (Chan et al.'s pairwise update)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = np.zeros(PATCH[0])
        self.m2 = np.zeros(PATCH[0])

    def add(self, x: np.ndarray) -> None:
        k = x.shape[0] * x.shape[2] * x.shape[3]
        if k == 0:
            return
        mean = x.mean(axis=(0, 2, 3), dtype=np.float64)
        m2 = x.var(axis=(0, 2, 3), dtype=np.float64) * k
        n = self.n + k
        delta = mean - self.mean
        self.mean = self.mean + delta * (k / n)
        self.m2 = self.m2 + m2 + delta**2 * (self.n * k / n)
        self.n = n

    def std(self) -> np.ndarray:
        std = np.sqrt(self.m2 / max(self.n, 1))
        return np.where(std > 0, std, 1.0)  # like sklearn's StandardScaler: a constant channel is left as is


class _Split:
    """The x, y, date and track_id datasets of one split, filled file by file, resized at the end."""

    def __init__(self, f: h5py.File, name: str, rows: int, dtype: str, grow: bool = False) -> None:
        self.n = 0
        self.grow = grow
        self.x = f.create_dataset(f"{name}/x", (rows, *PATCH), dtype=dtype, maxshape=(None, *PATCH),
                                  chunks=(H5_ROWS, *PATCH))
        vec = dict(shape=(rows,), maxshape=(None,), chunks=(H5_VEC,))
        self.y = f.create_dataset(f"{name}/y", dtype=np.uint8, **vec)
        self.date = f.create_dataset(f"{name}/date", dtype=np.int32, **vec)
        self.track = f.create_dataset(f"{name}/track_id", dtype=np.int64, **vec)

    def append(self, x: np.ndarray, y: np.ndarray, date: np.ndarray | int, track: np.ndarray) -> None:
        a, b = self.n, self.n + len(y)
        if b > self.x.shape[0]:
            if not self.grow:
                raise TornadoError("NCARSTORM files: changed while being read (more patches than counted)")
            self.resize(b, b)
        # numpy converts to float16 here: HDF5's own conversion can round 7.999 to 4.0 (a carry into the exponent)
        self.x[a:b] = x.astype(self.x.dtype, copy=False)
        self.y[a:b] = y
        self.date[a:b] = date
        self.track[a:b] = track
        self.n = b

    def resize(self, rows: int, meta_rows: int) -> None:
        """``rows`` of x and y, ``meta_rows`` of date and track_id."""
        self.x.resize(rows, axis=0)
        self.y.resize(rows, axis=0)
        self.date.resize(meta_rows, axis=0)
        self.track.resize(meta_rows, axis=0)


def _bar(total: int, what: str) -> tqdm:
    """A progress bar of patches, on a terminal only."""
    return tqdm(total=total, desc=what, unit=" patches", leave=False, disable=not sys.stderr.isatty())


def _read_split(files: list[Path], s: Settings, out: _Split, bar: tqdm, on_file=None) -> int:
    """Stream ``files`` into ``out``; returns the number of patches dropped for missing values."""
    dropped = 0
    for sf in data.iter_storm_files(files, s.label, s.nonfinite):
        date = _yyyymmdd(sf.date)
        out.append(sf.x, sf.y, date, sf.track_id)
        dropped += sf.n_dropped
        bar.update(len(sf.y) + sf.n_dropped)
        stop_if_signalled()
        if on_file is not None:
            on_file(sf.x, sf.y, date, sf.track_id)
    return dropped


def _augmented(x: np.ndarray, s: Settings, gen: torch.Generator) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return augment(t, s.augment, gen).numpy().astype(s.dtype, copy=False)


def _val_start(train_dates: list[dt.date], s: Settings, where: str) -> dt.date | None:
    """The first run date of the validation split: the last `val_fraction` of the training run dates (at least
    one), so that it is held out in time as the test set is; None without one."""
    if s.val_fraction == 0:
        return None
    k = max(1, round(s.val_fraction * len(train_dates)))
    if k >= len(train_dates):
        raise TornadoError(f"split.val_fraction: {s.val_fraction}: {len(train_dates)} run date(s) before "
                           f"{s.test_start} in {where} leave none to train on (use 0 for no validation split)")
    return train_dates[-k]


def _balance_count(pos: int, neg: int, ratio: float) -> int:
    """Copies of positives to add so that positives : negatives is about ``ratio``."""
    return max(0, int(round(ratio * neg)) - pos)


def _rule(label: data.LabelRule) -> str:
    return f"{label.reduce} {'>=' if label.inclusive else '>'} {label.threshold:g}"


def _none_left(split: str, dates: str, where: str, dropped: int) -> TornadoError:
    if dropped:
        return TornadoError(f"nonfinite: every {split} patch ({dates}) in {where} is missing values (NaN, inf or a "
                            "fill value)")
    return TornadoError(f"source: the {split} files ({dates}) in {where} hold no patch")


def build(path: Path, s: Settings, files: list[Path], source: str, chash: str) -> dict:
    """Write the prepared file to a temp name in its folder, then rename it to ``path``; returns its attrs."""
    where = s.source if s.source is not None else str(path.parent / "synthetic")
    train_files = [f for f in files if data.run_date(f) < s.test_start]
    test_files = [f for f in files if data.run_date(f) >= s.test_start]
    if not train_files:
        raise TornadoError(f"split.test_start: {s.test_start}: no run date before it in {where}: empty training split")
    if not test_files:
        raise TornadoError(f"split.test_start: {s.test_start}: no run date from it on in {where}: empty test split")
    val_start = _val_start(sorted({data.run_date(f) for f in train_files}), s, where)
    val_files = [f for f in train_files if val_start is not None and data.run_date(f) >= val_start]
    train_files = [f for f in train_files if f not in val_files]
    n_train_max, n_val_max, n_test_max = (data.count_patches(f) for f in (train_files, val_files, test_files))
    log.info("preparing %s from %d files (%d train, %d validation, %d test)", path, len(files), len(train_files),
             len(val_files), len(test_files))

    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(_bar(n_train_max + n_val_max + n_test_max, "reading"))
        tmp = stack.enter_context(_temp_file(path, ".tmp"))
        f = stack.enter_context(h5py.File(tmp, "w"))
        moments = _Moments()
        positives = None
        if s.balance:  # the positive originals, for the balance copies: kept on disk, not in memory
            scratch = stack.enter_context(_temp_file(path, ".pos.tmp"))
            positives = _Split(stack.enter_context(h5py.File(scratch, "w")), "pos", 0, "float32", grow=True)

        def on_train(x, y, date, track):
            moments.add(x)
            if positives is not None and y.any():
                keep = y.astype(bool)
                positives.append(x[keep], y[keep], date, track[keep])

        train = _Split(f, "train", n_train_max, s.dtype)
        dropped = _read_split(train_files, s, train, bar, on_train)
        n_orig = train.n
        if n_orig == 0:
            raise _none_left("training", f"run dates before {val_start or s.test_start}", where, dropped)
        pos_orig = int(train.y[:n_orig].sum())
        if pos_orig == 0:
            raise TornadoError(f"label: the rule {_rule(s.label)} leaves no positive among the {n_orig} training "
                               f"patches (run dates before {val_start or s.test_start}) in {where}")

        test = _Split(f, "test", n_test_max, s.dtype)
        dropped_test = _read_split(test_files, s, test, bar)
        if test.n == 0:
            raise _none_left("test", f"run dates from {s.test_start}", where, dropped_test)
        dropped += dropped_test
        test.resize(test.n, test.n)
        val = _Split(f, "val", n_val_max, s.dtype)
        dropped += _read_split(val_files, s, val, bar)
        val.resize(val.n, val.n)
        pos_val = int(val.y[:].sum())
        if val_files and pos_val == 0:
            log.warning("the validation split (run dates %s to %s) holds no positive: no threshold is chosen on it",
                        val_start, s.test_start - dt.timedelta(days=1))

        gen = torch.Generator().manual_seed(s.seed)
        n_bal = _balance_count(pos_orig, n_orig - pos_orig, s.balance_ratio) if s.balance else 0
        n, r = n_orig + n_bal, s.copies
        train.resize(r * n, n)
        bar.close()
        bar = stack.enter_context(_bar(n_bal + (r - 1) * n, "augmenting"))

        # balance: copies of the positives, cycling through them, right after the originals. Duplicates by default:
        # an augmented copy is smoothed by the interpolation of its turn or shift, which the originals are not, and
        # as only positives get such copies, smoothness itself would be learnt as a sign of a tornado
        at = n_orig
        while at < n:
            a = (at - n_orig) % positives.n
            k = min(CHUNK, n - at, positives.n - a)
            rows = positives.x[a:a + k]
            train.x[at:at + k] = _augmented(rows, s, gen) if s.balance == "augmented" else rows.astype(s.dtype)
            train.y[at:at + k] = 1
            train.date[at:at + k] = positives.date[a:a + k]
            train.track[at:at + k] = positives.track[a:a + k]
            at += k
            bar.update(k)
            stop_if_signalled()

        # copies 1..R-1 of the whole block [0, N), chunk by chunk
        y_block = train.y[:n]
        for a in range(0, n, CHUNK):
            b = min(a + CHUNK, n)
            x = train.x[a:b]
            for k in range(1, r):
                train.x[k * n + a:k * n + b] = _augmented(x, s, gen)
            bar.update((r - 1) * (b - a))
            stop_if_signalled()
        for k in range(1, r):
            train.y[k * n:(k + 1) * n] = y_block

        attrs = {
            "format_version": FORMAT_VERSION, "n_train": n, "n_val": val.n, "n_test": test.n,
            "n_train_originals": n_orig, "n_balance_added": n_bal, "positives_train_originals": pos_orig,
            "multipliers": np.asarray(s.multipliers, dtype=np.int64),
            "label_reduce": s.label.reduce, "label_threshold": float(s.label.threshold),
            "label_inclusive": bool(s.label.inclusive), "test_start": s.test_start.isoformat(),
            "val_fraction": s.val_fraction, "val_start": "" if val_start is None else val_start.isoformat(),
            "positives_val": pos_val, "source": source, "source_files": json.dumps(source_listing(files)),
            "synth": json.dumps(s.synth), "augment": json.dumps(s.augment.to_dict()),
            "balance": json.dumps({"enabled": bool(s.balance), "copies": s.balance or None, "ratio": s.balance_ratio,
                                   "n_added": n_bal}),
            "seed": s.seed, "dtype": s.dtype, "tornado_version": tornado.__version__, "content_hash": chash,
            "n_dropped_nonfinite": dropped, "positives_train": int(y_block.sum()),
            "positives_test": int(test.y[:].sum()),
        }
        f.attrs.update(attrs)
        f.create_dataset("scaler/mean", data=moments.mean)
        f.create_dataset("scaler/std", data=moments.std())
        f.close()
        stop_if_signalled()
        os.replace(tmp, path)
    log.info("prepared data: %s: train %d originals + %d balance copies, x%d; validation %d; test %d; positives "
             "train %d (%d originals), validation %d, test %d; dropped %d (missing values)", path, n_orig, n_bal, r,
             val.n, test.n, attrs["positives_train"], pos_orig, pos_val, attrs["positives_test"], dropped)
    return attrs


@contextlib.contextmanager
def _temp_file(path: Path, suffix: str) -> Iterator[str]:
    """A fresh temp file name next to ``path`` (created with the umask's permissions, unlike mkstemp's 0600);
    removed on the way out unless it was renamed."""
    tmp = str(path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{suffix}")
    try:
        yield tmp
    finally:
        Path(tmp).unlink(missing_ok=True)


_MADE_FOR_LOGS: set[str] = set()  # the folders (out_dir included) made for this command's log; "" where none


def _logs_dir(*, _root_: DictConfig) -> str:
    """Where a `tornado.prepare` command keeps its log: OUT_DIR/.prepare-logs; where `out_dir` names no folder, does
    not resolve (`out_dir='${oc.env:NOPE}'`) or is or lies under a file (all refused, in the command's words), the
    system's temp folder, not `None/` or `/` made from it."""
    try:
        out_dir = _root_.get("out_dir", "outputs/data")  # removed (`~out_dir`): the default, as parse_settings takes it
    except OmegaConfBaseException:
        out_dir = None
    named = isinstance(out_dir, (str, int)) and not isinstance(out_dir, bool) and str(out_dir).strip()
    above = next((p for p in (Path(str(out_dir)), *Path(str(out_dir)).parents) if p.exists()), None) if named else None
    logs = (f"{out_dir}/.prepare-logs" if named and (above is None or above.is_dir())
            else str(Path(tempfile.gettempdir()) / "tornado-prepare-logs"))
    if not _MADE_FOR_LOGS:  # resolved before Hydra makes the folder: what it will make for it
        _MADE_FOR_LOGS.update(missing_folders(logs) or {""})
    return logs


OmegaConf.register_new_resolver("prepare_logs", _logs_dir, replace=True)


def drop_log(hc) -> bool:
    """Removes the log folder of a command that failed (refused, or stopped) where Hydra made it for this process
    (the default, named by time and pid) and it holds only Hydra's files: the log says no more than the terminal
    did, without the error line. The folders made for it (`.prepare-logs`, `out_dir`) go too where left empty.
    Returns whether it did."""
    if any(names_run_dir(o) for o in typed_overrides(hc)):
        return False
    return remove_hydra_only_folder(Path(hc.runtime.output_dir), hc, made=_MADE_FOR_LOGS)


@hydra.main(config_path="../conf", config_name="prepare", version_base="1.3")
def main(cfg: DictConfig) -> None:
    data_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "augment"])

    def run() -> Path:
        check_resolves(cfg)  # `source='${oc.env:NOPE}'`: one line naming the setting
        check_present(data_cfg, cfg.get("augment"), "tornado.prepare")
        return ensure_prepared(data_cfg, cfg.get("augment"))
    try:
        path = run_cli(run)
    except SystemExit as e:
        if e.code in (2, 130, 143):
            drop_log(HydraConfig.get())
        raise
    print(path)


if __name__ == "__main__":
    run_hydra_app(main, Path(__file__).resolve().parents[1] / "conf", "prepare", refused=lambda _, hc: drop_log(hc))
