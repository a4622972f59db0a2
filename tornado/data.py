"""Read NCARSTORM storm-patch files (netCDF4, one per model run date) into inputs and labels.

Inputs are ``(p, 3, 32, 32)`` float32 in physical units, channels ``CHANNELS`` (dBZ, m/s, m/s); axis -2 runs
south to north, axis -1 west to east. Variables stored with the dimensions ``p, row, col`` in another order are
read by name. Labels come from ``RVORT1_MAX_future`` through a ``LabelRule``.
Patches missing a value (NaN, inf, or masked by netCDF: a fill value, or outside valid_min/valid_max) in an input
channel or in the label field are dropped by default (``nonfinite="drop"``, a warning per file gives the count)
or refused (``nonfinite="fail"``).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import glob
import logging
import numbers
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import netCDF4
import numpy as np

from tornado.errors import TornadoError, quoted

log = logging.getLogger(__name__)

CHANNELS = ("REFL_COM_curr", "U10_curr", "V10_curr")
LABEL_VAR = "RVORT1_MAX_future"
TRACK_VAR = "track_id"
PATCH_SIZE = 32
FILE_GLOB = "NCARSTORM_*.nc"
UNFINISHED = ".synth-unfinished"  # in a folder tornado.synth is writing, or was stopped writing
REDUCES = ("max", "mean")
NONFINITE = ("drop", "fail")
_NAME = re.compile(r"NCARSTORM_(\d{8})-\d{4}_")
GRID_DIMS = ("p", "row", "col")


@dataclass(frozen=True)
class LabelRule:
    """A patch is positive when ``reduce`` of its future 1 km vorticity exceeds ``threshold``.

    Default: the AMS short course's rule, max > 0.005 s^-1. The paper's text: mean >= 0.008
    (``reduce="mean", threshold=0.008, inclusive=True``).
    """

    reduce: str = "max"
    threshold: float = 0.005
    inclusive: bool = False

    def __post_init__(self) -> None:
        if self.reduce not in REDUCES:
            raise TornadoError(f"label.reduce: {quoted(self.reduce)}: must be one of {', '.join(REDUCES)}")
        if not isinstance(self.threshold, numbers.Real) or not np.isfinite(self.threshold):
            raise TornadoError(f"label.threshold: {quoted(self.threshold)}: must be a finite number")
        if not isinstance(self.inclusive, (bool, np.bool_)):
            raise TornadoError(f"label.inclusive: {quoted(self.inclusive)}: must be true or false")

    def apply(self, field: np.ndarray) -> np.ndarray:
        """``(p, 32, 32)`` future vorticity -> ``(p,)`` uint8 labels."""
        if self.reduce not in REDUCES:  # guards instances altered after construction
            raise TornadoError(f"label.reduce: {quoted(self.reduce)}: must be one of {', '.join(REDUCES)}")
        field = np.asarray(field)
        if field.dtype.kind != "f":
            field = field.astype(np.float64)
        axes = tuple(range(1, field.ndim))
        if self.reduce == "max":
            value = field.max(axis=axes, initial=-np.inf)
        else:  # accumulate in float64, compare in the data's precision (0.008 stored as float32 is 0.008)
            value = field.mean(axis=axes, dtype=np.float64).astype(field.dtype)
        threshold = field.dtype.type(self.threshold)
        hit = value >= threshold if self.inclusive else value > threshold
        return hit.astype(np.uint8)

    @classmethod
    def from_cfg(cls, cfg: Mapping) -> "LabelRule":
        """From any mapping (or DictConfig) with ``reduce``, ``threshold`` and ``inclusive``."""
        d = cls()
        threshold = cfg.get("threshold", d.threshold)
        if isinstance(threshold, int) and not isinstance(threshold, bool):
            threshold = float(threshold)
        return cls(
            reduce=str(cfg.get("reduce", d.reduce)),
            threshold=threshold,
            inclusive=cfg.get("inclusive", d.inclusive),
        )


def _refuse_unfinished(folder: Path, key: str, text: str | None = None) -> None:
    if (folder / UNFINISHED).exists():
        raise TornadoError(f"{key}: {text or folder}: tornado.synth was stopped while writing this folder; run it "
                           "again to complete it")


def _refuse_broken(paths) -> None:
    broken = sorted(p for p in paths if p.is_symlink() and not p.exists())
    if broken:  # a link into a file system not mounted here: its storms would be left out unsaid
        raise TornadoError(f"NCARSTORM file: {broken[0]}: a link to {broken[0].readlink()}, which does not exist")


def find_files(source: str | Path, key: str = "source") -> list[Path]:
    """NCARSTORM files from a folder (``NCARSTORM_*.nc`` inside, sorted), a glob pattern or one file; errors
    name the setting `key` that gave `source`."""
    text = str(source)
    if any(c in text for c in "*?["):
        matched = [Path(p) for p in glob.glob(text)]
        _refuse_broken(matched)
        files = sorted(p for p in matched if p.is_file())
        if not files:
            raise TornadoError(f"{key}: {text}: no files match")
        for parent in sorted({f.parent for f in files}):
            _refuse_unfinished(parent, key)
        return files
    folder = Path(text)
    if folder.is_file():
        _refuse_unfinished(folder.parent, key)
        return [folder]
    if not folder.is_dir():
        raise TornadoError(f"{key}: {text}: no such folder")
    _refuse_unfinished(folder, key, text)
    _refuse_broken(folder.glob(FILE_GLOB))
    files = sorted(p for p in folder.glob(FILE_GLOB) if p.is_file())
    if not files:
        raise TornadoError(f"{key}: {text}: no {FILE_GLOB} files in this folder")
    return files


def run_date(path: str | Path) -> dt.date:
    """The model run date in a name like ``NCARSTORM_20130520-0000_d01_model_patches.nc``."""
    name = Path(path).name
    m = _NAME.match(name)
    try:
        if m is None:
            raise ValueError
        return dt.datetime.strptime(m.group(1), "%Y%m%d").date()
    except ValueError:
        raise TornadoError(
            f"NCARSTORM file: {path}: name does not hold a run date (NCARSTORM_YYYYMMDD-HHMM_...)"
        ) from None


@dataclass
class StormFile:
    """The patches of one file: inputs ``x`` (p, 3, 32, 32) float32, labels ``y`` (p,) uint8."""

    path: Path
    date: dt.date
    x: np.ndarray
    y: np.ndarray
    track_id: np.ndarray
    n_dropped: int
    index: np.ndarray | None = None  # position of each kept patch in the file's `p` dimension
    inputs_ok: np.ndarray | None = None  # keep_all: (p,) bool, no input value missing (the others hold NaN)
    y_known: np.ndarray | None = None  # keep_all: (p,) bool, a label field with no value missing


@dataclass
class Storms:
    """Patches of many files: ``x`` (N, 3, 32, 32) float32, ``y`` (N,) uint8, ``date`` (N,) int32 yyyymmdd of
    each patch's run date, ``track_id`` (N,) int64, ``n_dropped`` patches skipped for missing values."""

    x: np.ndarray
    y: np.ndarray
    date: np.ndarray
    track_id: np.ndarray
    n_dropped: int = 0
    files: list[Path] = dataclasses.field(default_factory=list)


def _open(path: Path) -> netCDF4.Dataset:
    try:
        return netCDF4.Dataset(path, "r")
    except (OSError, RuntimeError, ValueError) as e:
        raise TornadoError(f"NCARSTORM file: {path}: cannot be read as netCDF ({_reason(e)})") from None


def _reason(e: Exception) -> str:
    text = e.strerror if isinstance(e, OSError) and e.strerror else str(e)  # without the repeated file name
    return " ".join(text.split()) or type(e).__name__


def _n_patches(ds: netCDF4.Dataset, path: Path) -> int:
    if "p" not in ds.dimensions:
        raise TornadoError(f"NCARSTORM file: {path}: missing dimension 'p'")
    return len(ds.dimensions["p"])


def count_patches(files: Iterable[str | Path]) -> int:
    """Total patches in ``files``, from the dimension sizes only."""
    total = 0
    for f in files:
        path = Path(f)
        with _open(path) as ds:
            total += _n_patches(ds, path)
    return total


def _order(var: netCDF4.Variable) -> tuple[int, ...]:
    """Where p, row and col are in `var`'s dimensions: (0, 1, 2), or for a variable stored with them named in
    another order ((p, col, row), say) their places, so that it is read by name (a transposed patch would be a
    mirrored storm, turning the other way)."""
    dims = tuple(var.dimensions)
    return tuple(dims.index(d) for d in GRID_DIMS) if sorted(dims) == sorted(GRID_DIMS) else (0, 1, 2)


def _checked(ds: netCDF4.Dataset, path: Path, name: str, shape: tuple[int, ...]) -> tuple:
    """The variable `name` and where its p, row and col are stored (None for one that is not a grid), with its
    shape checked."""
    if name not in ds.variables:
        raise TornadoError(f"NCARSTORM file: {path}: missing variable {name!r}")
    var = ds.variables[name]
    order = _order(var) if len(shape) == 3 else None
    stored = tuple(var.shape[i] for i in order) if order and var.ndim == len(shape) else tuple(var.shape)
    if stored != shape:
        want = "x".join(map(str, shape))
        got = "x".join(map(str, stored))
        raise TornadoError(f"NCARSTORM file: {path}: variable {name!r} has shape {got}, expected {want}")
    return var, order


def _read_var(ds: netCDF4.Dataset, path: Path, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A float field as NaN where a value is missing (a fill value, or outside valid_min/valid_max)."""
    var, order = _checked(ds, path, name, shape)
    data = var[:]
    if np.ma.is_masked(data):
        data = np.ma.filled(data.astype(np.result_type(data.dtype, np.float32)), np.nan)
    data = np.asarray(np.ma.getdata(data))
    return np.transpose(data, order) if order and order != (0, 1, 2) else data


def _track_ids(ds: netCDF4.Dataset, path: Path, p: int) -> np.ndarray:
    """track_id as int64. Metadata only: a missing id is -1, and whole numbers stored as floats (a pandas or
    xarray round trip) are taken."""
    var, _ = _checked(ds, path, TRACK_VAR, (p,))
    kind = np.dtype(var.dtype).kind  # a string variable's dtype is `str`
    data = np.ma.masked_invalid(var[:]) if kind == "f" else np.ma.asarray(var[:])
    kept = np.ma.compressed(data)
    if kind not in "iuf" or (kind == "f" and (kept != np.round(kept)).any()):
        kind = getattr(var.dtype, "__name__", var.dtype)
        raise TornadoError(f"NCARSTORM file: {path}: variable {TRACK_VAR!r} is {kind}, expected whole numbers")
    return np.ma.filled(data, -1).astype(np.int64)


def _reversed_axes(ds: netCDF4.Dataset, grid: tuple[int, ...]) -> list[tuple[str, np.ndarray, int]]:
    """(what, which patches, the axis to turn) for patches whose rows run north to south or columns east to
    west, by their `lat` and `lon` (where the file has them): augmentation turns the wind with the grid only
    when rows run south to north and columns west to east, as in NCAR's files."""
    out = []
    for what, var, axis in (("rows running north to south", "lat", -2), ("columns running east to west", "lon", -1)):
        coord = ds.variables.get(var)
        if coord is None or coord.ndim != 3:
            continue
        at = _order(coord)  # where p, row and col are stored
        if tuple(coord.shape[i] for i in at) != grid:
            continue
        turn, p_at = at[axis], at[0] - (at[0] > at[axis])  # p's place once the turned axis is taken at an edge
        first, last = (np.moveaxis(np.asarray(coord[(slice(None),) * turn + (k,)], dtype=np.float64), p_at, 0)
                       for k in (0, -1))  # the edges only: no more read than needed
        flip = np.nan_to_num((last - first).mean(axis=1)) < 0
        if flip.any():
            out.append((what, flip, axis))
    return out


def _check_nonfinite(nonfinite: str) -> None:
    if nonfinite not in NONFINITE:
        raise TornadoError(f"data.nonfinite: {quoted(nonfinite)}: must be one of {', '.join(NONFINITE)}")


def read_file(path: str | Path, label: LabelRule = LabelRule(), nonfinite: str = "drop",
              require_label: bool = True, keep_all: bool = False) -> StormFile:
    """One NCARSTORM file -> ``StormFile``; every fault is a ``TornadoError`` naming the file.

    A value is missing where it is NaN or inf, or masked (a fill value, or outside valid_min/valid_max); a patch
    missing one is dropped or refused (`nonfinite`). With ``require_label=False`` a file without the future
    vorticity (new model output, for prediction) is read too, and its ``y`` is None. With ``keep_all`` (for
    prediction) every patch is kept, and ``inputs_ok`` and ``y_known`` say which can be scored and labelled.
    """
    _check_nonfinite(nonfinite)
    path = Path(path)
    date = run_date(path)
    with _open(path) as ds:
        try:
            p = _n_patches(ds, path)
            grid = (p, PATCH_SIZE, PATCH_SIZE)
            x = np.empty((p, len(CHANNELS), PATCH_SIZE, PATCH_SIZE), np.float32)
            for c, name in enumerate(CHANNELS):
                x[:, c] = _read_var(ds, path, name, grid)
            has_label = require_label or LABEL_VAR in ds.variables
            future = _read_var(ds, path, LABEL_VAR, grid) if has_label else np.zeros(grid, np.float32)
            track = _track_ids(ds, path, p)
            turned = _reversed_axes(ds, grid)
        except (OSError, RuntimeError, ValueError, IndexError, KeyError) as e:
            raise TornadoError(f"NCARSTORM file: {path}: cannot be read ({_reason(e)})") from None
    for what, flip, axis in turned:  # U and V stay east and north components: only the points are put in order
        log.warning("%s: %d of %d patches have %s; put in order", path, int(flip.sum()), p, what)
        x[flip] = np.flip(x[flip], axis=axis)
        future[flip] = np.flip(future[flip], axis=axis)
    inputs_ok, y_known = np.isfinite(x).all(axis=(1, 2, 3)), np.isfinite(future).all(axis=(1, 2))
    y = label.apply(future) if has_label else None
    if keep_all:
        return StormFile(path=path, date=date, x=x, y=y, track_id=track, n_dropped=0, index=np.arange(p),
                         inputs_ok=inputs_ok, y_known=y_known if has_label else None)
    finite = inputs_ok & y_known
    n_bad = int(p - finite.sum())
    if n_bad:
        if nonfinite == "fail":
            raise TornadoError(
                f"NCARSTORM file: {path}: {n_bad} of {p} patches {'is' if n_bad == 1 else 'are'} missing values "
                "(NaN, inf or a fill value; nonfinite=drop skips them: data.nonfinite=drop in train)")
        log.warning("%s: dropped %d of %d patches with missing values (NaN, inf or a fill value)", path, n_bad, p)
        x, track = x[finite], track[finite]
        y = y[finite] if y is not None else None
    index = np.flatnonzero(finite) if n_bad else np.arange(p)
    return StormFile(path=path, date=date, x=x, y=y, track_id=track, n_dropped=n_bad, index=index)


def iter_storm_files(files: Iterable[str | Path], label: LabelRule = LabelRule(),
                     nonfinite: str = "drop") -> Iterator[StormFile]:
    """Read ``files`` one at a time (see ``read_file``)."""
    for f in files:
        yield read_file(f, label, nonfinite)


def _as_files(source_or_files) -> list[Path]:
    if isinstance(source_or_files, (str, Path)):
        return find_files(source_or_files)
    return [Path(f) for f in source_or_files]


def read_storms(source_or_files, label: LabelRule = LabelRule(), nonfinite: str = "drop") -> Storms:
    """All patches of a folder, glob or list of files, in file order.

    Output arrays are allocated once from ``count_patches`` and filled file by file, so memory stays about
    the size of the result. Default ``nonfinite="drop"``: patches with NaN/inf are skipped and counted.
    """
    _check_nonfinite(nonfinite)
    files = _as_files(source_or_files)
    total = count_patches(files)
    x = np.empty((total, len(CHANNELS), PATCH_SIZE, PATCH_SIZE), np.float32)
    y = np.empty(total, np.uint8)
    date = np.empty(total, np.int32)
    track = np.empty(total, np.int64)
    n = dropped = 0
    for sf in iter_storm_files(files, label, nonfinite):
        k = len(sf.y)
        if n + k > total:
            raise TornadoError(f"NCARSTORM file: {sf.path}: changed while being read")
        x[n:n + k], y[n:n + k], track[n:n + k] = sf.x, sf.y, sf.track_id
        date[n:n + k] = sf.date.year * 10000 + sf.date.month * 100 + sf.date.day
        n += k
        dropped += sf.n_dropped
    if n < total:  # patches were dropped: trim (the views keep the original buffers)
        x, y, date, track = x[:n], y[:n], date[:n], track[:n]
    return Storms(x=x, y=y, date=date, track_id=track, n_dropped=dropped, files=files)
