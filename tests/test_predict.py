"""tornado.predict's refusals: bad batch sizes and checkpoints end as one `error:` line (exit 2), no traceback.

(The round trip with a trained checkpoint is in tests/test_train.py.)"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tornado.errors import TornadoError
from tornado.model import StormModule
from tornado.predict import load_model, predict

ROOT = Path(__file__).resolve().parents[1]


def fake_checkpoint(path: Path, drop_weight: bool = False, **hparams) -> Path:
    """A checkpoint as Lightning saves one (state_dict + hyper_parameters), without training."""
    module = StormModule(**hparams)
    state = module.state_dict()
    if drop_weight:
        state.pop(next(iter(state)))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": "2.0.0"}, path)
    return path


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tornado.predict", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("batch", [0, -1])
def test_batch_must_be_a_positive_integer(tmp_path, batch):
    ckpt = fake_checkpoint(tmp_path / "ok.ckpt", scaler_mean=[0.0] * 3, scaler_std=[1.0] * 3)
    with pytest.raises(TornadoError, match=rf"^batch={batch}: expected a positive integer$"):
        predict(ckpt, str(tmp_path), batch=batch)
    out = tmp_path / "p.csv"
    p = cli(f"checkpoint={ckpt}", f"input={tmp_path}", f"batch={batch}", f"output={out}")
    assert p.returncode == 2 and p.stderr == f"error: batch={batch}: expected a positive integer\n"
    assert not out.exists()


@pytest.mark.parametrize("key", ["scaler_mean", "scaler_std"])
def test_scaler_without_three_entries_is_refused(tmp_path, key):
    hp = {"scaler_mean": [0.0] * 3, "scaler_std": [1.0] * 3}
    hp[key] = hp[key][:2]
    ckpt = fake_checkpoint(tmp_path / "two.ckpt", **hp)
    with pytest.raises(TornadoError, match=rf"checkpoint=.*two.ckpt: hparams {key} has 2 entries, expected 3"):
        load_model(ckpt)


def test_lightning_error_text_is_cut_to_its_first_line(tmp_path):
    ckpt = fake_checkpoint(tmp_path / "short.ckpt", drop_weight=True, scaler_mean=[0.0] * 3, scaler_std=[1.0] * 3)
    with pytest.raises(TornadoError) as e:
        load_model(ckpt)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"checkpoint={ckpt}: not a tornado checkpoint (RuntimeError: ")
    assert msg.endswith(")")
    p = cli(f"checkpoint={ckpt}", f"input={tmp_path}")
    assert p.returncode == 2 and len(p.stderr.splitlines()) == 1 and p.stderr.startswith("error: checkpoint=")


def test_a_file_that_is_no_checkpoint_and_a_folder_that_is_no_run_are_named(tmp_path):
    (tmp_path / "result.json").write_text("{}")
    with pytest.raises(TornadoError, match=r"result.json: not a tornado checkpoint \(not a PyTorch checkpoint file\)$"):
        load_model(tmp_path / "result.json")
    with pytest.raises(TornadoError,
                       match=r": a folder without checkpoints/last.ckpt \(not a run folder or a sweep\)$"):
        load_model(tmp_path)
    (tmp_path / "result.json").write_text('{"status": "failed", "error": "TornadoError: batch_size=0: must be > 0"}')
    with pytest.raises(TornadoError, match=r": no checkpoints/last.ckpt: the run failed before any epoch was saved "
                                           r"\(TornadoError: batch_size=0: must be > 0\)$"):
        load_model(tmp_path)
    # a run's folder stands for its checkpoints/last.ckpt
    fake_checkpoint(tmp_path / "checkpoints" / "last.ckpt", scaler_mean=[1.0] * 3, scaler_std=[2.0] * 3)
    assert load_model(tmp_path).hparams.scaler_mean == [1.0] * 3


def test_weights_are_saved_once_compiled_or_not_and_older_double_copies_load(tmp_path):
    plain, compiled = StormModule(scaler_mean=[0.0] * 3, scaler_std=[1.0] * 3), StormModule(compile=True)
    assert list(plain.state_dict()) == list(compiled.state_dict()) == [f"net.{k}" for k in plain.net.state_dict()]
    # a checkpoint of an earlier version: the weights under net.* and again under _forward._orig_mod.*
    state = {**plain.state_dict(), **{f"_forward._orig_mod.{k}": v + 1 for k, v in plain.net.state_dict().items()}}
    torch.save({"state_dict": state, "hyper_parameters": dict(plain.hparams), "pytorch-lightning_version": "2.0.0"},
               tmp_path / "old.ckpt")
    loaded = load_model(tmp_path / "old.ckpt")
    assert all(torch.equal(a, b) for a, b in zip(loaded.net.state_dict().values(), plain.net.state_dict().values()))


def test_a_missing_input_is_named_by_its_own_key_and_help_prints_usage(tmp_path):
    ckpt = fake_checkpoint(tmp_path / "m.ckpt", scaler_mean=[0.0] * 3, scaler_std=[1.0] * 3)
    p = cli(f"checkpoint={ckpt}", f"input={tmp_path / 'nothing'}", f"output={tmp_path / 'out.csv'}")
    assert p.returncode == 2 and p.stderr.strip() == f"error: input: {tmp_path / 'nothing'}: no such folder"
    assert not (tmp_path / "out.csv").exists()
    p = cli(f"checkpoint={ckpt}", f"input={tmp_path}", "output=")  # `output=$OUT` with OUT unset
    assert p.returncode == 2 and p.stderr == "error: output=: must name a file (default predictions.csv)\n"
    p = cli("--help")
    assert p.returncode == 0 and p.stdout.startswith("usage: python -m tornado.predict checkpoint=FILE")


def test_an_output_under_a_file_names_output_and_the_file(tmp_path):
    from tornado import synth

    synth.generate(tmp_path / "storms", days=1, patches_per_day=2, seed=3)
    ckpt = fake_checkpoint(tmp_path / "m.ckpt", scaler_mean=[0.0] * 3, scaler_std=[1.0] * 3)
    (tmp_path / "taken").write_text("")
    out = tmp_path / "taken" / "sub" / "p.csv"
    p = cli(f"checkpoint={ckpt}", f"input={tmp_path / 'storms'}", f"output={out}")
    assert p.returncode == 2 and p.stderr == f"error: output={out}: cannot write it ({tmp_path / 'taken'} is a file)\n"


def test_output_dash_writes_the_rows_to_stdout_and_says_the_rest_on_stderr(tmp_path):
    import io
    import json

    import pandas as pd

    from tornado import synth

    synth.generate(tmp_path / "storms", days=1, patches_per_day=3, seed=3)
    run = tmp_path / "run"
    fake_checkpoint(run / "checkpoints" / "last.ckpt", scaler_mean=[0.0] * 3, scaler_std=[1.0] * 3)
    (run / "result.json").write_text(json.dumps({"status": "running"}))  # a note to say, not in the rows
    p = subprocess.run([sys.executable, "-m", "tornado.predict", f"checkpoint={run}",
                        f"input={tmp_path / 'storms'}", "output=-", "threshold=0.5"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    rows = pd.read_csv(io.StringIO(p.stdout))
    assert rows["patch"].tolist() == [0, 1, 2] and rows.columns[0] == "file"
    assert p.stderr.splitlines() == [
        f"note: checkpoint={run}: its run has not finished (result.json says running): the model is the one it "
        "saved so far",
        "3 patches from 1 file -> standard output; yes/no (tornado) at threshold 0.5; observed labels: max > "
        "0.005 s^-1"]
    assert sorted(q.name for q in tmp_path.iterdir()) == ["run", "storms"]  # no file named `-`


def test_a_sweep_folder_stands_for_its_best_run_by_validation(tmp_path):
    import json

    sweep = tmp_path / "sweep"
    for job, (status, val_auc, auc) in enumerate([("ok", 0.80, 0.90), ("ok", 0.86, 0.70), ("failed", None, None),
                                                   ("ok", 0.84, 0.95)]):
        run = sweep / str(job)
        fake_checkpoint(run / "checkpoints" / "last.ckpt", scaler_mean=[float(job)] * 3, scaler_std=[1.0] * 3)
        metrics = {} if status != "ok" else {"val_roc_auc": val_auc, "roc_auc": auc, "threshold": 0.1 * job}
        (run / "result.json").write_text(json.dumps({"status": status, "hparams": {"batch_size": 64 * (job + 1)},
                                                     "metrics": metrics, "output_dir": str(run)}))
    # job 1: the best validation ROC AUC (never the test set's best, job 3); its own threshold comes with it
    assert load_model(sweep).hparams.scaler_mean == [1.0] * 3
    from tornado.predict import run_threshold
    assert run_threshold(sweep) == pytest.approx(0.1)
    p = cli(f"checkpoint={sweep}", f"input={tmp_path / 'nowhere'}")
    assert p.returncode == 2
    assert p.stdout.startswith(f"the sweep's best job by validation ROC AUC: 1 (0.86), {sweep / '1'}")
    for job in ("0", "1", "3"):  # the paper's split: no validation scores to choose by
        data = json.loads((sweep / job / "result.json").read_text())
        data["metrics"].pop("val_roc_auc")
        (sweep / job / "result.json").write_text(json.dumps(data))
    (sweep / "results.csv").unlink()  # written from the result.json files on the first read
    with pytest.raises(TornadoError, match=r"a sweep with no successful job scored on a validation split to choose "
                                           r"by; give one job's folder$"):
        load_model(sweep)


def test_observed_labels_follow_the_runs_label_rule(tmp_path):
    from tornado import synth
    from tornado.data import LabelRule, find_files, read_file

    synth.generate(tmp_path / "storms", days=1, patches_per_day=200, seed=3)
    src = find_files(tmp_path / "storms")[0]
    paper = {"reduce": "mean", "threshold": 0.001, "inclusive": True}
    ckpt = fake_checkpoint(tmp_path / "paper.ckpt", scaler_mean=[0.0] * 3, scaler_std=[1.0] * 3, label=paper)
    old = fake_checkpoint(tmp_path / "old.ckpt", scaler_mean=[0.0] * 3, scaler_std=[1.0] * 3)  # says no rule

    def labels(rule: LabelRule):
        return read_file(src, label=rule).y.tolist()
    assert labels(LabelRule.from_cfg(paper)) != labels(LabelRule())  # rules that tell these patches apart
    assert predict(ckpt, str(src), threshold="none")["label"].tolist() == labels(LabelRule.from_cfg(paper))
    assert predict(old, str(src), threshold="none")["label"].tolist() == labels(LabelRule())
    # keys given replace the run's own, one by one
    given = predict(ckpt, str(src), {"threshold": "0.002"}, threshold="none")["label"].tolist()
    assert given == labels(LabelRule("mean", 0.002, True))
    p = cli(f"checkpoint={ckpt}", f"input={src}", f"output={tmp_path / 'p.csv'}")
    assert p.returncode == 0 and p.stdout.strip().endswith("; observed labels: mean >= 0.001 s^-1"), p.stdout
    p = cli(f"checkpoint={ckpt}", f"input={src}", "label_reduce=median")
    assert p.returncode == 2 and p.stderr.strip() == "error: label_reduce: 'median': must be one of max, mean"
    p = cli(f"checkpoint={ckpt}", f"input={src}", "label_threshold=high")
    assert p.returncode == 2 and p.stderr.strip() == "error: label_threshold=high: expected a float"


def test_a_probability_at_the_threshold_is_a_yes(tmp_path):
    from tornado import synth

    synth.generate(tmp_path / "storms", days=1, patches_per_day=20, seed=3)
    torch.manual_seed(0)  # weights whose forecasts differ from patch to patch
    ckpt = fake_checkpoint(tmp_path / "m.ckpt", scaler_mean=[20.0, 0.0, 0.0], scaler_std=[15.0, 5.0, 5.0])
    p = predict(ckpt, str(tmp_path / "storms"), threshold="none")["probability"]
    cut = float(p.sort_values().iloc[10])
    yes = predict(ckpt, str(tmp_path / "storms"), threshold=cut)["tornado"]
    assert yes.tolist() == (p >= cut).astype(int).tolist() and yes.sum() == 10
    assert predict(ckpt, str(tmp_path / "storms"), threshold=0.0)["tornado"].tolist() == [1] * len(p)  # all yes


def test_every_patch_gets_a_row_and_what_is_missing_stays_empty(tmp_path):
    """A patch missing an input value has no probability (nor yes/no); one whose label field misses a value
    has no label: the verification field does not decide which storms get a forecast."""
    import netCDF4
    import numpy as np

    from tornado import synth
    from tornado.data import find_files

    synth.generate(tmp_path / "storms", days=1, patches_per_day=20, seed=3)
    src = find_files(tmp_path / "storms")[0]
    with netCDF4.Dataset(src, "a") as ds:
        ds["U10_curr"][1, 3, 4] = np.nan
        ds["REFL_COM_curr"][4, 0, 0] = np.inf
        ds["RVORT1_MAX_future"][2, 5, 5] = np.nan
    empty = tmp_path / "storms" / "NCARSTORM_20990101-0000_d01_model_patches.nc"
    with netCDF4.Dataset(empty, "w") as ds:  # a run without storms
        for dim, size in (("p", 0), ("row", 32), ("col", 32)):
            ds.createDimension(dim, size)
        for name in ("REFL_COM_curr", "U10_curr", "V10_curr", "RVORT1_MAX_future"):
            ds.createVariable(name, "f4", ("p", "row", "col"))
        ds.createVariable("track_id", "i4", ("p",))
    ckpt = fake_checkpoint(tmp_path / "m.ckpt", scaler_mean=[0.0] * 3, scaler_std=[1.0] * 3)
    df = predict(ckpt, str(tmp_path / "storms"), threshold=0.5)
    assert df["patch"].tolist() == list(range(20)) and df.attrs["files"] == 2
    assert df.index[df["probability"].isna()].tolist() == [1, 4] == df.index[df["tornado"].isna()].tolist()
    assert df.index[df["label"].isna()].tolist() == [2]
    p = cli(f"checkpoint={ckpt}", f"input={tmp_path / 'storms'}", f"output={tmp_path / 'p.csv'}", "threshold=0.5")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("20 patches (2 without a probability: inputs missing) from 2 files -> ")
    assert f"{src}: no probability for 2 of 20 patches: input values missing (NaN, inf or a fill value)" in p.stderr
    assert "has not finished" not in p.stdout


def test_a_checkpoint_of_a_run_that_did_not_finish_is_used_and_said_to_be(tmp_path):
    import json

    from tornado import synth

    synth.generate(tmp_path / "storms", days=1, patches_per_day=4, seed=3)
    run = tmp_path / "run"
    fake_checkpoint(run / "checkpoints" / "last.ckpt", scaler_mean=[0.0] * 3, scaler_std=[1.0] * 3)
    (run / "result.json").write_text(json.dumps({"status": "failed", "error": "interrupted (SIGTERM)"}))
    p = cli(f"checkpoint={run}", f"input={tmp_path / 'storms'}", f"output={tmp_path / 'p.csv'}")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0] == (f"note: checkpoint={run}: its run has not finished (result.json says failed): "
                                        "the model is the one it saved so far")
    assert (tmp_path / "p.csv").is_file()


@pytest.mark.parametrize("given, cut", [("0", 0.0), ("1", 1.0), ("0.25", 0.25), (0.5, 0.5)])
def test_a_threshold_given_may_be_any_probability_from_0_to_1(tmp_path, given, cut):
    from tornado.predict import run_threshold

    assert run_threshold(tmp_path / "unused.ckpt", given) == cut


@pytest.mark.parametrize("given", ["-0.1", "1.5", "half"])
def test_a_threshold_outside_0_to_1_is_refused(tmp_path, given):
    from tornado.predict import run_threshold

    with pytest.raises(TornadoError, match=rf"^threshold={given}: expected auto, none or a probability in \[0, 1\]$"):
        run_threshold(tmp_path / "unused.ckpt", given)


def test_only_a_checkpoint_of_a_run_that_has_not_finished_is_noted(tmp_path):
    import json

    from tornado.predict import _unfinished

    run = tmp_path / "run"
    fake_checkpoint(run / "checkpoints" / "last.ckpt", scaler_mean=[0.0] * 3, scaler_std=[1.0] * 3)
    assert _unfinished(str(run)) is None  # no result.json: nothing known
    for status, noted in (("ok", False), ("running", True), ("failed", True)):
        (run / "result.json").write_text(json.dumps({"status": status}))
        assert (_unfinished(str(run)) is not None) == noted, status
