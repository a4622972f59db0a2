"""Synthetic NCARSTORM files: format fidelity, physical structure, label rates, determinism and the CLI."""
import datetime as dt
import subprocess
import sys
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import xarray as xr
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from tornado import synth
from tornado.data import UNFINISHED, LabelRule, find_files, read_storms, run_date
from tornado.errors import TornadoError

GRID_F32 = ("REFL_COM_curr", "U10_curr", "V10_curr", "T2_curr", "RVORT1_MAX_future", "HAIL_MAXK1_future",
            "lon", "lat", "x", "y")
GRID_I32 = ("i", "j", "masks")
PATCH_VARS = {"time": "i4", "centroid_lon": "f4", "centroid_lat": "f4", "centroid_i": "f4", "centroid_j": "f4",
              "track_id": "i4", "track_step": "i4"}
PAPER = LabelRule(reduce="mean", threshold=0.008, inclusive=True)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("small")
    return synth.generate(out, days=3, patches_per_day=80, seed=5)


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A few thousand patches, for label rates and learnability."""
    out = tmp_path_factory.mktemp("big")
    synth.generate(out, days=10, patches_per_day=400, seed=11)
    return read_storms(out), read_storms(out, label=PAPER)


def test_files_have_the_ncarstorm_layout(small):
    assert [p.name for p in small] == sorted(p.name for p in small)
    for path in small:
        assert path.name == f"NCARSTORM_{run_date(path):%Y%m%d}-0000_d01_model_patches.nc"
        d = run_date(path)
        with netCDF4.Dataset(path) as ds:
            assert ds.data_model == "NETCDF4"
            assert {k: len(v) for k, v in ds.dimensions.items()} == {"p": 80, "row": 32, "col": 32}
            assert set(ds.variables) == set(GRID_F32) | set(GRID_I32) | set(PATCH_VARS)
            for v in GRID_F32 + GRID_I32:
                assert ds[v].dimensions == ("p", "row", "col")
                assert ds[v].dtype == (np.float32 if v in GRID_F32 else np.int32), v
            for v, kind in PATCH_VARS.items():
                assert ds[v].dimensions == ("p",) and ds[v].dtype == np.dtype(kind), v
            assert ds.Conventions == "CF-1.6"
            assert ds.title == f"NCARSTORM Storm Patches for run {d:%Y%m%d}-0000 member d01"
            assert ds.object_variable == "REFL_COM"
            assert ds["time"].units == f"hours since {d:%Y-%m-%d} 00:00:00"
        with xr.open_dataset(path) as xds:
            assert np.issubdtype(xds["time"].dtype, np.datetime64)
            hours = (xds["time"].values - np.datetime64(d, "ns")) / np.timedelta64(1, "h")
            with netCDF4.Dataset(path) as ds:
                np.testing.assert_array_equal(hours, ds["time"][:])
            assert (hours >= 12).all() and (hours <= 35).all()


def test_georeference_is_consistent(small):
    with netCDF4.Dataset(small[0]) as ds:
        v = {k: np.asarray(ds[k][:]) for k in ds.variables}
    assert (v["lon"] > -110).all() and (v["lon"] < -80).all()
    assert (v["lat"] > 28).all() and (v["lat"] < 48).all()
    # row runs south -> north, col west -> east, 3 km apart; i, j are the grid indices of x, y
    np.testing.assert_array_equal(np.diff(v["i"], axis=1), 1)
    np.testing.assert_array_equal(np.diff(v["j"], axis=2), 1)
    np.testing.assert_array_equal(v["x"], v["j"] * 3000.0)
    np.testing.assert_array_equal(v["y"], v["i"] * 3000.0)
    assert (np.diff(v["lat"], axis=1) > 0).all() and (np.diff(v["lon"], axis=2) > 0).all()
    dlat_km = np.diff(v["lat"], axis=1) * np.pi / 180 * 6371
    np.testing.assert_allclose(dlat_km, 3.0, rtol=1e-3)
    # centroid: inside the storm object, reflectivity-weighted
    w = v["REFL_COM_curr"] * v["masks"]
    ci = (w * v["i"]).sum(axis=(1, 2)) / w.sum(axis=(1, 2))
    np.testing.assert_allclose(v["centroid_i"], ci, atol=1e-3)
    nearest = (np.abs(v["lat"] - v["centroid_lat"][:, None, None])
               + np.abs(v["lon"] - v["centroid_lon"][:, None, None]))
    k = nearest.reshape(len(ci), -1).argmin(axis=1)
    assert (np.abs(v["i"].reshape(len(ci), -1)[np.arange(len(ci)), k] - v["centroid_i"]) <= 1).all()


def test_storm_structure(small):
    with netCDF4.Dataset(small[1]) as ds:
        v = {k: np.asarray(ds[k][:]) for k in ds.variables}
    refl, mask = v["REFL_COM_curr"], v["masks"]
    assert set(np.unique(mask)) == {0, 1}
    assert (refl[mask == 1] >= 40).all()  # the object is the >= 40 dBZ region of the main cell
    assert (mask.sum(axis=(1, 2)) > 0).all()
    assert (refl.max(axis=(1, 2)) >= 40).all() and refl.min() >= 0 and refl.max() <= 75
    assert np.median(refl[:, :4, :4]) < 25  # a low background at the corners
    speed = np.hypot(v["U10_curr"].mean(axis=(1, 2)), v["V10_curr"].mean(axis=(1, 2)))
    assert 2 < np.median(speed) < 16
    assert 260 < v["T2_curr"].min() and v["T2_curr"].max() < 315
    hail = v["HAIL_MAXK1_future"]
    assert hail.min() >= 0 and (hail == 0).mean() > 0.5 and hail.max() > 0
    assert (refl[hail > 0] > 40).mean() > 0.95
    assert (v["RVORT1_MAX_future"] > 0).all()
    # tracks: consecutive steps of one track are consecutive hours
    tid, step, time = v["track_id"], v["track_step"], v["time"]
    for t in np.unique(tid):
        sel = tid == t
        assert step[sel].tolist() == list(range(sel.sum()))
        assert (np.diff(time[sel]) == 1).all()


def test_label_rates(big):
    default, paper = big
    n = len(default.y)
    assert n == 4000
    assert 0.03 <= default.y.mean() <= 0.08
    assert 0 < paper.y.sum() < default.y.sum()
    assert (paper.y <= default.y).all()  # mean >= 0.008 implies max > 0.005


def test_labels_are_learnable_from_the_wind(big):
    storms, _ = big
    u, v = storms.x[:, 1].astype(np.float64), storms.x[:, 2].astype(np.float64)
    curl = np.gradient(v, axis=2) - np.gradient(u, axis=1)
    flat = np.sort(curl.reshape(len(curl), -1), axis=1)
    feats = np.stack([flat[:, -1], flat[:, -10:].mean(1), flat[:, 0], curl.mean((1, 2)),
                      storms.x[:, 0].max((1, 2))], axis=1)
    feats = (feats - feats.mean(0)) / feats.std(0)
    train = storms.date < np.sort(np.unique(storms.date))[7]  # first 7 run dates
    model = LogisticRegression(max_iter=500).fit(feats[train], storms.y[train])
    auc = roc_auc_score(storms.y[~train], model.predict_proba(feats[~train])[:, 1])
    assert 0.7 < auc < 0.99


def test_run_dates_split_and_range():
    dates = synth.run_dates(40, seed=3)
    assert dates == sorted(set(dates)) and len(dates) == 40
    assert dt.date(2010, 10, 24) <= dates[0] and dates[-1] <= dt.date(2017, 3, 29)
    assert sum(d >= dt.date(2015, 1, 1) for d in dates) == 10
    for days in (2, 3, 5):
        for seed in range(5):
            ds = synth.run_dates(days, seed)
            n_test = sum(d >= dt.date(2015, 1, 1) for d in ds)
            assert 1 <= n_test <= days - 1
    assert synth.run_dates(1, 0, start="2012-05-01", end="2012-05-01") == [dt.date(2012, 5, 1)]
    assert synth.run_dates(7, 9) == synth.run_dates(7, 9) != synth.run_dates(7, 10)


def test_same_seed_same_data(tmp_path):
    a = synth.generate(tmp_path / "a", days=2, patches_per_day=30, seed=4)
    b = synth.generate(tmp_path / "b", days=2, patches_per_day=30, seed=4)
    c = synth.generate(tmp_path / "c", days=2, patches_per_day=30, seed=5)
    assert [p.name for p in a] == [p.name for p in b]
    for fa, fb in zip(a, b):
        with netCDF4.Dataset(fa) as da, netCDF4.Dataset(fb) as db:
            for var in da.variables:
                np.testing.assert_array_equal(da[var][:], db[var][:], err_msg=var)
    assert [p.name for p in a] != [p.name for p in c]
    with netCDF4.Dataset(a[0]) as da, netCDF4.Dataset(c[0]) as dc:
        assert not np.array_equal(da["REFL_COM_curr"][:], dc["REFL_COM_curr"][:])


def test_writes_are_atomic(tmp_path):
    paths = synth.generate(tmp_path, days=2, patches_per_day=10, seed=0)
    assert sorted(tmp_path.iterdir()) == sorted([*paths, tmp_path / ".synth.lock"])  # no temp files left behind
    fields = synth.storm_fields(np.random.default_rng(0), 10, dt.date(2012, 5, 1))
    del fields["track_step"]  # fails at the very end of the write
    target = tmp_path / synth.file_name(dt.date(2012, 5, 1))
    with pytest.raises(KeyError):
        synth.write_file(target, dt.date(2012, 5, 1), fields)
    assert not target.exists() and sorted(tmp_path.iterdir()) == sorted([*paths, tmp_path / ".synth.lock"])


def test_a_folder_synth_was_stopped_writing_is_refused_as_a_source_until_completed(tmp_path, monkeypatch):
    write = synth.write_file
    written = []

    def stop_after_two(path, run, fields):
        if len(written) == 2:
            raise KeyboardInterrupt
        write(path, run, fields)
        written.append(path)

    monkeypatch.setattr(synth, "write_file", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        synth.generate(tmp_path, days=4, patches_per_day=5, seed=0)
    assert len(list(tmp_path.glob("NCARSTORM_*.nc"))) == 2
    with pytest.raises(TornadoError, match=r"^source: .*: tornado.synth was stopped while writing this folder; "
                                           r"run it again to complete it$"):
        find_files(tmp_path)
    for source in (str(tmp_path / "NCARSTORM_*.nc"), written[0]):  # a glob, a file: the same folder
        with pytest.raises(TornadoError, match="tornado.synth was stopped while writing this folder"):
            find_files(source)
    monkeypatch.setattr(synth, "write_file", write)
    paths = synth.generate(tmp_path, days=4, patches_per_day=5, seed=0)
    assert find_files(tmp_path) == paths and len(paths) == 4
    assert sorted(tmp_path.iterdir()) == sorted([*paths, tmp_path / ".synth.lock"])  # the mark is gone


@pytest.mark.parametrize("kwargs, match", [
    ({"days": 0}, "synth.days"),
    ({"patches_per_day": -1}, "synth.patches_per_day"),
    ({"start": "2013-01-01", "end": "2012-01-01"}, "after"),
    ({"start": "2012-01-01", "end": "2012-01-03", "days": 4}, "only 3 dates"),
    ({"start": "May 2012"}, "synth.start"),
])
def test_generate_refuses_bad_settings(tmp_path, kwargs, match):
    with pytest.raises(TornadoError, match=match):
        synth.generate(tmp_path, **{"days": 2, "patches_per_day": 5, **kwargs})


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "tornado.synth", *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=120)


def test_cli_writes_files(tmp_path):
    out = tmp_path / "syn"
    r = run_cli(f"out_dir={out}", "days=2", "patches_per_day=12", "seed=3")
    assert r.returncode == 0, r.stderr
    files = find_files(out)
    assert len(files) == 2 and str(out) in r.stdout
    assert len(read_storms(out).y) == 24


def test_cli_help_prints_usage():
    r = run_cli("--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: python -m tornado.synth [out_dir=data/synthetic]") \
        and not r.stderr


def test_cli_refuses_a_folder_with_other_storm_files(tmp_path):
    out = tmp_path / "syn"
    assert run_cli(f"out_dir={out}", "days=2", "patches_per_day=12", "seed=3").returncode == 0
    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    again = run_cli(f"out_dir={out}", "days=2", "patches_per_day=12", "seed=3")  # the same files: rewritten
    assert again.returncode == 0 and "wrote 2 NCARSTORM files" in again.stdout
    r = run_cli(f"out_dir={out}", "days=1", "patches_per_day=12", "seed=4")  # other dates beside those two
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: out_dir: {out} already holds 2 other NCARSTORM files (e.g. NCARSTORM_")
    assert sorted(out.iterdir()) == sorted(before)


def test_a_second_writer_into_the_same_folder_is_refused_while_the_first_writes(tmp_path):
    import fcntl

    from tornado.records import locked

    with locked(tmp_path / ".synth.lock", fcntl.LOCK_EX):  # as a tornado.synth writing there holds it
        with pytest.raises(TornadoError, match=f"^out_dir: {tmp_path}: another tornado.synth is writing there; "
                                               "wait for it to end$"):
            synth.generate(tmp_path, days=1, patches_per_day=2)
        assert [p.name for p in tmp_path.iterdir()] == [".synth.lock"]
    assert len(synth.generate(tmp_path, days=1, patches_per_day=2)) == 1 and not (tmp_path / UNFINISHED).exists()


def test_a_folder_it_cannot_write_is_refused_naming_out_dir(tmp_path, monkeypatch):
    def refused(path, *a, **k):  # a folder of someone else's (root writes anywhere, so the refusal is made up)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(synth, "locked", refused)
    with pytest.raises(TornadoError, match=f"^out_dir: {tmp_path}: cannot write there \\(Permission denied\\)$"):
        synth.generate(tmp_path, days=1, patches_per_day=2)
    assert list(tmp_path.iterdir()) == []


def test_an_empty_out_dir_is_refused_not_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # `out_dir=$DATA` with DATA unset
    with pytest.raises(TornadoError, match="^out_dir: must name a folder$"):
        synth.main(["out_dir=", "days=1", "patches_per_day=2"])
    assert list(tmp_path.iterdir()) == []


def test_an_out_dir_under_a_file_is_refused_naming_out_dir_and_the_file(tmp_path):
    (tmp_path / "taken").write_text("")
    for under in (tmp_path / "taken" / "x", tmp_path / "taken" / "x" / "y"):
        r = run_cli(f"out_dir={under}", "days=1", "patches_per_day=2")
        assert r.returncode == 2 and r.stderr == (f"error: out_dir: {under}: cannot create it ({tmp_path / 'taken'} "
                                                  "is a file)\n"), r.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]


def test_cli_refuses_the_set_training_manages(tmp_path):
    from tornado.prepare import synthetic_source

    with synthetic_source(tmp_path, {"days": 2, "patches_per_day": 10, "seed": 1}) as managed:
        before = {p: p.stat().st_mtime_ns for p in managed.iterdir()}
    for killed in (False, True):  # True: as a generation by training left it when killed
        if killed:
            (managed / "synth.json").unlink()
            before.pop(managed / "synth.json")
        r = run_cli(f"out_dir={managed}", "days=2", "patches_per_day=5", "seed=1")  # same names, other contents
        assert r.returncode == 2 and r.stderr.strip().splitlines() == [
            f"error: out_dir: {managed} is the synthetic set that training generates and manages: "
            "choose another folder, and train on it with data.source="]
        assert {p: p.stat().st_mtime_ns for p in managed.iterdir()} == before


def test_cli_refuses_a_training_run_s_folder_as_such(tmp_path):
    from tornado.records import hold

    run = tmp_path / "run"
    run.mkdir()
    hold(run / ".lock").close()  # as tornado.train leaves its run's folder
    with pytest.raises(TornadoError, match=f"^out_dir: {run} is a training run's folder \\(its .lock is "
                                           r"tornado.train's\): choose another folder$"):
        synth.main([f"out_dir={run}", "days=1", "patches_per_day=2"])
    assert [p.name for p in run.iterdir()] == [".lock"]


@pytest.mark.parametrize("args, line", [
    (["days=0"], "days: 0: must be an integer >= 1"),
    (["seed=-1"], "seed: -1: must be an integer >= 0"),
    (["start=May 2012"], "start: 'May 2012': not a date (YYYY-MM-DD)"),
    (["start=2013-01-01", "end=2012-01-01"], "start: 2013-01-01 is after end 2012-01-01"),
    (["days=4", "start=2012-01-01", "end=2012-01-03"], "days: 4: only 3 dates between 2012-01-01 and 2012-01-03"),
])
def test_cli_errors_name_the_arguments_as_typed(tmp_path, args, line):
    """`days=0` on the command line is `days`, not prepare's `synth.days`."""
    with pytest.raises(TornadoError) as e:
        synth.main([f"out_dir={tmp_path / 'syn'}", "patches_per_day=2", *args])
    assert str(e.value) == line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("arg, match", [("bogus=1", "error: bogus=1: unknown argument (python -m tornado.synth ["),
                                         ("dayz=2", "unknown argument (did you mean days? "),
                                         ("days=many", "error: days: 'many': must be an integer"),
                                         ("seed", "error: seed: expected key=value (python -m tornado.synth [")])
def test_cli_bad_argument(tmp_path, arg, match):
    r = run_cli(f"out_dir={tmp_path}", arg)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0]
    assert list(tmp_path.iterdir()) == []
