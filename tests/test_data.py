"""The NCARSTORM reader: round trip against netCDF4, label rules, and every bad-input case."""
import datetime as dt
import logging
import shutil

import netCDF4
import numpy as np
import pytest
from omegaconf import OmegaConf

from tornado import synth
from tornado.data import (CHANNELS, LABEL_VAR, LabelRule, StormFile, count_patches, find_files,
                          iter_storm_files, read_file, read_storms, run_date)
from tornado.errors import TornadoError

DAYS, PER_DAY = 4, 60


@pytest.fixture(scope="module")
def storm_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("storms")
    synth.generate(out, days=DAYS, patches_per_day=PER_DAY, seed=1)
    return out


def write_minimal(path, p=6, size=32, skip=(), nan_patches=(), inf_patches=(), seed=0):
    """A small NCARSTORM-like file holding only what the reader needs."""
    rng = np.random.default_rng(seed)
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("p", p)
        ds.createDimension("row", size)
        ds.createDimension("col", size)
        for name in CHANNELS + (LABEL_VAR,):
            if name in skip:
                continue
            data = rng.normal(0, 1, (p, size, size)).astype(np.float32)
            if name == LABEL_VAR:
                data = np.abs(data) * 0.004
            if name == CHANNELS[1]:
                data[list(nan_patches), 3, 4] = np.nan
                data[list(inf_patches), 0, 0] = np.inf
            ds.createVariable(name, "f4", ("p", "row", "col"))[:] = data
        if "track_id" not in skip:
            ds.createVariable("track_id", "i4", ("p",))[:] = np.arange(p)
    return path


def name(day="20120502"):
    return f"NCARSTORM_{day}-0000_d01_model_patches.nc"


# --- round trip ---------------------------------------------------------------------------------------------

def test_read_storms_matches_file_contents(storm_dir):
    files = find_files(storm_dir)
    assert len(files) == DAYS and files == sorted(files)
    storms = read_storms(storm_dir)
    n = DAYS * PER_DAY
    assert storms.x.shape == (n, 3, 32, 32) and storms.x.dtype == np.float32
    assert storms.y.shape == (n,) and storms.y.dtype == np.uint8
    assert storms.date.dtype == np.int32 and storms.track_id.dtype == np.int64
    assert storms.n_dropped == 0
    for k, f in enumerate(files):
        rows = slice(k * PER_DAY, (k + 1) * PER_DAY)
        with netCDF4.Dataset(f) as ds:
            for c, var in enumerate(("REFL_COM_curr", "U10_curr", "V10_curr")):
                np.testing.assert_array_equal(storms.x[rows, c], ds[var][:])
            future = np.asarray(ds["RVORT1_MAX_future"][:])
            np.testing.assert_array_equal(storms.track_id[rows], ds["track_id"][:])
        np.testing.assert_array_equal(storms.y[rows], (future.max(axis=(1, 2)) > 0.005).astype(np.uint8))
        d = run_date(f)
        assert (storms.date[rows] == d.year * 10000 + d.month * 100 + d.day).all()
    assert 0 < storms.y.sum() < n  # both classes present, so the comparison above means something


def test_iter_storm_files_and_count(storm_dir):
    files = find_files(storm_dir)
    assert count_patches(files) == DAYS * PER_DAY
    rule = LabelRule("mean", 0.001, True)
    seen = list(iter_storm_files(files, label=rule))
    assert [s.path for s in seen] == files
    for s in seen:
        assert isinstance(s, StormFile) and s.date == run_date(s.path)
        assert s.x.shape == (PER_DAY, 3, 32, 32) and s.n_dropped == 0
        with netCDF4.Dataset(s.path) as ds:
            mean = np.asarray(ds[LABEL_VAR][:]).mean(axis=(1, 2), dtype=np.float64)
        np.testing.assert_array_equal(s.y, (mean >= 0.001).astype(np.uint8))


def test_read_storms_accepts_glob_and_list(storm_dir):
    files = find_files(storm_dir)
    by_glob = read_storms(str(storm_dir / "NCARSTORM_*.nc"))
    by_list = read_storms(files[1:3])
    assert len(by_glob.y) == DAYS * PER_DAY
    assert find_files(files[2]) == [files[2]]
    assert len(by_list.y) == 2 * PER_DAY
    np.testing.assert_array_equal(by_list.x, by_glob.x[PER_DAY:3 * PER_DAY])


def test_run_date():
    assert run_date("/a/NCARSTORM_20130520-0000_d01_model_patches.nc") == dt.date(2013, 5, 20)
    for bad in ("storms_20130520.nc", "NCARSTORM_20131340-0000_d01_model_patches.nc"):
        with pytest.raises(TornadoError, match=bad):
            run_date(f"/a/{bad}")


# --- label rules ----------------------------------------------------------------------------------------------

def test_label_rule_max_and_mean():
    field = np.zeros((4, 32, 32), np.float32)
    field[1, 5, 5] = 0.005  # max exactly at the threshold
    field[2, 7, 9] = 0.02  # one hot pixel: max positive, mean tiny
    field[3] = 0.008  # uniform: mean exactly 0.008
    assert LabelRule().apply(field).tolist() == [0, 0, 1, 1]
    assert LabelRule(inclusive=True).apply(field).tolist() == [0, 1, 1, 1]
    paper = LabelRule(reduce="mean", threshold=0.008, inclusive=True)
    assert paper.apply(field).tolist() == [0, 0, 0, 1]
    assert LabelRule(reduce="mean", threshold=0.008).apply(field).tolist() == [0, 0, 0, 0]
    assert paper.apply(field).dtype == np.uint8


def test_label_rule_from_cfg():
    cfg = OmegaConf.create({"reduce": "mean", "threshold": 0.008, "inclusive": True})
    assert LabelRule.from_cfg(cfg) == LabelRule("mean", 0.008, True)
    assert LabelRule.from_cfg({"threshold": 1}) == LabelRule("max", 1.0, False)
    with pytest.raises(TornadoError, match="median"):
        LabelRule.from_cfg({"reduce": "median"})
    with pytest.raises(TornadoError, match="inclusive"):
        LabelRule.from_cfg({"inclusive": "yes"})


def test_unknown_reduce_is_refused():
    with pytest.raises(TornadoError, match="label.reduce: 'median': must be one of max, mean"):
        LabelRule(reduce="median")
    rule = LabelRule()
    object.__setattr__(rule, "reduce", "sum")  # altered after construction
    with pytest.raises(TornadoError, match="label.reduce: 'sum'"):
        rule.apply(np.zeros((2, 32, 32), np.float32))


# --- bad input ---------------------------------------------------------------------------------------------------

def test_missing_and_empty_folder(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(TornadoError, match=str(missing)):
        find_files(missing)
    with pytest.raises(TornadoError, match=str(missing)):
        read_storms(missing)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(TornadoError, match="empty"):
        find_files(tmp_path / "empty")
    with pytest.raises(TornadoError, match="no files match"):
        find_files(str(tmp_path / "empty" / "*.nc"))


def test_a_link_to_nowhere_is_named(storm_dir, tmp_path):
    (tmp_path / name()).symlink_to(tmp_path / "unmounted" / name())
    with pytest.raises(TornadoError, match=f"{tmp_path / name()}: a link to .*/unmounted/.*, which does not exist$"):
        find_files(tmp_path)
    with pytest.raises(TornadoError, match=f"{tmp_path / name()}: a link to .*/unmounted/.*, which does not exist$"):
        find_files(str(tmp_path / "*.nc"))  # data.source as a pattern


def test_truncated_file(storm_dir, tmp_path):
    src = find_files(storm_dir)[0]
    bad = tmp_path / src.name
    blob = src.read_bytes()
    bad.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(TornadoError, match=str(bad)):
        read_storms(tmp_path)


def test_not_netcdf(tmp_path):
    bad = tmp_path / name()
    bad.write_text("this is not a netCDF file\n" * 50)
    with pytest.raises(TornadoError, match=f"{bad}: cannot be read as netCDF"):
        read_storms(tmp_path)
    with pytest.raises(TornadoError, match=str(bad)):
        count_patches([bad])


def test_missing_variable(tmp_path):
    for var in ("V10_curr", LABEL_VAR, "track_id"):
        f = write_minimal(tmp_path / name(), skip=(var,))
        with pytest.raises(TornadoError, match=f"{f}: missing variable '{var}'"):
            read_file(f)


def test_wrong_patch_shape(tmp_path):
    f = write_minimal(tmp_path / name(), size=16)
    with pytest.raises(TornadoError, match=f"{f}: .*shape 6x16x16, expected 6x32x32"):
        read_storms([f])
    with netCDF4.Dataset(write_minimal(f, skip=("U10_curr",)), "a") as ds:  # a level too many: its shape named
        ds.createDimension("level", 2)
        ds.createVariable("U10_curr", "f4", ("p", "level", "row", "col"))
    with pytest.raises(TornadoError, match=f"{f}: variable 'U10_curr' has shape 6x2x32x32, expected 6x32x32$"):
        read_storms([f])


def test_nonfinite_dropped_and_counted(tmp_path, caplog):
    good = write_minimal(tmp_path / name("20120501"), seed=1)
    bad = write_minimal(tmp_path / name("20120502"), nan_patches=(1, 4), inf_patches=(4, 5), seed=2)
    with caplog.at_level(logging.WARNING, logger="tornado.data"):
        storms = read_storms(tmp_path)
    assert storms.n_dropped == 3 and len(storms.y) == 9
    assert np.isfinite(storms.x).all()
    assert storms.track_id.tolist() == list(range(6)) + [0, 2, 3]
    assert storms.date.tolist() == [20120501] * 6 + [20120502] * 3
    with netCDF4.Dataset(bad) as ds:
        np.testing.assert_array_equal(storms.x[6:, 0], ds["REFL_COM_curr"][[0, 2, 3]])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(bad) in warnings[0] and "dropped 3 of 6" in warnings[0]
    assert read_file(good).n_dropped == 0


def test_a_patch_whose_label_field_misses_a_value_is_dropped_too(tmp_path):
    f = write_minimal(tmp_path / name())
    with netCDF4.Dataset(f, "a") as ds:
        ds[LABEL_VAR][3, 5, 5] = np.nan
    got = read_file(f)
    assert got.n_dropped == 1 and got.track_id.tolist() == [0, 1, 2, 4, 5] and got.index.tolist() == [0, 1, 2, 4, 5]
    with pytest.raises(TornadoError, match="1 of 6 patches is missing values"):
        read_file(f, nonfinite="fail")


def test_nonfinite_fail(tmp_path):
    bad = write_minimal(tmp_path / name(), nan_patches=(2,))
    with pytest.raises(TornadoError, match=f"{bad}: 1 of 6 patches is missing values \\(NaN, inf or a fill value; "):
        read_storms(tmp_path, nonfinite="fail")
    with pytest.raises(TornadoError, match="nonfinite"):
        read_storms(tmp_path, nonfinite="keep")


def test_bad_file_among_good_ones_is_named(storm_dir, tmp_path):
    for f in find_files(storm_dir)[:2]:
        shutil.copy(f, tmp_path / f.name)
    bad = write_minimal(tmp_path / name("20990101"), skip=("U10_curr",))
    with pytest.raises(TornadoError, match=f"{bad}: missing variable 'U10_curr'"):
        read_storms(tmp_path)


@pytest.mark.parametrize("dims", [("p", "row", "col"), ("p", "col", "row"), ("row", "col", "p"), ("col", "p", "row")])
def test_patches_stored_north_to_south_east_to_west_or_transposed_are_put_in_order(dims, storm_dir, tmp_path, caplog):
    """Augmentation turns (U, V) with the grid only for rows running south to north and columns west to east:
    a file stored otherwise (by its lat and lon) is read in that order, with a warning. Variables stored with
    p, row and col in another order are read by name (a transposed patch is a mirrored storm, turning the
    other way), lat and lon too."""
    import xarray as xr

    src = find_files(storm_dir)[0]
    plain = read_file(src)
    with xr.open_dataset(src, decode_times=False) as ds:
        ds = ds.load()
    for var in ds.data_vars:
        if ds[var].dims == ("p", "row", "col"):
            turned = ds[var].values.copy()
            turned[::2] = turned[::2, ::-1, :]  # every other patch north to south
            turned[1::3] = turned[1::3, :, ::-1]  # every third from the second east to west
            ds[var].values = turned
    ds.transpose(*dims, ...).to_netcdf(tmp_path / src.name)
    with netCDF4.Dataset(tmp_path / src.name) as nc:
        assert nc["U10_curr"].dimensions == dims and nc["lat"].dimensions == dims
    caplog.set_level(logging.WARNING, logger="tornado.data")
    read = read_file(tmp_path / src.name)
    np.testing.assert_array_equal(read.x, plain.x)
    np.testing.assert_array_equal(read.y, plain.y)
    n = len(plain.y)
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / src.name}: {len(range(0, n, 2))} of {n} patches have rows running north to south; put in order",
        f"{tmp_path / src.name}: {len(range(1, n, 3))} of {n} patches have columns running east to west; put in order"]


def test_patches_without_usable_coordinates_are_left_as_stored(tmp_path, caplog):
    f = write_minimal(tmp_path / name())
    plain = read_file(f)
    with netCDF4.Dataset(f, "a") as ds:
        for var in ("lat", "lon"):
            coord = np.full((6, 32, 32), 40.0, np.float32)  # a patch of one point, or of missing coordinates
            coord[3:] = np.nan
            ds.createVariable(var, "f4", ("p", "row", "col"))[:] = coord
    caplog.set_level(logging.WARNING, logger="tornado.data")
    np.testing.assert_array_equal(read_file(f).x, plain.x)
    assert caplog.records == []


def test_track_ids_are_metadata_missing_ones_are_minus_one_and_whole_floats_are_taken(tmp_path):
    def with_track(values, dtype, fill=None):
        path = write_minimal(tmp_path / name(), skip=("track_id",))
        with netCDF4.Dataset(path, "a") as ds:
            ds.createVariable("track_id", dtype, ("p",), fill_value=fill)[:] = values
        return read_file(path)

    assert with_track([3.0, 4.0, np.nan, 6.0, 7.0, 8.0], "f8").track_id.tolist() == [3, 4, -1, 6, 7, 8]
    got = with_track(np.ma.masked_values([3, 4, -999, 6, 7, 8], -999), "i4", fill=-999)
    assert got.track_id.tolist() == [3, 4, -1, 6, 7, 8] and len(got.y) == 6  # no patch dropped for it
    with pytest.raises(TornadoError, match=r"variable 'track_id' is float64, expected whole numbers$"):
        with_track([3.5, 4, 5, 6, 7, 8], "f8")
    with pytest.raises(TornadoError, match=r"variable 'track_id' is str, expected whole numbers$"):
        with_track(np.array(list("abcdef"), dtype=object), str)
