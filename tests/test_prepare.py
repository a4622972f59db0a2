"""The prepared HDF5 file: layout, contents, split, scaler, reuse, balance, and refusal of bad input."""
import datetime as dt
import json
import logging
import re
import shutil
import os
import subprocess
import sys
from pathlib import Path

import h5py
import netCDF4
import numpy as np
import pytest
from omegaconf import OmegaConf

from tornado import data, synth
from tornado.errors import TornadoError
from tornado.datamodule import read_meta
from tornado.prepare import ensure_prepared, prepare

ROOT = Path(__file__).resolve().parents[1]
TEST_START = dt.date(2015, 1, 1)


def make_cfg(out_dir, source=None, **over):
    """The data config of conf/data/synthetic.yaml with a small synthetic set and ``over`` applied."""
    cfg = OmegaConf.load(ROOT / "conf" / "data" / "synthetic.yaml")
    cfg.out_dir = str(out_dir)
    cfg.source = None if source is None else str(source)
    cfg.synth = {"days": 6, "patches_per_day": 60, "seed": 3}
    for key, value in over.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


AUG = OmegaConf.load(ROOT / "conf" / "augment" / "paper.yaml")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ncar")
    synth.generate(folder, days=6, patches_per_day=60, seed=3)
    return folder


@pytest.fixture(scope="module")
def prepared(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    return ensure_prepared(make_cfg(out, source), AUG)


def split_of(source) -> dict[str, str]:
    """File name -> train, val or test under the default split: run dates from TEST_START on are the test set,
    the last 10% of the earlier run dates (at least one) the validation set."""
    files = data.find_files(source)
    earlier = sorted({data.run_date(f) for f in files if data.run_date(f) < TEST_START})
    val_start = earlier[-max(1, round(0.1 * len(earlier)))]
    return {f.name: "test" if data.run_date(f) >= TEST_START else "val" if data.run_date(f) >= val_start else "train"
            for f in files}


def reader(source, split: str):
    which = split_of(source)
    return data.read_storms([f for f in data.find_files(source) if which[f.name] == split])


def leftovers(out_dir):
    """Prepared files or temp files left in ``out_dir`` (the lock of a prepared file stays)."""
    return sorted(p.name for p in Path(out_dir).iterdir() if p.name.endswith((".h5", ".tmp")))


def test_layout_and_attributes(prepared, source):
    with h5py.File(prepared, "r") as f:
        n, n_test, r = f.attrs["n_train"], f.attrs["n_test"], 4
        assert f["train/x"].shape == (r * n, 3, 32, 32) and f["train/x"].dtype == np.float32
        assert f["train/y"].shape == (r * n,) and f["train/y"].dtype == np.uint8
        assert f["train/date"].shape == (n,) and f["train/date"].dtype == np.int32
        assert f["train/track_id"].shape == (n,) and f["train/track_id"].dtype == np.int64
        assert f["test/x"].shape == (n_test, 3, 32, 32) and f["test/y"].shape == (n_test,)
        assert f["test/date"].shape == (n_test,) and f["test/track_id"].shape == (n_test,)
        assert f["scaler/mean"].shape == (3,) and f["scaler/std"].dtype == np.float64
        a = dict(f.attrs)
    assert n + a["n_val"] + n_test == data.count_patches(data.find_files(source))
    assert a["format_version"] == 2 and list(a["multipliers"]) == [1, 2, 4]
    assert (a["label_reduce"], a["label_threshold"], bool(a["label_inclusive"])) == ("max", 0.005, False)
    assert a["test_start"] == "2015-01-01" and a["dtype"] == "float32" and a["seed"] == 0
    assert prepared.name == f"storms-{a['content_hash'][:12]}.h5" and len(a["content_hash"]) == 64
    shown = [p.name for p in prepared.parent.iterdir() if not p.name.startswith(".")]
    assert (prepared.parent / f".{prepared.name}.lock").is_file() and shown == [prepared.name]  # the lock hidden
    files = json.loads(a["source_files"])
    assert [x["name"] for x in files] == [p.name for p in data.find_files(source)]
    assert all(x["size"] == (source / x["name"]).stat().st_size for x in files)
    assert json.loads(a["augment"])["rotation"] == 5.0
    assert json.loads(a["balance"])["enabled"] is False and a["n_balance_added"] == 0
    assert a["n_dropped_nonfinite"] == 0 and a["tornado_version"]
    assert a["positives_train"] == a["positives_train_originals"] == reader(source, "train").y.sum()
    assert a["positives_test"] == reader(source, "test").y.sum()
    assert a["positives_val"] == reader(source, "val").y.sum() and a["n_val"] == len(reader(source, "val").y) > 0


def test_originals_and_test_split_are_the_reader_s_patches(prepared, source):
    train, val, test = reader(source, "train"), reader(source, "val"), reader(source, "test")
    with h5py.File(prepared, "r") as f:
        np.testing.assert_array_equal(f["val/x"][:], val.x)  # untouched, as the test split
        np.testing.assert_array_equal(f["val/y"][:], val.y)
        np.testing.assert_array_equal(f["val/date"][:], val.date)
        n = f.attrs["n_train"]
        assert n == len(train.y)
        np.testing.assert_array_equal(f["train/x"][:n], train.x)
        np.testing.assert_array_equal(f["train/y"][:n], train.y)
        np.testing.assert_array_equal(f["train/date"][:], train.date)
        np.testing.assert_array_equal(f["train/track_id"][:], train.track_id)
        np.testing.assert_array_equal(f["test/x"][:], test.x)
        np.testing.assert_array_equal(f["test/y"][:], test.y)
        np.testing.assert_array_equal(f["test/date"][:], test.date)
        np.testing.assert_array_equal(f["test/track_id"][:], test.track_id)


def test_copies_differ_but_keep_labels(prepared):
    with h5py.File(prepared, "r") as f:
        n = f.attrs["n_train"]
        x, y = f["train/x"][:], f["train/y"][:]
    for k in range(1, 4):
        copy = x[k * n:(k + 1) * n]
        np.testing.assert_array_equal(y[k * n:(k + 1) * n], y[:n])
        assert bool((copy != x[:n]).reshape(n, -1).any(axis=1).all())  # every copy is changed
        # rotated by at most 5 degrees: the same storm, near where it was
        assert np.abs(copy - x[:n]).mean() < 0.2 * np.abs(x[:n] - x[:n].mean()).mean() + 1.0
    assert not np.allclose(x[n:2 * n], x[2 * n:3 * n])


def test_split_by_run_date(prepared, source, tmp_path):
    with h5py.File(prepared, "r") as f:
        val_start = int(f.attrs["val_start"].replace("-", ""))
        assert f.attrs["val_start"] == "2014-03-16"  # the last of 4 earlier run dates (10%, at least one)
        assert (f["train/date"][:] < val_start).all() and (f["test/date"][:] >= 20150101).all()
        assert ((f["val/date"][:] >= val_start) & (f["val/date"][:] < 20150101)).all()
        n_test, n_train, n_val = f.attrs["n_test"], f.attrs["n_train"], f.attrs["n_val"]
    none = ensure_prepared(make_cfg(tmp_path, source, **{"split.val_fraction": 0.0}), AUG)
    with h5py.File(none, "r") as f:
        assert f.attrs["n_val"] == 0 and f["val/x"].shape == (0, 3, 32, 32) and f.attrs["val_start"] == ""
        assert f.attrs["n_train"] == n_train + n_val and f.attrs["n_test"] == n_test
    half = ensure_prepared(make_cfg(tmp_path, source, **{"split.val_fraction": 0.5}), AUG)
    with h5py.File(half, "r") as f:
        assert f.attrs["val_start"] == "2011-10-21" and (f["val/date"][:] >= 20111021).all()
    later = ensure_prepared(make_cfg(tmp_path, source, **{"split.test_start": "2016-01-01"}), AUG)
    with h5py.File(later, "r") as f:
        assert (f["test/date"][:] >= 20160101).all() and (f["train/date"][:] < 20160101).all()
        assert 0 < f.attrs["n_test"] < n_test


def test_scaler_is_fitted_on_training_originals(prepared, source):
    train, val, test = reader(source, "train"), reader(source, "val"), reader(source, "test")
    with h5py.File(prepared, "r") as f:
        mean, std = f["scaler/mean"][:], f["scaler/std"][:]
    x = train.x.astype(np.float64)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(std, x.std(axis=(0, 2, 3)), rtol=1e-9)
    for other in (val, test):
        both = np.concatenate([x, other.x.astype(np.float64)])
        assert not np.allclose(mean, both.mean(axis=(0, 2, 3)), rtol=1e-4)


def test_reuse_and_rebuild(source, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tornado.prepare")
    cfg = make_cfg(tmp_path, source, multipliers=[1, 2])
    path, built = prepare(cfg, AUG)
    st = path.stat()
    again, built2 = prepare(cfg, AUG)
    assert built and not built2 and again == path
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert not [r for r in caplog.records if "also holds" in r.getMessage()]
    other = ensure_prepared(make_cfg(tmp_path, source, multipliers=[1, 2], **{"label.threshold": 0.004}), AUG)
    rotated = ensure_prepared(cfg, {**AUG, "rotation": 10.0})
    size = (path.stat().st_size + other.stat().st_size) / 1e6
    assert size < 1000 and caplog.records[-1].getMessage() == (
        f"{path.parent} also holds 2 prepared files of other settings or source files ({size:.0f} MB): delete those "
        "no longer needed (each file's settings: its HDF5 attributes)")
    assert len({path, other, rotated}) == 3
    with h5py.File(other, "r") as f:
        assert f.attrs["label_threshold"] == 0.004
    assert leftovers(tmp_path) == sorted(p.name for p in (path, other, rotated))


def test_a_killed_build_s_temp_file_is_cleared(source, tmp_path):
    cfg = make_cfg(tmp_path, source, multipliers=[1])
    path = ensure_prepared(cfg, AUG)
    path.unlink()
    stale = tmp_path / f".{path.name}.999999-dead.tmp"
    stale.write_bytes(b"half a file")
    assert ensure_prepared(cfg, AUG) == path
    assert leftovers(tmp_path) == [path.name]


def test_source_files_change_the_hash(source, tmp_path):
    sub = tmp_path / "src"
    sub.mkdir()
    for p in data.find_files(source)[1:]:
        (sub / p.name).symlink_to(p)
    a = ensure_prepared(make_cfg(tmp_path / "out", source, multipliers=[1]), AUG)
    b = ensure_prepared(make_cfg(tmp_path / "out", sub, multipliers=[1], **{"split.val_fraction": 0}), AUG)
    assert a != b


def test_source_files_rewritten_in_place_are_prepared_anew_and_copies_keeping_times_reuse(source, tmp_path):
    kept = tmp_path / "kept"
    shutil.copytree(source, kept)  # copies with their times, as cp -p
    path = ensure_prepared(make_cfg(tmp_path / "out", source, multipliers=[1]), AUG)
    assert ensure_prepared(make_cfg(tmp_path / "out", kept, multipliers=[1]), AUG) == path
    first = data.find_files(kept)[0]
    size = first.stat().st_size
    with netCDF4.Dataset(first, "a") as ds:  # every patch a tornado: the same size, other labels
        ds["RVORT1_MAX_future"][:] = 0.02
    assert first.stat().st_size == size
    changed = ensure_prepared(make_cfg(tmp_path / "out", kept, multipliers=[1]), AUG)
    assert changed != path
    with h5py.File(changed, "r") as f, h5py.File(path, "r") as g:
        assert f.attrs["positives_train"] > g.attrs["positives_train"]


@pytest.mark.parametrize("copies", ["duplicate", "augmented"])
def test_balance_adds_copies_of_the_positives(source, tmp_path, copies):
    balance = True if copies == "duplicate" else copies
    path = ensure_prepared(make_cfg(tmp_path, source, balance=balance, balance_ratio=0.5, multipliers=[1, 2]), AUG)
    train = reader(source, "train")
    pos = np.flatnonzero(train.y)
    n0, p, neg = len(train.y), len(pos), int((train.y == 0).sum())
    with h5py.File(path, "r") as f:
        n, added = f.attrs["n_train"], f.attrs["n_balance_added"]
        x, y = f["train/x"][:], f["train/y"][:]
        date, track = f["train/date"][:], f["train/track_id"][:]
        assert f.attrs["n_train_originals"] == n0 and f.attrs["positives_train"] == p + added
        assert f.attrs["positives_train_originals"] == p
        assert json.loads(f.attrs["balance"]) == {"enabled": True, "copies": copies, "ratio": 0.5,
                                                  "n_added": int(added)}
    assert added == round(0.5 * neg) - p and n == n0 + added and x.shape[0] == 2 * n
    assert (p + added) / neg == pytest.approx(0.5, abs=1 / neg)
    np.testing.assert_array_equal(x[:n0], train.x)
    assert (y[n0:n] == 1).all()
    src = pos[np.arange(added) % p]  # the positives, cycled
    np.testing.assert_array_equal(date[n0:], train.date[src])
    np.testing.assert_array_equal(track[n0:], train.track_id[src])
    if copies == "duplicate":  # exact: no interpolation smoothing that marks the positives' copies
        np.testing.assert_array_equal(x[n0:n], train.x[src])
    else:
        assert bool((x[n0:n] != train.x[src]).reshape(added, -1).any(axis=1).all())
    np.testing.assert_array_equal(y[n:], y[:n])  # copy 1 is a copy of the whole block, balance rows included


def test_float16_storage(prepared, source, tmp_path):
    half = ensure_prepared(make_cfg(tmp_path, source, dtype="float16"), AUG)
    with h5py.File(half, "r") as f, h5py.File(prepared, "r") as g:
        assert f["train/x"].dtype == np.float16 and f["test/x"].dtype == np.float16
        assert f.attrs["dtype"] == "float16" and half != prepared
        n = f.attrs["n_train"]
        # rounded to nearest, as numpy does (HDF5's own conversion gets some values near powers of two wrong)
        np.testing.assert_array_equal(f["train/x"][:n], g["train/x"][:n].astype(np.float16))
        np.testing.assert_array_equal(f["test/x"][:], g["test/x"][:].astype(np.float16))
        np.testing.assert_allclose(f["scaler/mean"][:], g["scaler/mean"][:])
        copy = f["train/x"][n:2 * n].astype(np.float32)
        np.testing.assert_allclose(copy, g["train/x"][n:2 * n], rtol=1e-2, atol=0.05)


def test_deterministic_for_a_seed(prepared, source, tmp_path):
    same = ensure_prepared(make_cfg(tmp_path / "a", source), AUG)
    other = ensure_prepared(make_cfg(tmp_path / "b", source, seed=1), AUG)
    with h5py.File(prepared, "r") as f, h5py.File(same, "r") as g, h5py.File(other, "r") as h:
        n = f.attrs["n_train"]
        np.testing.assert_array_equal(f["train/x"][:], g["train/x"][:])
        np.testing.assert_array_equal(f["train/x"][:n], h["train/x"][:n])
        assert not np.array_equal(f["train/x"][n:], h["train/x"][n:])


def test_synthetic_source_generated_once(tmp_path):
    cfg = make_cfg(tmp_path, None, multipliers=[1])
    path = ensure_prepared(cfg, AUG)
    folder = tmp_path / "synthetic"
    marker = json.loads((folder / "synth.json").read_text())
    assert marker["settings"] == {"days": 6, "patches_per_day": 60, "seed": 3}
    assert marker["files"] == sorted(p.name for p in folder.glob("NCARSTORM_*.nc")) and len(marker["files"]) == 6
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.nc")}
    assert ensure_prepared(cfg, AUG) == path
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.nc")} == mtimes
    with h5py.File(path, "r") as f:
        assert "synthetic" in f.attrs["source"] and json.loads(f.attrs["synth"])["seed"] == 3
    # other synth settings: the folder is regenerated (no stale files) and the prepared file differs
    cfg.synth = {"days": 5, "patches_per_day": 40, "seed": 4}
    other = ensure_prepared(cfg, AUG)
    assert other != path
    assert len(list(folder.glob("NCARSTORM_*.nc"))) == 5
    with h5py.File(other, "r") as f:
        assert f.attrs["n_train"] + f.attrs["n_val"] + f.attrs["n_test"] == 5 * 40


@pytest.mark.slow
def test_concurrent_callers_build_once(tmp_path):
    """Several jobs at once on a fresh out_dir: the synthetic set is made once, the file is built once."""
    script = (
        "import sys; from omegaconf import OmegaConf; from tornado.prepare import prepare\n"
        "cfg = OmegaConf.create(sys.argv[1]); aug = OmegaConf.create(sys.argv[2])\n"
        "p, built = prepare(cfg, aug); print(p, built)\n"
    )
    cfg = OmegaConf.to_yaml(make_cfg(tmp_path, None, multipliers=[1, 2, 4]))
    procs = [subprocess.Popen([sys.executable, "-c", script, cfg, OmegaConf.to_yaml(AUG)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    results = [o[0].split() for o in outs]
    assert len({r[0] for r in results}) == 1
    assert sorted(r[1] for r in results) == ["False", "False", "True"]
    assert leftovers(tmp_path) == [Path(results[0][0]).name]
    assert len(json.loads((tmp_path / "synthetic" / "synth.json").read_text())["files"]) == 6


# ---------------------------------------------------------------------------------------------- bad input
def copy_files(source, dest, n=None):
    dest.mkdir(parents=True, exist_ok=True)
    for p in data.find_files(source)[:n]:
        (dest / p.name).write_bytes(p.read_bytes())
    return dest


def write_small(path, size=16):
    """A file with every variable the reader wants, on a grid of the wrong size."""
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("p", 3)
        ds.createDimension("row", size)
        ds.createDimension("col", size)
        for name in (*data.CHANNELS, data.LABEL_VAR):
            ds.createVariable(name, "f4", ("p", "row", "col"))[:] = np.zeros((3, size, size))
        ds.createVariable(data.TRACK_VAR, "i4", ("p",))[:] = np.arange(3)


def corrupt(folder):
    (folder / "NCARSTORM_20120601-0000_d01_model_patches.nc").write_bytes(b"not a netcdf file" * 100)


def missing_variable(folder):
    path = data.find_files(folder)[1]
    with netCDF4.Dataset(path, "a") as ds:
        ds.renameVariable("V10_curr", "V10_gone")


def wrong_shape(folder):
    write_small(folder / "NCARSTORM_20120601-0000_d01_model_patches.nc")


BAD_FILES = {
    "corrupt file": (corrupt, "cannot be read as netCDF"),
    "missing variable": (missing_variable, "missing variable 'V10_curr'"),
    "wrong shape": (wrong_shape, "has shape 3x16x16"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_leave_nothing_behind(case, source, tmp_path):
    spoil, message = BAD_FILES[case]
    src = copy_files(source, tmp_path / "src")
    spoil(src)
    out = tmp_path / "out"
    with pytest.raises(TornadoError, match=message):
        ensure_prepared(make_cfg(out, src), AUG)
    assert leftovers(out) == [] and list(out.glob(".storms-*.lock")) == []  # nor the lock it made


def test_a_failed_build_removes_only_a_lock_it_made(source, tmp_path):
    from tornado.prepare import content_hash, parse_settings

    src = copy_files(source, tmp_path / "src")
    corrupt(src)
    cfg = make_cfg(tmp_path / "out", src)
    lock = tmp_path / "out" / f".storms-{content_hash(parse_settings(cfg, AUG), data.find_files(src))[:12]}.h5.lock"
    lock.parent.mkdir()
    lock.touch()  # there before: another process may hold it or wait on it
    with pytest.raises(TornadoError, match="cannot be read as netCDF"):
        ensure_prepared(cfg, AUG)
    assert lock.exists()


def test_a_lock_removed_by_its_failed_holder_is_taken_anew_by_a_process_waiting_on_it(tmp_path):
    import threading
    import time

    from tornado.records import locked

    path = tmp_path / ".x.lock"
    held, got = threading.Event(), []

    def waiter():
        held.wait(30)
        with locked(path) as fd:  # blocks on the file the holder removes
            got.append((os.fstat(fd).st_ino, path.stat().st_ino))

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    with pytest.raises(RuntimeError):
        with locked(path, discard_on_error=True):
            held.set()
            time.sleep(0.5)
            raise RuntimeError("a failed build")
    thread.join(30)
    assert len(got) == 1 and got[0][0] == got[0][1]  # it held the file others now lock, not the removed one
    assert path.exists()  # the waiter's: it did not fail


def test_a_lock_file_that_is_a_link_to_no_file_is_taken(tmp_path):
    import threading

    from tornado.records import locked

    path = tmp_path / ".x.lock"
    path.symlink_to(tmp_path / "elsewhere.lock")
    got = []

    def take():
        with locked(path):
            got.append(True)

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    thread.join(10)
    assert got == [True] and (tmp_path / "elsewhere.lock").exists()


BAD_SETTINGS = {
    "no positives": ({"label.threshold": 1e9}, "leaves no positive"),
    "empty test split": ({"split.test_start": "2030-01-01"}, "empty test split"),
    "empty training split": ({"split.test_start": "2000-01-01"}, "empty training split"),
    "bad date": ({"split.test_start": "soon"}, "split.test_start"),
    "validation fraction 1": ({"split.val_fraction": 1.0}, r"split.val_fraction: 1.0: must be a number in \[0, 1\)"),
    "validation fraction text": ({"split.val_fraction": "tenth"}, "split.val_fraction: 'tenth'"),
    "validation takes every date": ({"split.val_fraction": 0.9}, "leave none to train on"),
    "multiplier zero": ({"multipliers": [1, 0]}, "multipliers"),
    "multiplier fraction": ({"multipliers": [1, 1.5]}, "multipliers"),
    "multiplier not a list": ({"multipliers": "four"}, "multipliers"),
    "multipliers empty": ({"multipliers": []}, "multipliers"),
    "dtype": ({"dtype": "float64"}, "dtype"),
    "nonfinite": ({"nonfinite": "ignore"}, "nonfinite"),
    "balance ratio": ({"balance": True, "balance_ratio": 0}, "balance_ratio"),
    "balance value": ({"balance": 1}, r"balance: 1: must be false, true \(duplicates of the positives\) or augmented$"),
    "label reduce": ({"label.reduce": "median"}, "label.reduce"),
    "label a value": ({"label": 5}, r"^label: 5: must be a group of settings \(label.<key>=...\), not a value$"),
    "split a value": ({"split": "abc"}, r"^split: 'abc': must be a group of settings"),
    "synth a value": ({"synth": 5}, r"^synth: 5: must be a group of settings"),
    "unknown key": ({"foo": 1}, r"^foo: no such setting$"),
    "unknown label key": ({"label.treshold": 0.01},
                          r"^label.treshold: no such setting \(did you mean label.threshold\?\)$"),
    "unknown split key": ({"split.start": "2014-01-01"},
                          r"^split.start: no such setting \(did you mean split.test_start\?\)$"),
    "unknown key like none": ({"label.x": 1}, r"^label.x: no such setting$"),  # not `label.reduce`: only x is compared
    "unknown synth key": ({"synth.dayz": 3}, r"^synth.dayz: no such setting \(did you mean synth.days\?\)$"),  # unread
    # null and booleans as typed, not Python's None and True
    "null date": ({"split.test_start": None}, r"^split.test_start: null: not a date"),
    "null seed": ({"seed": None}, r"^seed: null: must be an integer >= 0$"),
    "boolean dtype": ({"dtype": True}, r"^dtype: true: must be one of"),
}


@pytest.mark.parametrize("case", sorted(BAD_SETTINGS))
def test_bad_settings_are_refused(case, source, tmp_path):
    over, message = BAD_SETTINGS[case]
    with pytest.raises(TornadoError, match=message):
        ensure_prepared(make_cfg(tmp_path, source, **over), AUG)
    assert leftovers(tmp_path) == []


def test_a_file_where_the_synthetic_set_goes_is_named(tmp_path):
    (tmp_path / "synthetic").write_text("a file")
    where = re.escape(str(tmp_path / "synthetic"))
    with pytest.raises(TornadoError, match=f"^out_dir: {where}: cannot create the synthetic set's folder there "
                                           f"\\({where} is a file\\)$"):
        ensure_prepared(make_cfg(tmp_path), AUG)


def test_an_out_dir_that_cannot_be_a_folder_is_named(source, tmp_path):
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(TornadoError, match=r"^out_dir: .*/taken: exists and is not a folder$"):
        ensure_prepared(make_cfg(tmp_path / "taken", source), AUG)
    for under in (tmp_path / "taken" / "data", tmp_path / "taken" / "data" / "storms"):
        why = re.escape(f"out_dir: {under}: cannot create it ({tmp_path / 'taken'} is a file)")
        with pytest.raises(TornadoError, match=f"^{why}$"):
            ensure_prepared(make_cfg(under, source), AUG)


def test_missing_folder_and_no_files(tmp_path):
    with pytest.raises(TornadoError, match="no such folder"):
        ensure_prepared(make_cfg(tmp_path / "out", tmp_path / "nowhere"), AUG)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TornadoError, match="no NCARSTORM"):
        ensure_prepared(make_cfg(tmp_path / "out", tmp_path / "empty"), AUG)
    with pytest.raises(TornadoError, match="no files match"):
        ensure_prepared(make_cfg(tmp_path / "out", tmp_path / "empty" / "*.nc"), AUG)
    assert leftovers(tmp_path / "out") == []


def test_bad_augment_settings(source, tmp_path):
    with pytest.raises(TornadoError, match="augment.rotation"):
        ensure_prepared(make_cfg(tmp_path, source), {**AUG, "rotation": -3})


def test_nonfinite_patches(source, tmp_path):
    src = copy_files(source, tmp_path / "src")
    path = data.find_files(src)[0]
    with netCDF4.Dataset(path, "a") as ds:
        u = ds.variables["U10_curr"][:]
        u[[2, 7], 5, 5] = np.nan
        ds.variables["U10_curr"][:] = u
    dropped = ensure_prepared(make_cfg(tmp_path / "out", src, multipliers=[1]), AUG)
    with h5py.File(dropped, "r") as f:
        assert f.attrs["n_dropped_nonfinite"] == 2
        assert f.attrs["n_train"] == len(reader(source, "train").y) - 2
        assert np.isfinite(f["train/x"][:]).all()
    assert read_meta(dropped)["n_dropped"] == 2  # what a run's result.json and page say
    with pytest.raises(TornadoError, match="2 of 60 patches are missing values"):
        ensure_prepared(make_cfg(tmp_path / "out", src, multipliers=[1], nonfinite="fail"), AUG)
    assert leftovers(tmp_path / "out") == [dropped.name]


@pytest.mark.parametrize("case", ["no patches", "every patch missing a value"])
def test_a_test_split_with_nothing_to_score_is_named_as_such(case, source, tmp_path):
    src = copy_files(source, tmp_path / "src")
    test = [f for f in data.find_files(src) if split_of(src)[f.name] == "test"]
    for path in test:
        if case == "no patches":
            path.unlink()
            with netCDF4.Dataset(path, "w") as ds:  # the same run date, without storms
                for dim, size in (("p", 0), ("row", 32), ("col", 32)):
                    ds.createDimension(dim, size)
                for name in (*data.CHANNELS, data.LABEL_VAR):
                    ds.createVariable(name, "f4", ("p", "row", "col"))
                ds.createVariable("track_id", "i4", ("p",))
        else:
            with netCDF4.Dataset(path, "a") as ds:
                ds["RVORT1_MAX_future"][:, 0, 0] = np.nan
    line = {"no patches": r"^source: the test files \(run dates from 2015-01-01\) in .* hold no patch$",
            "every patch missing a value": r"^nonfinite: every test patch \(run dates from 2015-01-01\) in .* is "
                                           r"missing values \(NaN, inf or a fill value\)$"}[case]
    with pytest.raises(TornadoError, match=line):
        ensure_prepared(make_cfg(tmp_path / "out", src, multipliers=[1]), AUG)
    assert leftovers(tmp_path / "out") == []


def test_a_file_that_looks_like_a_copy_of_another_is_named(source, tmp_path, caplog):

    src = copy_files(source, tmp_path / "src")
    first = data.find_files(src)[0]
    copy = first.with_name(first.stem + " (1).nc")
    shutil.copy(first, copy)
    caplog.set_level(logging.WARNING, logger="tornado.prepare")
    ensure_prepared(make_cfg(tmp_path / "out", src, multipliers=[1]), AUG)
    first, second = sorted([first, copy])
    assert [r.getMessage() for r in caplog.records] == [
        f"{first} and {second.name}: the same run date and size, one a copy of the other? Both are read"]


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "tornado.prepare", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
def test_cli_prepares_and_refuses(source, tmp_path):
    out = tmp_path / "out"
    ok = run_cli(f"source={source}", f"out_dir={out}", "multipliers=[1,2]")
    assert ok.returncode == 0, ok.stderr
    path = Path(ok.stdout.strip().splitlines()[-1])
    assert path.parent == out and path.exists()
    (log,) = (out / ".prepare-logs").iterdir()  # a run's log is kept, in a folder of its own (time and pid)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d-\d+", log.name) and (log / "prepare.log").exists()
    with h5py.File(path, "r") as f:
        assert list(f.attrs["multipliers"]) == [1, 2]

    bad = tmp_path / "bad"
    for args, message in [
        ([f"source={tmp_path / 'nowhere'}"], f"error: source: {tmp_path / 'nowhere'}: no such folder"),
        ([f"source={source}", "label.threshold=1e9"], "leaves no positive"),
        (["synth.dayz=3"], "error: synth.dayz: no such setting (did you mean synth.days?)"),
        (["+foo=1"], "error: foo: no such setting"),  # Hydra's `+` adds a key: none that prepare does not read
    ]:
        res = run_cli(*args, f"out_dir={bad}")
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
        assert not bad.exists()  # no lock, no log folder (its log held no more than the terminal showed): nothing
    bad.mkdir()  # a folder that was there before stays
    assert run_cli("+foo=1", f"out_dir={bad}").returncode == 2 and list(bad.iterdir()) == []


@pytest.mark.parametrize("how", ["", "++"])
def test_a_refused_command_keeps_a_log_folder_it_was_given(how, tmp_path):
    """hydra.run.dir= names a folder of the user's (maybe an earlier command's log in it): it stays as it was."""
    mine = tmp_path / "logs" / "mine"
    mine.mkdir(parents=True)
    (mine / "prepare.log").write_text("an earlier command's log\n")
    res = run_cli("+foo=1", f"out_dir={tmp_path / 'out'}", f"{how}hydra.run.dir={mine}")
    assert res.returncode == 2 and res.stderr == "error: foo: no such setting\n", res.stderr
    assert (mine / "prepare.log").read_text().startswith("an earlier command's log\n")


@pytest.mark.parametrize("value", ["null", ""])
def test_cli_refuses_an_out_dir_naming_no_folder_without_making_one_for_its_log(value, tmp_path):
    """`out_dir=$DATA` with DATA unset: the log went to `None/` or `/` (.prepare-logs under ${out_dir})."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    (tmp_path / "cwd").mkdir()
    res = subprocess.run([sys.executable, "-m", "tornado.prepare", f"out_dir={value}"], cwd=tmp_path / "cwd", env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr == "error: out_dir: must name a folder\n"
    assert list((tmp_path / "cwd").iterdir()) == [] and list((tmp_path / "tmp").iterdir()) == []  # its log removed


@pytest.mark.parametrize("args, line", [
    (["source=${oc.env:TORNADO_NOPE}"], "error: source: KeyError raised while resolving interpolation: "
                                         "\"Environment variable 'TORNADO_NOPE' not found\""),
    (["out_dir=${oc.env:TORNADO_NOPE}"], "error: out_dir: KeyError raised while resolving interpolation: "
                                         "\"Environment variable 'TORNADO_NOPE' not found\""),
    (["seed=${seed}"], "error: seed: Recursive interpolation detected"),
    (["out_dir=[a]"], "error: out_dir: ['a']: must name a folder"),  # not a folder named "['a']"
    (["source=[a]"], "error: source: ['a']: must name a folder or a glob of files"),
    (["out_dir={cwd}/a_file"], "error: out_dir: {cwd}/a_file: exists and is not a folder"),
    (["out_dir={cwd}/a_file/data"], "error: out_dir: {cwd}/a_file/data: cannot create it ({cwd}/a_file is a file)"),
    # a removed setting: not parse_settings' own default (no validation split, not the configured 0.1)
    (["~split.val_fraction"], "error: split.val_fraction: missing: tornado.prepare needs this setting"),
    (["~out_dir"], "error: out_dir: missing: tornado.prepare needs this setting"),
    (["~augment.rotation"], "error: augment.rotation: missing: tornado.prepare needs this setting"),
    (["~augment"], "error: augment: missing: tornado.prepare needs this group of settings"),
    (["hydra.run.dir="], "error: hydra.run.dir=: must name a folder (leave the setting out for the default)"),
])
def test_cli_refuses_settings_that_name_no_folder_in_one_line_and_leaves_nothing(args, line, tmp_path):
    """Each said in the command's words (not Hydra's traceback, nor its log folder's under out_dir), and its log folder
    removed as for any refused command."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path / "tmp")}
    cwd = tmp_path / "cwd"
    for folder in (tmp_path / "tmp", cwd):
        folder.mkdir()
    (cwd / "a_file").write_text("not a folder")
    res = subprocess.run([sys.executable, "-m", "tornado.prepare", *(a.replace("{cwd}", str(cwd)) for a in args)],
                         cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr == line.replace("{cwd}", str(cwd)) + "\n", res.stderr[-2000:]
    assert [p.name for p in cwd.iterdir()] == ["a_file"] and list((tmp_path / "tmp").iterdir()) == []


def test_a_killed_synthetic_generation_s_temp_files_are_cleared(tmp_path):
    """SIGTERM mid-generation leaves synth.write_file's `.NCARSTORM_*.nc.RANDOM.tmp`; the next generation removes it."""
    from tornado.prepare import synthetic_source

    folder = tmp_path / "synthetic"
    folder.mkdir()
    stale = folder / ".NCARSTORM_20110401-0000_d01_model_patches.nc.k1ll3d.tmp"
    stale.write_bytes(b"half a file")             # no synth.json: the killed run never finished
    other = folder / "notes.tmp"                  # not a synthetic temp file: left alone
    other.write_text("mine")
    with synthetic_source(tmp_path, {"days": 2, "patches_per_day": 10, "seed": 1}) as got:
        assert got == folder
    assert not stale.exists() and other.exists()
    assert not [p.name for p in folder.glob(".*.tmp")]
    assert len(list(folder.glob("NCARSTORM_*.nc"))) == 2


def test_progress_bars_on_a_terminal_only(tmp_path, on_terminal):
    args = ["synth.days=12", "synth.patches_per_day=40"]
    rc, text = on_terminal(["tornado.prepare", f"out_dir={tmp_path / 'tty'}", *args])
    assert rc == 0, text[-2000:]
    assert "synthetic storms:" in text and " files" in text and "reading:" in text and "augmenting:" in text
    p = subprocess.run([sys.executable, "-m", "tornado.prepare", f"out_dir={tmp_path / 'piped'}", *args],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "reading:" not in p.stdout + p.stderr and "synthetic storms:" not in p.stdout + p.stderr


@pytest.mark.parametrize("key, value, least", [("days", 0, 1), ("patches_per_day", 0, 1), ("seed", -1, 0)])
def test_synthetic_settings_below_their_least_are_refused(tmp_path, key, value, least):
    from tornado.prepare import parse_settings

    with pytest.raises(TornadoError, match=rf"^synth.{key}: {value}: must be an integer >= {least}$"):
        parse_settings(make_cfg(tmp_path, **{f"synth.{key}": value}), AUG)
    assert parse_settings(make_cfg(tmp_path, **{f"synth.{key}": least}), AUG).synth[key] == least


def test_the_run_date_test_start_names_is_the_first_of_the_test_split(source, tmp_path):
    first = min(d for d in map(data.run_date, data.find_files(source)) if d >= TEST_START)
    path = ensure_prepared(make_cfg(tmp_path, source, **{"split.test_start": first.isoformat()}), AUG)
    day = int(first.strftime("%Y%m%d"))
    with h5py.File(path, "r") as f:
        assert f["test/date"][:].min() == day
        assert (f["train/date"][:] < day).all() and (f["val/date"][:] < day).all()


def test_balance_adds_nothing_where_the_positives_already_reach_the_ratio(source, tmp_path):
    train = reader(source, "train")
    path = ensure_prepared(make_cfg(tmp_path, source, balance=True, balance_ratio=0.001, multipliers=[1]), AUG)
    with h5py.File(path, "r") as f:
        assert f.attrs["n_balance_added"] == 0 and f.attrs["n_train"] == len(train.y)
        np.testing.assert_array_equal(f["train/x"][:], train.x)
        np.testing.assert_array_equal(f["train/y"][:], train.y)
