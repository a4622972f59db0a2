"""Training: config composition, one real run, records, determinism, DDP, bad configs, predict."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tornado.errors import TornadoError

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
# `python -m tornado.train` where Lightning cannot be imported (`-c WITHOUT_LIGHTNING args...`)
WITHOUT_LIGHTNING = ("import runpy, sys; sys.modules['pytorch_lightning'] = None; sys.argv[:1] = ['-m']; "
                     "runpy.run_module('tornado.train', run_name='__main__', alter_sys=True)")


def small(data_dir: Path, *extra: str) -> list[str]:
    """Overrides for a fast CPU run on a small synthetic set."""
    return [f"data.out_dir={data_dir}", "data.synth.days=16", "data.synth.patches_per_day=250",
            "gpus=0", "epochs=2", "batch_size=64", "threads=1", *extra]


def cfg_for(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("storms")


@pytest.fixture(scope="module")
def first_run(data_dir, tmp_path_factory):
    from tornado.train import train

    out = tmp_path_factory.mktemp("run")
    return train(cfg_for(*small(data_dir, "epochs=4")), output_dir=out), out


def test_every_group_option_composes():
    for group in ("model", "augment", "data", "trainer", "logger", "launcher"):
        for opt in (ROOT / "conf" / group).glob("*.yaml"):
            cfg = cfg_for(f"{group}={opt.stem}")
            OmegaConf.to_container(cfg, resolve=True)
    for name in EXPERIMENTS:
        cfg = cfg_for(f"experiment={name}")
        assert cfg.paper, f"experiment {name} does not say which paper section it reproduces"


def test_configs_instantiate(data_dir, tmp_path):
    from tornado.datamodule import StormDataModule
    from tornado.model import StormModule
    from tornado.prepare import ensure_prepared

    cfg = cfg_for(*small(data_dir))
    path = ensure_prepared(cfg.data, cfg.augment)
    dm = StormDataModule(path, cfg.batch_size, cfg.data_multiplier, cfg.augmentation,
                         OmegaConf.to_container(cfg.augment))
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 3, 32, 32) and y.shape == (64,)
    assert abs(float(x.mean())) < 0.5 and 0.5 < float(x.std()) < 1.5  # standardised
    module = StormModule(pool3=cfg.model.pool3, dropout=cfg.model.dropout, lr=cfg.lr)
    assert module(x).shape == (64,)
    trainer = instantiate(cfg.trainer, accelerator="cpu", devices=1, logger=False)
    assert trainer.max_epochs == cfg.epochs
    loggers = [instantiate(c, save_dir=str(tmp_path)) for c in cfg.logger.values()]
    assert {type(l).__name__ for l in loggers} == {"CSVLogger", "TensorBoardLogger"}


def test_paper_code_variant_pools_after_third_conv():
    from tornado.model import StormCNN

    assert StormCNN(pool3=False).layers[-1].in_features == 32 * 8 * 8
    assert StormCNN(pool3=True).layers[-1].in_features == 32 * 4 * 4


def test_run_writes_full_records_and_learns(first_run):
    result, out = first_run
    on_disk = json.loads((out / "result.json").read_text())
    assert on_disk["status"] == "ok" and on_disk["error"] is None
    assert on_disk["hparams"]["batch_size"] == 64 and on_disk["hparams"]["epochs"] == 4
    assert on_disk["hparams"]["data.label.threshold"] == 0.005
    t = on_disk["times"]
    assert len(t["epoch_s"]) == 4 and 0 < t["wall_s"] <= t["total_s"]
    assert t["data_wait_s"] >= 0 and t["compute_s"] > 0
    # samples trained on per second of training: 4 epochs of every training sample (the last batch is partial)
    assert on_disk["data"]["n_train"] % 64
    assert on_disk["samples_per_s"] * t["wall_s"] == pytest.approx(4 * on_disk["data"]["n_train"])
    assert on_disk["data"]["samples_per_epoch"] == on_disk["data"]["n_train"]  # multiplier 1
    assert on_disk["devices"] == {"accelerator": "cpu", "count": 1, "names": on_disk["devices"]["names"]}
    assert {"torch", "pytorch_lightning", "tornado"} <= set(on_disk["versions"])
    m = on_disk["metrics"]
    for key in ("accuracy", "roc_auc", "average_precision", "csi_050", "pod_050", "far_050", "best_threshold",
                "csi_best", "pod_best", "far_best", "brier", "bss", "val_roc_auc", "val_brier", "val_csi_best"):
        assert key in m and not np.isnan(m[key]), key
    assert m["roc_auc"] > 0.6, m  # a few hundred steps on 3,000 patches; the default run is checked below
    # CSI/POD/FAR at the validation split's best threshold, applied to the test set
    assert on_disk["evaluation"] == {"threshold_from": "validation", "prior_shift": None}
    assert m["threshold"] == m["val_best_threshold"] and 0 < m["csi"] <= m["csi_best"]
    assert m["val_n"] > 0 and m["climatology"] == m["train_base_rate"] > 0
    assert on_disk["data"]["n_val"] == m["val_n"] and on_disk["data"]["n_test"] == m["n"]
    assert on_disk["data"]["n_train"] == on_disk["data"]["n_train_originals"] > 0 == on_disk["data"]["n_dropped"]
    hist = on_disk["history"]
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3]
    assert hist[-1]["train_loss"] < 0.9 * hist[0]["train_loss"]
    # validation skill after every epoch (score_epochs): the last is the run's own val_roc_auc; its scoring
    # time is kept out of the training time
    assert all(0 < h["val_roc_auc"] <= 1 for h in hist)
    from tornado.collect import result_row

    aucs = [h["val_roc_auc"] for h in hist]
    assert result_row("0", on_disk)["val_best_epoch"] == 1 + aucs.index(max(aucs))  # results.csv's column
    assert hist[-1]["val_roc_auc"] == pytest.approx(m["val_roc_auc"], abs=1e-6)
    assert t["epoch_scoring_s"] > 0 and sum(t["epoch_s"]) < t["wall_s"]
    logged = pd.read_csv(out / "csv" / "metrics.csv")
    assert logged["val_roc_auc"].dropna().tolist() == pytest.approx([h["val_roc_auc"] for h in hist])
    # the logs' x axis counts optimiser steps (the last partial batch is one), not Lightning's blocks
    per_epoch = math.ceil(on_disk["data"]["n_train"] / 64)
    assert logged["step"].tolist() == [per_epoch * (e + 1) for e in range(4)]
    assert logged["epoch"].tolist() == [0, 1, 2, 3]
    assert list((out / "tb").rglob("events.out.tfevents.*"))
    assert (out / "checkpoints" / "last.ckpt").exists()
    preds = np.load(out / "test_predictions.npz")
    assert len(preds["prob"]) == len(preds["label"]) == int(m["n"])


def test_patience_stops_when_validation_skill_stalls_and_a_rerun_stops_again(data_dir, tmp_path, caplog):
    from tornado.train import train

    caplog.set_level("INFO", logger="tornado.train")
    r = train(cfg_for(*small(data_dir, "epochs=25", "patience=2")), output_dir=tmp_path)
    aucs = [h["val_roc_auc"] for h in r["history"]]
    best = [aucs.index(max(aucs[:k + 1])) for k in range(len(aucs))]  # best epoch so far, after each epoch
    assert len(aucs) < 25 and r["early_stop"]["stopped"]  # this seed's curve stalls well before 25 epochs
    assert len(aucs) - 1 - best[-1] == 2 and all(k - best[k] < 2 for k in range(len(aucs) - 1))  # stopped at once
    assert r["early_stop"] == {"patience": 2, "stopped": True, "epochs_trained": len(aucs),
                               "best_epoch": best[-1] + 1, "scored_epoch": best[-1] + 1}
    # said on the terminal and in train.log, epochs counted from 1 as everywhere else
    line = (f"stopped early after epoch {len(aucs)} of 25: validation ROC AUC has not improved for 2 epochs; "
            f"scoring epoch {best[-1] + 1}'s weights ({tmp_path / 'checkpoints' / 'best.ckpt'})")
    assert [m for m in caplog.messages if m.startswith("stopped early")] == [line]
    # the best epoch's weights are scored (its validation ROC AUC, not the last's) and kept for predict
    assert r["metrics"]["val_roc_auc"] == pytest.approx(max(aucs), abs=1e-6) and aucs[-1] < max(aucs)
    from tornado.data import find_files
    from tornado.predict import predict

    one = str(find_files(data_dir / "synthetic")[-1])
    assert predict(tmp_path, one)["probability"].tolist() == predict(tmp_path / "checkpoints" / "best.ckpt",
                                                                     one)["probability"].tolist()
    assert not np.allclose(predict(tmp_path, one)["probability"],
                           predict(tmp_path / "checkpoints" / "last.ckpt", one)["probability"])
    again = train(cfg_for(*small(data_dir, "epochs=25", "patience=2")), output_dir=tmp_path)  # the same command
    assert again["resumed_after_epochs"] == len(aucs) and again["history"] == r["history"]
    assert again["metrics"] == r["metrics"]
    # nothing trained: the times of the session that trained, kept in the checkpoint
    keys = ("wall_s", "epoch_s", "data_wait_s", "compute_s", "epoch_scoring_s")
    assert {k: again["times"][k] for k in keys} == {k: r["times"][k] for k in keys}
    assert r["times"]["epoch_scoring_s"] > 0 and again["samples_per_s"] == r["samples_per_s"]
    assert [m for m in caplog.messages if m.startswith("stopped early")] == [line, line]  # stopped again at once
    more = train(cfg_for(*small(data_dir, "epochs=25", "patience=4")), output_dir=tmp_path)  # more patience: on
    assert len(more["history"]) > len(aucs) and more["history"][:len(aucs)] == r["history"]
    logs = sorted(p.relative_to(tmp_path) for p in (tmp_path / "csv").rglob("*")) + ["tb"]
    plain = train(cfg_for(*small(data_dir, "epochs=2", "resume=false")), output_dir=tmp_path)  # no patience
    assert plain["early_stop"] is None and not (tmp_path / "checkpoints" / "best.ckpt").exists()
    # started over: the earlier run's logs are set aside, not mixed with the new one's
    aside = next((tmp_path / ".replaced").iterdir())
    assert sorted(p.relative_to(aside) for p in (aside / "csv").rglob("*")) + ["tb"] == logs and (aside / "tb").is_dir()
    assert sorted(p.name for p in (tmp_path / "csv").iterdir()) == ["hparams.yaml", "metrics.csv"]
    with pytest.raises(TornadoError, match=r"patience=2: needs score_epochs=true"):
        train(cfg_for(*small(data_dir, "patience=2", "score_epochs=false")), output_dir=tmp_path / "off")
    with pytest.raises(TornadoError, match=r"patience=2: needs a validation split"):
        train(cfg_for(*small(data_dir, "patience=2", "data.split.val_fraction=0")), output_dir=tmp_path / "none")


def test_score_epochs_off_leaves_the_history_without_validation_and_training_unchanged(first_run, data_dir,
                                                                                       tmp_path):
    from tornado.train import train

    result, _ = first_run
    plain = train(cfg_for(*small(data_dir, "epochs=4", "score_epochs=false")), output_dir=tmp_path)
    assert all("val_roc_auc" not in h for h in plain["history"]) and plain["times"]["epoch_scoring_s"] == 0
    assert [h["train_loss"] for h in plain["history"]] == [h["train_loss"] for h in result["history"]]
    assert plain["metrics"] == result["metrics"]


def test_balance_copies_are_scored_at_nature_s_base_rate(data_dir, tmp_path):
    """With positives oversampled, the probabilities are moved back to the originals' base rate, in the run's
    own scores and in predict; skill is measured against the originals' climatology."""
    import h5py

    from tornado.metrics import prior_shift
    from tornado.predict import load_model, predict
    from tornado.train import train

    r = train(cfg_for(*small(data_dir, "epochs=1", "data.balance=true", "data.multipliers=[1]")),
              output_dir=tmp_path)
    with h5py.File(r["prepared"], "r") as f:
        rate = f.attrs["positives_train_originals"] / f.attrs["n_train_originals"]
        trained = f.attrs["positives_train"] / f.attrs["n_train"]
    assert trained == pytest.approx(0.5, abs=0.01)
    m = r["metrics"]
    assert m["climatology"] == pytest.approx(rate) and m["train_base_rate"] == pytest.approx(trained)
    assert r["evaluation"]["prior_shift"] == {"trained_rate": pytest.approx(trained),
                                              "climatology": pytest.approx(rate)}
    prob = np.load(tmp_path / "test_predictions.npz")["prob"]
    assert prob.mean() < 2 * rate  # an oversampled model left as is forecasts around 0.5 on average
    every = predict(tmp_path / "checkpoints" / "last.ckpt", str(data_dir / "synthetic"))
    np.testing.assert_allclose(every[every["run_date"] >= "2015-01-01"]["probability"], prob, atol=2e-6)
    module = load_model(tmp_path / "checkpoints" / "last.ckpt")
    raw = np.array([0.2, 0.5, 0.8])
    np.testing.assert_allclose(module.calibrated(raw), prior_shift(raw, trained, rate))


def test_positive_weight_is_scored_at_nature_s_base_rate(data_dir, tmp_path):
    from tornado.train import train

    r = train(cfg_for(*small(data_dir, "epochs=1", "model.pos_weight=19")), output_dir=tmp_path)
    rate = r["metrics"]["climatology"]
    odds = 19 * rate / (1 - rate)  # a weighted positive counts 19 times: the model learns these odds
    assert r["evaluation"]["prior_shift"] == {"trained_rate": pytest.approx(odds / (1 + odds)),
                                              "climatology": pytest.approx(rate)}
    assert r["metrics"]["train_base_rate"] == pytest.approx(rate)  # the data are as they were
    assert np.load(tmp_path / "test_predictions.npz")["prob"].mean() < 2 * rate


def test_no_validation_split_keeps_the_test_set_s_threshold_apart(data_dir, tmp_path, capsys):
    from tornado.cli import python_command
    from tornado.train import _headline, train

    r = train(cfg_for(*small(data_dir, "epochs=1", "data.split.val_fraction=0")), output_dir=tmp_path)
    m = r["metrics"]
    assert r["evaluation"]["threshold_from"] is None and np.isnan(m["threshold"]) and np.isnan(m["csi"])
    assert not any(k.startswith("val_") for k in m)
    assert "the test set's best: optimistic" in _headline(r)
    assert f"ROC AUC {m['roc_auc']:.3f} ± {m['roc_auc_se']:.3f}  AP" in _headline(r)  # one standard error
    assert _headline(r).endswith(f"its report (scores, curves, diagrams): {python_command()} -m tornado.report "
                                 f"{tmp_path}")


def test_live_augmentation_runs(data_dir, tmp_path):
    from tornado.train import train

    r = train(cfg_for(*small(data_dir, "augmentation=live", "data_multiplier=2", "epochs=1")), output_dir=tmp_path)
    assert r["status"] == "ok" and r["hparams"]["augmentation"] == "live"
    assert r["data"]["samples_per_epoch"] == 2 * r["data"]["n_train"]  # m·N fresh draws
    assert r["history"][0]["samples"] == r["data"]["samples_per_epoch"]


def test_streamed_data_runs(data_dir, tmp_path):
    from tornado.train import train

    r = train(cfg_for(*small(data_dir, "fast.resident=false", "data_multiplier=2", "epochs=1")), output_dir=tmp_path)
    assert r["status"] == "ok" and r["fast"]["resident"] is False
    assert r["data"]["samples_per_epoch"] == 2 * r["data"]["n_train"]  # the originals and one stored copy


def test_same_seed_same_metrics(data_dir, tmp_path, first_run):
    from tornado.train import train

    again = train(cfg_for(*small(data_dir, "epochs=4")), output_dir=tmp_path)
    assert again["metrics"] == first_run[0]["metrics"]
    other = train(cfg_for(*small(data_dir, "epochs=1", "seed=1")), output_dir=tmp_path / "s1")
    zero = train(cfg_for(*small(data_dir, "epochs=1", "seed=0")), output_dir=tmp_path / "s0")
    assert other["metrics"]["brier"] != zero["metrics"]["brier"]


def test_the_last_epoch_s_validation_forecasts_are_made_once(data_dir, tmp_path, monkeypatch):
    from tornado import fit
    from tornado.train import train

    sizes, forward = [], fit.probabilities

    def counted(net, x, *args, **kwargs):
        sizes.append(len(x))
        return forward(net, x, *args, **kwargs)

    monkeypatch.setattr(fit, "probabilities", counted)
    r = train(cfg_for(*small(data_dir)), output_dir=tmp_path)
    assert sizes.count(r["data"]["n_val"]) == 2 != r["data"]["n_test"]  # after each epoch; the scores reuse the last
    assert r["metrics"]["val_roc_auc"] == r["history"][-1]["val_roc_auc"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_fast_dev_run(name, data_dir, tmp_path):
    from tornado.train import train

    r = train(cfg_for(f"experiment={name}", *small(data_dir, "epochs=1", "batch_size=256",
                                                   "trainer.limit_train_batches=2")), output_dir=tmp_path)
    assert r["status"] == "ok"
    assert [h["samples"] for h in r["history"]] == [2 * 256]  # the batches trained, not a whole epoch
    assert r["samples_per_s"] * r["times"]["wall_s"] == pytest.approx(2 * 256)


@pytest.mark.parametrize("override, message", [
    ("batch_size=0", "batch_size=0: must be a positive integer"),
    ("augmentation=sideways", "augmentation=sideways: unknown"),
    ("data_multiplier=3", "data_multiplier=3: "),
    ("gpus=2", "gpus=2 asks for 2 GPUs but 0 are visible"),
    ("epochs=-1", "epochs=-1: must be a positive integer"),
    ("optimize_metric=skill", "optimize_metric=skill: unknown, use one of"),
    ("threads=abc", "threads=abc: must be a positive integer"),
    ("threads=-2", "threads=-2: must be a positive integer"),
    ("seed=-1", "seed=-1: must be an integer from 0"),
    ("seed=99999999999", "seed=99999999999: must be an integer from 0"),
    ("model.dropout=2", r"model.dropout=2: must be a number in \[0, 1\)"),
    ("lr=inf", "lr=inf: must be a positive number"),
    ("fast.bf16=abc", "fast.bf16=abc: use one of true, false, auto"),
    ("fast.storage=int8", "fast.storage=int8: use one of float32, float16"),
    ("resume=maybe", "resume=maybe: must be true or false"),
    ("score_epochs=2", "score_epochs=2: must be true or false"),
    ("model.pos_weight=0", "model.pos_weight=0: must be a positive number"),
    ("+epoch=3", r"epoch: no such setting \(did you mean epochs\?\)"),
    ("+fast.bf=true", r"fast.bf: no such setting \(did you mean fast.bf16\?\)"),
    ("+model.dropuot=0.1", r"^model.dropuot: no such setting \(did you mean model.dropout\?\)$"),
    ("+data.foo=1", r"^data.foo: no such setting$"),
    ("+model.foo=1", r"^model.foo: no such setting$"),
    ("+data.synth.dayz=3", r"^data.synth.dayz: no such setting \(did you mean data.synth.days\?\)$"),
    ("+data.label.treshold=0.01", r"^data.label.treshold: no such setting \(did you mean data.label.threshold\?\)$"),
    ("fast=5", r"^fast=5: must be a group of settings \(fast.<key>=...\), not a value$"),
    ("~model", r"^model: missing: a run needs this group of settings$"),
    ("patience=0", "patience=0: must be a positive number of epochs, or null"),
    ("patience=abc", "patience=abc: must be a positive number of epochs, or null"),
    ("trainer.accelerator=tpu", "trainer.accelerator=tpu: use one of auto, cpu, gpu, cuda"),
    ("model.pool3=abc", "model.pool3=abc: must be true or false"),
    ("trainer.max_epochs=abc", "trainer.max_epochs=abc: must be an integer >= 1"),
    ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps=0: must be an integer >= 1"),
    ("trainer.precision=banana", r"^trainer: Precision 'banana' is invalid\. Allowed precision values: \("),
    ("logger.csv._target_=nope.Logger", r"^logger.csv: Error loading 'nope.Logger': ModuleNotFoundError"),
    # Lightning would train 1000 epochs, train none and score the untrained network, or fail mid-fit on these
    ("trainer.max_epochs=null", r"^trainer.max_epochs=null: must be an integer >= 1$"),
    ("trainer.limit_train_batches=0", r"^trainer.limit_train_batches=0: must be a number of batches >= 1"),
    ("logger.csv=null", r"^logger.csv=null: must be a logger's settings; ~logger.csv leaves it out$"),
    # values said as typed: a quoted number is text, not the number it reads as
    ("epochs='2'", r"^epochs='2': must be a positive integer$"),
    ("model.pool3='true'", r"^model.pool3='true': must be true or false$"),
    ("threads=''", r"^threads='': must be a positive integer, or null for torch's default$"),
    ("~logger.csv._target_", r"^logger.csv._target_: missing: a logger needs it; ~logger.csv leaves it out$"),
    ("trainer._target_=builtins.dict", r"^trainer._target_=builtins.dict: makes a dict, not a Lightning Trainer$"),
    # the data settings are named as this command takes them (data.), augment's as they are
    ("data.split.val_fraction=1.5", r"^data.split.val_fraction: 1.5: must be a number in \[0, 1\)$"),
    ("data.label.reduce=median", r"^data.label.reduce: 'median': must be one of"),
    ("data.source=/nowhere", r"^data.source: /nowhere: no such folder$"),
    ("~data.split", r"^data.split: missing: a run needs this setting$"),  # a removed group named so too
    # a removed data or augment setting: not the code's default (no validation split, not the configured 0.1)
    ("~data.split.val_fraction", r"^data.split.val_fraction: missing: a run needs this setting$"),
    ("~data.synth.days", r"^data.synth.days: missing: a run needs this setting$"),
    ("~data.seed", r"^data.seed: missing: a run needs this setting$"),
    ("~augment.rotation", r"^augment.rotation: missing: a run needs this setting$"),
    ("augment.rotation=abc", r"^augment.rotation: must be a number in"),
])
def test_bad_config_fails_before_training(override, message, data_dir, tmp_path, monkeypatch):
    from tornado.train import train

    if override == "gpus=2" and torch.cuda.device_count() >= 2:
        pytest.skip("this machine has 2 GPUs")
    with pytest.raises(TornadoError, match=message):  # a single run: no record of a run that never was
        train(cfg_for(*small(data_dir), override), output_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "result.json").exists() and not (tmp_path / "run" / "checkpoints").exists()
    monkeypatch.setenv("TORNADO_SWEEP_DIR", str(tmp_path))  # a sweep's job: its launcher reads the failure
    with pytest.raises(TornadoError, match=message):
        train(cfg_for(*small(data_dir), override), output_dir=tmp_path / "job")
    result = json.loads((tmp_path / "job" / "result.json").read_text())
    assert result["status"] == "failed" and message.split(":")[0].lstrip("^") in result["error"]
    assert not (tmp_path / "job" / "checkpoints").exists()


def test_a_job_of_a_sweep_refreshes_the_sweep_s_results_csv(data_dir, tmp_path, monkeypatch):
    """With TORNADO_SWEEP_DIR (set by the launchers) a run rewrites SWEEP_DIR/results.csv as it ends, ok or
    failed: the jobs of a SLURM sweep submitted with wait=false have no launcher waiting to collect them."""
    from tornado.train import train

    monkeypatch.setenv("TORNADO_SWEEP_DIR", str(tmp_path))
    ok = train(cfg_for(*small(data_dir, "epochs=1")), output_dir=tmp_path / "0")
    table = pd.read_csv(tmp_path / "results.csv", dtype={"job": str})
    assert list(table["job"]) == ["0"] and list(table["status"]) == ["ok"]
    assert table.loc[0, "roc_auc"] == pytest.approx(ok["metrics"]["roc_auc"])
    with pytest.raises(TornadoError):
        train(cfg_for(*small(data_dir, "batch_size=0")), output_dir=tmp_path / "1")
    table = pd.read_csv(tmp_path / "results.csv", dtype={"job": str})
    assert list(table["job"]) == ["0", "1"] and list(table["status"]) == ["ok", "failed"]
    assert table.loc[1, "error"].startswith("TornadoError: batch_size=0")


def test_a_prepared_file_without_its_test_set_is_refused(data_dir, tmp_path):
    import shutil

    import h5py

    from tornado.datamodule import read_meta
    from tornado.prepare import ensure_prepared

    cfg = cfg_for(*small(data_dir))
    broken = tmp_path / "storms.h5"
    shutil.copy(ensure_prepared(cfg.data, cfg.augment), broken)
    with h5py.File(broken, "a") as f:
        del f["test/x"]
    with pytest.raises(TornadoError, match=f"{broken}: not a prepared storm file \\(no test/x\\)"):
        read_meta(broken)


def test_a_diverging_run_fails_and_saves_no_checkpoint(data_dir, tmp_path):
    from tornado.train import train

    with pytest.raises(TornadoError, match="training diverged: the mean loss of epoch 1 is nan"):
        train(cfg_for(*small(data_dir, "epochs=1", "lr=1e30")), output_dir=tmp_path)
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "failed"
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()


def test_a_run_failing_midway_records_the_epochs_it_saved(data_dir, tmp_path, monkeypatch):
    """Its history, batch, devices, data and times so far, as an ok run's; no test scores."""
    from tornado.model import StormModule
    from tornado.train import train

    end = StormModule.on_train_epoch_end

    def second_epoch_fails(self):
        if self.current_epoch == 1:
            raise TornadoError("training diverged: the mean loss of epoch 2 is nan")
        end(self)
    monkeypatch.setattr(StormModule, "on_train_epoch_end", second_epoch_fails)
    with pytest.raises(TornadoError, match="epoch 2 is nan"):
        train(cfg_for(*small(data_dir, "epochs=3")), output_dir=tmp_path)
    r = json.loads((tmp_path / "result.json").read_text())
    assert r["status"] == "failed" and r["error"].startswith("TornadoError: training diverged")
    assert [h["epoch"] for h in r["history"]] == [0] and 0 < r["history"][0]["val_roc_auc"] <= 1
    t = r["times"]
    assert t["epoch_s"] == [r["history"][0]["epoch_s"]] and t["epoch_s"][0] < t["wall_s"] <= t["total_s"]
    assert t["data_wait_s"] > 0 and t["epoch_scoring_s"] > 0 and "test_s" not in t
    assert r["samples_per_s"] * t["wall_s"] == pytest.approx(r["data"]["n_train"])
    assert r["batch"] == {"global": 64, "per_device": 64, "devices": 1, "effective_global": 64}
    assert r["devices"]["count"] == 1 and r["data"]["n_test"] > 0 and r["resumed_after_epochs"] == 0
    assert "metrics" not in r and not (tmp_path / "test_predictions.npz").exists()


def test_a_run_failing_before_its_data_is_set_up_records_that_error(data_dir, tmp_path, monkeypatch):
    from tornado.datamodule import StormDataModule
    from tornado.train import train

    def fails(self, stage=None):
        raise RuntimeError("no data today")
    monkeypatch.setattr(StormDataModule, "setup", fails)
    with pytest.raises(RuntimeError, match="no data today"):  # not an AttributeError of the record's making
        train(cfg_for(*small(data_dir, "epochs=1")), output_dir=tmp_path)
    r = json.loads((tmp_path / "result.json").read_text())
    assert r["status"] == "failed" and r["error"] == "RuntimeError: no data today" and r["fast"]["resident"] is None


def test_a_trainer_setting_refused_leaves_the_earlier_run_s_logs_where_they_are(first_run, data_dir, tmp_path):
    """Refused by Lightning after the data are loaded, before the earlier logs are moved aside (resume=false) or
    renamed (a resumed run's metrics.csv): the folder is as it was."""
    import shutil

    from tornado.train import train

    run = tmp_path / "run"
    shutil.copytree(first_run[1], run)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    for extra in ("resume=false", "resume=true"):
        with pytest.raises(TornadoError, match="^trainer: Precision 'banana' is invalid"):
            train(cfg_for(*small(data_dir, "epochs=4"), extra, "trainer.precision=banana"), output_dir=run)
        assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
        assert (run / "result.json").read_bytes() == (first_run[1] / "result.json").read_bytes()


def test_a_null_label_group_takes_the_default_rule(data_dir, tmp_path):
    """`data.label=null` prepares with the default rule (as `~data.label`), and the run trains on it."""
    from tornado.train import train

    r = train(cfg_for(*small(data_dir, "epochs=1", "score_epochs=false"), "data.label=null"), output_dir=tmp_path)
    assert r["status"] == "ok"


def test_the_clock_keeps_the_whole_jobs_time_to_each_checkpoint():
    import time

    from tornado.fit import _Clock

    first = _Clock()
    first.run_start = time.perf_counter() - 10  # a session that started 10 s ago, start-up and all
    first.epoch_s, first._end = [4.0], (5.0, 0.5)
    saved = first.state_dict()
    assert saved["times"]["wall_s"] == 5.0 and saved["times"]["data_wait_s"] == 0.5
    assert 10 <= saved["times"]["run_s"] < 11
    resumed = _Clock()
    resumed.load_state_dict(saved)
    assert resumed.before == saved["times"] and resumed.restored == 1
    older = _Clock()  # a checkpoint from before these totals: its epochs' time stands for the rest
    older.load_state_dict({"epoch_s": [4.0, 3.0]})
    assert older.before == {"wall_s": 7.0, "data_wait_s": 0.0, "epoch_scoring_s": 0.0, "run_s": 7.0}


def test_a_resumed_run_with_dropout_matches_one_never_stopped(data_dir, tmp_path):
    """Dropout draws from torch's global generator, which Lightning's checkpoints do not hold: it is seeded
    per epoch, so a session resumed after epoch 1 draws epoch 2's masks as an unbroken run does."""
    from tornado.train import train

    args = small(data_dir, "model.dropout=0.3")
    train(cfg_for(*args, "epochs=1"), output_dir=tmp_path / "resumed")
    resumed = train(cfg_for(*args, "epochs=2"), output_dir=tmp_path / "resumed")
    straight = train(cfg_for(*args, "epochs=2"), output_dir=tmp_path / "straight")
    assert resumed["resumed_after_epochs"] == 1
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in straight["history"]]
    assert resumed["metrics"] == straight["metrics"]


def test_a_resumed_run_keeps_the_data_placement_auto_chose_before(data_dir, tmp_path, monkeypatch):
    """fast.resident=auto decides by the memory free at the start, and resident and streamed data are drawn in
    another batch order: a session resumed when more (or less) memory is free keeps the earlier sessions' choice."""
    from tornado import datamodule
    from tornado.train import train

    args = small(data_dir, "logger=none")
    monkeypatch.setattr(datamodule, "_fits_in_memory", lambda nbytes, device: False)
    train(cfg_for(*args, "epochs=1"), output_dir=tmp_path / "resumed")
    monkeypatch.setattr(datamodule, "_fits_in_memory", lambda nbytes, device: True)
    resumed = train(cfg_for(*args, "epochs=2"), output_dir=tmp_path / "resumed")
    straight = train(cfg_for(*args, "epochs=2", "fast.resident=false"), output_dir=tmp_path / "straight")
    assert resumed["resumed_after_epochs"] == 1 and resumed["fast"]["resident"] is False
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in straight["history"]]
    assert resumed["metrics"] == straight["metrics"]


def test_a_resumed_run_whose_resident_set_no_longer_fits_streams_it_and_says_so(data_dir, tmp_path, monkeypatch,
                                                                                   caplog):
    """Resumed where less memory is free (another node), a set held before is streamed, not held at the risk of
    the run being killed for memory; the warning says its numbers will differ from a run never stopped."""
    from tornado import datamodule
    from tornado.train import train

    args = small(data_dir, "logger=none")
    monkeypatch.setattr(datamodule, "_fits_in_memory", lambda nbytes, device: True)
    train(cfg_for(*args, "epochs=1"), output_dir=tmp_path)
    monkeypatch.setattr(datamodule, "_fits_in_memory", lambda nbytes, device: False)
    with caplog.at_level("WARNING", logger="tornado.train"):
        resumed = train(cfg_for(*args, "epochs=2"), output_dir=tmp_path)
    said = [r.getMessage() for r in caplog.records if r.name == "tornado.train" and r.levelname == "WARNING"]
    assert resumed["resumed_after_epochs"] == 1 and resumed["fast"]["resident"] is False
    assert len(said) == 1 and "with resident true there, false here: the epochs from here on" in said[0], said


def test_a_resume_with_another_thread_count_says_its_numbers_will_differ(data_dir, tmp_path, caplog):
    from tornado.train import train

    args = small(data_dir, "logger=none")
    train(cfg_for(*args, "epochs=1"), output_dir=tmp_path)
    with caplog.at_level("WARNING", logger="tornado.train"):
        train(cfg_for(*args, "epochs=2", "threads=2"), output_dir=tmp_path)
    said = [r.getMessage() for r in caplog.records if r.name == "tornado.train" and r.levelname == "WARNING"]
    assert len(said) == 1 and "with threads 1 there, 2 here: the epochs from here on will not match" in said[0], said
    caplog.clear()
    with caplog.at_level("WARNING", logger="tornado.train"):
        train(cfg_for(*args, "epochs=3", "threads=2"), output_dir=tmp_path)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_a_resumed_session_stopped_before_an_epoch_ends_names_the_epochs_saved_before(data_dir, tmp_path,
                                                                                      monkeypatch):
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from tornado.model import StormModule
    from tornado.train import train

    train(cfg_for(*small(data_dir, "epochs=1")), output_dir=tmp_path)

    def stopped(*args, **kwargs):
        raise SIGTERMException()

    monkeypatch.setattr(StormModule, "training_step", stopped)
    with pytest.raises(TornadoError) as e:
        train(cfg_for(*small(data_dir, "epochs=3")), output_dir=tmp_path)
    assert str(e.value).startswith("interrupted by SIGTERM; 1 epoch saved in "), str(e.value)
    assert e.value.code == 143


def test_resume_continues_with_history_and_times(data_dir, tmp_path, caplog):
    from tornado.runpage import facts
    from tornado.train import _headline, train

    one = train(cfg_for(*small(data_dir, "epochs=1")), output_dir=tmp_path)
    record = json.loads((tmp_path / "result.json").read_text())  # as if the first session began long ago
    (tmp_path / "result.json").write_text(json.dumps(record | {"started": "2026-01-01T00:00:00+00:00"}))
    half = tmp_path / "checkpoints" / ".last.ckpt.4242.tmp"  # a killed session's half-written checkpoint
    half.write_bytes(b"PK\x03")
    two = train(cfg_for(*small(data_dir, "epochs=2")), output_dir=tmp_path)
    assert not half.exists()
    assert two["resumed_after_epochs"] == 1 and two["started"] == "2026-01-01T00:00:00+00:00"
    assert [h["epoch"] for h in two["history"]] == [0, 1]
    assert two["history"][0] == one["history"][0]  # epoch 0 as the first run saw it, time included
    assert two["times"]["epoch_s"][0] == one["times"]["epoch_s"][0]
    assert two["times"]["wall_s"] > one["times"]["epoch_s"][0]
    assert two["times"]["total_s"] >= two["times"]["wall_s"]  # the earlier session counts in both
    for key in ("wall_s", "data_wait_s", "epoch_scoring_s"):
        assert two["times"][key] > one["times"][key] > 0, key
    # kept aside, not deleted by the logger; named by the epochs it holds, from 1
    assert (tmp_path / "csv" / "metrics.epochs-1-1.csv").exists()
    assert "samples/s, resumed after epoch 1); logs" in _headline(two)
    assert dict(facts(two))["resumed"] == "after epoch 1: the times include the earlier session's"
    logged = (tmp_path / "csv" / "metrics.csv").read_text()
    caplog.set_level("INFO", logger="tornado.train")
    again = train(cfg_for(*small(data_dir, "epochs=2")), output_dir=tmp_path)  # finished: nothing to train
    assert [m for m in caplog.messages if m.startswith("nothing left")] == [
        f"nothing left to train: 2 epochs trained in an earlier session ({tmp_path / 'checkpoints' / 'last.ckpt'}); "
        "scoring again"]
    assert "samples/s, all in an earlier session); logs" in _headline(again)
    assert dict(facts(again))["resumed"].startswith("with nothing left to train: all 2 epochs were trained")
    assert again["history"] == two["history"] and again["metrics"] == two["metrics"]
    assert {k: v for k, v in again["times"].items() if k not in ("total_s", "test_s")} == \
        {k: v for k, v in two["times"].items() if k not in ("total_s", "test_s")}
    assert (tmp_path / "csv" / "metrics.csv").read_text() == logged  # the last session's log, where it was
    assert [f.name for f in sorted((tmp_path / "csv").glob("*.csv"))] == ["metrics.csv", "metrics.epochs-1-1.csv"]
    # continued where it stopped (weights, optimiser, the epoch's data order): as if never stopped
    straight = train(cfg_for(*small(data_dir, "epochs=2")), output_dir=tmp_path / "straight")
    assert straight["resumed_after_epochs"] == 0
    assert [h["train_loss"] for h in two["history"]] == [h["train_loss"] for h in straight["history"]]
    assert two["metrics"] == straight["metrics"]
    # the logs of both sessions (the first moved aside by the second, named by the epochs it holds) count
    # steps on from where the first stopped
    logs = [tmp_path / "csv" / "metrics.epochs-1-1.csv", tmp_path / "csv" / "metrics.csv"]
    steps = [pd.read_csv(f)["step"].tolist() for f in logs]
    assert sum(steps, []) == pd.read_csv(tmp_path / "straight" / "csv" / "metrics.csv")["step"].tolist()


@pytest.mark.parametrize("case, message", [
    ("other settings", "a checkpoint of other settings \\(batch_size 64 there, 128 here\\)"),
    ("fewer epochs", "2 epochs done, more than epochs=1"),
    ("unreadable", "not a readable checkpoint"),
    ("missing data", "^data.source: /nowhere: no such folder$"),  # said as such, not as other settings
])
def test_resume_refuses_a_checkpoint_it_cannot_continue(case, message, data_dir, tmp_path):
    from tornado.train import train

    train(cfg_for(*small(data_dir, "epochs=2")), output_dir=tmp_path)
    last = tmp_path / "checkpoints" / "last.ckpt"
    over = {"other settings": ["batch_size=128"], "fewer epochs": ["epochs=1"], "unreadable": [],
            "missing data": ["data.source=/nowhere"]}[case]
    if case == "unreadable":
        last.write_bytes(last.read_bytes()[:1000])
    record = (tmp_path / "result.json").read_bytes()
    with pytest.raises(TornadoError, match=message):
        train(cfg_for(*small(data_dir, "epochs=2"), *over), output_dir=tmp_path)
    assert (tmp_path / "result.json").read_bytes() == record  # the earlier run's record, as it was
    if case != "missing data":
        assert train(cfg_for(*small(data_dir, "epochs=2"), *over, "resume=false"),
                     output_dir=tmp_path)["status"] == "ok"


def test_sigterm_stops_with_one_line_and_the_rerun_resumes(data_dir, tmp_path):
    import signal
    import time

    run = tmp_path / "run"
    args = [*small(data_dir, "epochs=200"), f"hydra.run.dir={run}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("TORNADO_SWEEP_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "tornado.train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("error: interrupted by SIGTERM; "), err[-2000:]
    assert "run the same command again to resume" in err and "Traceback" not in err
    assert "Received SIGTERM" not in out + err  # Lightning's own notice, in the middle of the bar's line
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "failed" and result["error"] == "interrupted (SIGTERM)"
    done = torch.load(last, weights_only=False)["epoch"] + 1
    assert f"; {done} epoch{'' if done == 1 else 's'} saved in " in err
    # what it did before it stopped, for its report
    assert [h["epoch"] for h in result["history"]] == list(range(done)) and len(result["times"]["epoch_s"]) == done
    assert sum(result["times"]["epoch_s"]) < result["times"]["wall_s"] and result["batch"]["global"] == 64
    assert result["devices"]["count"] == 1 and result["data"]["n_train"] > 0 and "metrics" not in result
    p = _cli([*small(data_dir, f"epochs={done + 1}"), f"hydra.run.dir={run}"], cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    result = json.loads((run / "result.json").read_text())
    assert result["resumed_after_epochs"] == done and len(result["history"]) == done + 1
    saved = OmegaConf.load(run / ".hydra" / "config.yaml")  # the record of the command that trained last
    assert saved.epochs == done + 1 and f"epochs={done + 1}" in OmegaConf.load(run / ".hydra" / "overrides.yaml")
    assert OmegaConf.load(run / ".hydra" / "hydra.yaml").hydra.run.dir == str(run)


def _cli(args: list[str], cwd: Path, timeout: int = 300, sweep: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("TORNADO_SWEEP_DIR", None)
    if sweep is not None:
        env["TORNADO_SWEEP_DIR"] = str(sweep)
    return subprocess.run([sys.executable, "-m", "tornado.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_bad_value_one_line_exit_2(data_dir, tmp_path):
    p = _cli([*small(data_dir), "batch_size=-5", f"hydra.run.dir={tmp_path / 'new' / 'run'}"], cwd=ROOT)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1] == "error: batch_size=-5: must be a positive integer"
    assert "Traceback" not in p.stderr
    assert list(tmp_path.iterdir()) == []  # made for this run (new/ too), which left nothing in it


def test_a_refused_single_run_leaves_no_folder_of_its_own(data_dir, tmp_path):
    # the default folder (outputs/runs/<time>-<pid> under the working directory)
    p = _cli([*small(data_dir), "data.source=/nowhere"], cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1] == "error: data.source: /nowhere: no such folder"
    assert list(tmp_path.iterdir()) == []  # outputs/runs too, made for it
    (tmp_path / "outputs").mkdir()
    p = _cli([*small(data_dir), "data.source=/nowhere"], cwd=tmp_path)
    assert p.returncode == 2 and list(tmp_path.iterdir()) == [tmp_path / "outputs"]  # there before: it stays
    assert list((tmp_path / "outputs").iterdir()) == []
    # a folder that was there before stays, and a run's record in it is left as it was
    (tmp_path / "mine" / ".hydra").mkdir(parents=True)
    (tmp_path / "mine" / "result.json").write_text('{"status": "ok", "metrics": {"roc_auc": 0.8}}')
    (tmp_path / "mine" / ".hydra" / "overrides.yaml").write_text("- epochs=3\n")
    p = _cli([*small(data_dir), "epochs=0", f"hydra.run.dir={tmp_path / 'mine'}"], cwd=ROOT)
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1] == "error: epochs=0: must be a positive integer"
    assert (tmp_path / "mine" / "result.json").read_text() == '{"status": "ok", "metrics": {"roc_auc": 0.8}}'
    assert (tmp_path / "mine" / ".hydra" / "overrides.yaml").read_text() == "- epochs=3\n"  # Hydra's record too
    assert sorted(p.name for p in (tmp_path / "mine" / ".hydra").iterdir()) == ["overrides.yaml"]
    # a sweep's job keeps its failed record: the launcher reads it
    p = _cli([*small(data_dir), "epochs=0", f"hydra.run.dir={tmp_path / 'sweep' / '0'}"], cwd=ROOT,
             sweep=tmp_path / "sweep")
    assert p.returncode == 2 and json.loads((tmp_path / "sweep" / "0" / "result.json").read_text())["error"] == \
        "TornadoError: epochs=0: must be a positive integer"


@pytest.mark.parametrize("how", ["", "++"])
def test_a_refused_run_keeps_a_folder_it_was_given_holding_only_a_log(how, data_dir, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "train.log").write_text("an earlier command's log\n")
    p = _cli([*small(data_dir), "epochs=0", f"{how}hydra.run.dir={mine}"], cwd=ROOT)
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1] == "error: epochs=0: must be a positive integer"
    assert (mine / "train.log").read_text().startswith("an earlier command's log\n")


@pytest.mark.parametrize("gpus, visible, message", [
    (1, 0, "gpus=1 asks for 1 GPU but 0 are visible (CUDA_VISIBLE_DEVICES unset); use gpus=0, or "
           "trainer.accelerator=cpu gpus=1 for 1 CPU process"),
    (3, 1, "gpus=3 asks for 3 GPUs but 1 is visible (CUDA_VISIBLE_DEVICES unset); use gpus=0, or "
           "trainer.accelerator=cpu gpus=3 for 3 CPU processes"),
])
def test_counts_are_worded_in_the_singular_and_plural(gpus, visible, message, monkeypatch):
    from tornado.settings import resolve_devices

    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(TornadoError) as e:
        resolve_devices(cfg_for(f"gpus={gpus}"))
    assert str(e.value) == message


@pytest.mark.parametrize("args, line", [
    (["epoch=3"], "error: epoch: no such setting (did you mean epochs?)"),
    (["data.split.val_frac=0.2"], "error: data.split.val_frac: no such setting (did you mean "
                                  "data.split.val_fraction?)"),
    (["-m", "batch_size=64,128", "logger=foo"], "error: logger=foo: no such option in conf/logger/ (use one of "
                                                "default, none)"),
    (["data=5"], "error: data=5: data names a file of conf/data/: use one of synthetic"),
    (["-m", "+model=true"], "error: +model=true: model names a file of conf/model/: use one of paper, paper_code"),
    (["-m", "model=paper,paper_code", "data=5"], "error: data=5: data names a file of conf/data/: use one of "
                                                 "synthetic"),  # the group given a number, not the one swept
    (["batch_size=[1,"], "error: batch_size=[1,: not an override Hydra can read (no viable alternative at input "
                         "'[1,')"),
    (["hydra.launcher.max_parallel=abc"], "error: Error merging override hydra.launcher.max_parallel=abc: Value "
                                          "'abc' of type 'str' could not be converted to Integer"),
    (["-m", "--cfg", "job"], "error: Only one of --run, --multirun, --cfg, --info and --shell_completion can be "
                             "specified"),
    (["--resolve"], "error: The --resolve flag can only be used in conjunction with --cfg or --help"),
    (["~epochz"], "error: ~epochz: no such setting (did you mean epochs?)"),
    (["~paper"], "error: ~paper: its value is null: Hydra removes only a setting that holds a value"),
    (["-m", "batch_size=64,128", "hydra.launcher.max_parallel=${nope}"], "error: hydra.launcher.max_parallel: "
                                                                         "Interpolation key 'nope' not found"),
])
def test_hydra_s_own_refusals_are_one_line_exit_2(args, line, tmp_path):
    """What Hydra refuses before tornado.train runs (a misspelt setting, a missing option) reads like ours."""
    p = _cli([*args, f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=ROOT)
    assert p.returncode == 2 and p.stderr == line + "\n", p.stderr[-2000:]
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("key", ["hydra.run.dir", "hydra.sweep.dir"])
def test_a_folder_of_hydra_s_that_does_not_resolve_is_one_line_exit_2(key, tmp_path):
    sweep = ["-m", "batch_size=64,128"] if "sweep" in key else []
    p = _cli([*sweep, f"{key}=${{oc.env:TORNADO_NOPE}}"], cwd=tmp_path)
    assert p.returncode == 2 and p.stderr == (f"error: {key}: KeyError raised while resolving interpolation: "
                                              "\"Environment variable 'TORNADO_NOPE' not found\"\n"), p.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["tornado.train", "tornado.prepare"])
def test_a_log_name_that_does_not_resolve_leaves_no_folder(command, tmp_path):
    """Hydra makes the run's folder, then fails on the log's name: the folder it made goes, the setting is named as
    typed (not the log's file name made of it)."""
    p = subprocess.run([sys.executable, "-m", command, "hydra.job.name=${nope}", f"out_dir={tmp_path / 'data'}"
                        if command == "tornado.prepare" else "epochs=1"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 2 and p.stderr == "error: hydra.job.name: Interpolation key 'nope' not found\n", p.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, line", [
    (["epochs=0"], "error: epochs=0: must be a positive integer"),
    (["+epoch=3"], "error: epoch: no such setting (did you mean epochs?)"),
    (["epoch=3"], "error: epoch: no such setting (did you mean epochs?)"),  # Hydra's refusal, in its words
    (["model=nope"], "error: model=nope: no such option in conf/model/ (use one of paper, paper_code)"),
    (["~epochs"], "error: epochs: missing: a run needs this setting"),
    (["data.split.val_fraction=2"], "error: data.split.val_fraction: 2: must be a number in [0, 1)"),
    (["augment.rotation=400"], "error: augment.rotation: must be a number in [0, 360], got 400"),
    (["data.source=/nowhere"], "error: data.source: /nowhere: no such folder"),
    (["gpus=1", "trainer.accelerator=gpu"], "error: gpus=1 asks for 1 GPU but 0 are visible (CUDA_VISIBLE_DEVICES=); "
                                            "use gpus=0, or trainer.accelerator=cpu gpus=1 for 1 CPU process"),
    (["hydra.run.dir=/nonexistent/r", "lr=-1"], "error: lr=-1: must be a positive number"),
    # `=$DIR` with DIR unset: Hydra would write the run, or the sweep, into the working directory
    (["hydra.run.dir="], "error: hydra.run.dir=: must name a folder (leave the setting out for the default)"),
    (["-m", "batch_size=64,128", "hydra.sweep.dir=''"],
     "error: hydra.sweep.dir=: must name a folder (leave the setting out for the default)"),
    # left to the run (which loads Lightning, here missing): good settings, a sweep's job, what Hydra
    # refuses where Hydra's own settings are given, and interpolations only the run resolves
    (["epochs=1"], None),
    (["epochs=0", "SWEEP"], None),
    (["hydra.run.dir=/nonexistent/r", "epoch=3"], None),
    (["data.out_dir=${hydra:runtime.cwd}/d", "epochs=0"], None),
    (["hydra.job.chdir=true", "data.source=relative"], None),  # read from the run's folder, which is not made yet
    (["hydra.job.chdir=true", "data.source=/nowhere"], "error: data.source: /nowhere: no such folder"),
])
def test_a_bad_single_run_is_refused_before_lightning_loads(args, line, tmp_path):
    """`python -m tornado.train` checks a single run's settings before it imports Lightning (3-5 s), in the words and
    with the exit status the run would use, and before Hydra makes the run's folder."""
    env = {k: v for k, v in os.environ.items() if k != "TORNADO_SWEEP_DIR"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    if "SWEEP" in args:
        args, env["TORNADO_SWEEP_DIR"] = [a for a in args if a != "SWEEP"], str(tmp_path)
    p = subprocess.run([sys.executable, "-c", WITHOUT_LIGHTNING, *args], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    missing = f"error: pytorch_lightning: not installed for {sys.executable}; "
    if line is None:
        assert p.returncode == 1 and p.stderr.startswith(missing), p.stderr[-2000:]
    else:
        assert p.returncode == 2 and p.stderr == line + "\n", p.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []


def test_a_sweep_s_launcher_checks_and_starts_its_jobs_without_lightning(data_dir, tmp_path):
    """A sweep's launcher composes, checks and starts its jobs and never trains: it does not load Lightning (seconds,
    and memory a SLURM sweep's launcher would hold while it waits). A bad value in one job is refused so; the jobs,
    each its own process, load it and train."""
    env = {k: v for k, v in os.environ.items() if k not in ("TORNADO_SWEEP_DIR", "CUDA_VISIBLE_DEVICES")}

    def sweep(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", WITHOUT_LIGHTNING, "-m", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)

    p = sweep("lr=0.001,-1", f"hydra.sweep.dir={tmp_path / 'bad'}")
    assert p.returncode == 2 and p.stderr == "error: job 1 [lr=-1]: lr=-1: must be a positive number\n", p.stderr
    assert list(tmp_path.iterdir()) == []
    good = tmp_path / "good"
    p = sweep("seed=0,1", *small(data_dir, "epochs=1", "score_epochs=false", "logger=none"), f"hydra.sweep.dir={good}")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    runs = [json.loads((good / str(n) / "result.json").read_text()) for n in (0, 1)]
    assert [(r["status"], r["hparams"]["seed"], len(r["history"])) for r in runs] == [("ok", 0, 1), ("ok", 1, 1)]
    assert all(r["versions"]["pytorch_lightning"] for r in runs)
    assert len(pd.read_csv(good / "results.csv")) == 2


def test_the_run_records_its_overrides_as_typed(data_dir, tmp_path):
    """An interpolation given on the command line is recorded as given (it was resolved against Hydra's own
    settings, and one naming a run setting failed there); one naming nothing is refused in one line."""
    args = [*small(data_dir, "epochs=1", "score_epochs=false"), "trainer.max_epochs=${epochs}"]
    p = _cli([*args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["overrides"][-1] == "trainer.max_epochs=${epochs}" and len(result["history"]) == 1
    p = _cli([*args[:-1], "trainer.max_epochs=${epochz}", f"hydra.run.dir={tmp_path / 'bad'}"], cwd=ROOT)
    assert p.returncode == 2 and p.stderr == "error: trainer.max_epochs: Interpolation key 'epochz' not found\n"
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("override, message", [
    ("~epochs", "epochs: missing: a run needs this setting"),
    ("~fast.bf16", "fast.bf16: missing: a run needs this setting"),
    ("~fast", "fast: missing: a run needs this group of settings"),
    ("trainer.max_epochs=${epochz}", "trainer.max_epochs: Interpolation key 'epochz' not found"),
    # settings the run reads itself (a traceback mid-run, or Lightning's 1000 epochs without max_epochs)
    ("~trainer.max_epochs", "trainer.max_epochs: missing: a run needs this setting"),
    ("~trainer.strategy", "trainer.strategy: missing: a run needs this setting"),
    ("~model.dropout", "model.dropout: missing: a run needs this setting"),
    ("~logger", "logger: missing: a run needs this group of settings (logger=none for no logger)"),
])
def test_a_setting_removed_or_not_resolved_is_one_line(override, message, data_dir, tmp_path):
    from tornado.train import train

    with pytest.raises(TornadoError) as e:
        train(cfg_for(*small(data_dir), override), output_dir=tmp_path)
    assert str(e.value) == message and not (tmp_path / "result.json").exists()


@pytest.mark.parametrize("key", ["hydra.run.dir", "hydra.sweep.dir"])
def test_a_folder_that_cannot_be_written_is_one_line_exit_2(key, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    where = tmp_path / "a_file" / "run"
    p = _cli([*(["-m", "batch_size=64,128"] if key == "hydra.sweep.dir" else []), f"{key}={where}"], cwd=ROOT)
    assert p.returncode == 2 and p.stderr == (f"error: {where}: cannot write there (Not a directory); hydra.run.dir= "
                                              "(hydra.sweep.dir= for a sweep) sets another folder\n"), p.stderr[-2000:]


def test_a_run_folder_in_use_is_refused_and_left_alone(data_dir, tmp_path, monkeypatch):
    """Another process training in the folder (a sweep's job its killed launcher left running): refused at once,
    its result.json untouched, with the exit status that tells a launcher not to record a failure there."""
    import fcntl

    from tornado.errors import IN_USE
    from tornado.train import train

    tmp_path.joinpath("result.json").write_text('{"status": "running"}')
    with open(tmp_path / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        for sweep in (None, str(tmp_path)):  # a single run, and a sweep's job (which records its failures)
            monkeypatch.delenv("TORNADO_SWEEP_DIR", raising=False)
            if sweep:
                monkeypatch.setenv("TORNADO_SWEEP_DIR", sweep)
            with pytest.raises(TornadoError, match=r": in use by another training process \(pid 4242\); wait") as e:
                train(cfg_for(*small(data_dir, "epochs=1")), output_dir=tmp_path)
            assert e.value.code == IN_USE and (tmp_path / "result.json").read_text() == '{"status": "running"}'
    monkeypatch.delenv("TORNADO_SWEEP_DIR")
    r = train(cfg_for(*small(data_dir, "epochs=1")), output_dir=tmp_path)  # let go: it runs
    assert r["status"] == "ok" and (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"


def test_sigterm_while_data_is_prepared_is_one_line_and_leaves_no_temp_file(tmp_path):
    """`kill` (or SLURM's scancel) before training: the prepared file's temp file is removed, one line, 143."""
    import signal
    import time

    data = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-m", "tornado.train", f"data.out_dir={data}", "data.synth.days=30",
                             "data.synth.patches_per_day=400", f"hydra.run.dir={tmp_path / 'run'}", "gpus=0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not list(data.glob(".storms-*.tmp")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert list(data.glob(".storms-*.tmp")), "no temp file seen"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and err.strip().splitlines()[-1] == "error: interrupted (SIGTERM)", err[-2000:]
    assert not list(data.glob(".storms-*.tmp")) and not list(data.glob("storms-*.h5"))  # the .lock stays
    assert not (tmp_path / "run").exists()  # a single run refused before training leaves nothing


def test_resume_hint_names_the_run_folder_when_the_command_did_not(monkeypatch):
    from tornado.fit import _resume_hint

    monkeypatch.delenv("TORNADO_SWEEP_DIR", raising=False)
    hint = _resume_hint(Path("/somewhere/outputs/runs/2026-01-01_00-00-00-1"))
    assert "hydra.run.dir=/somewhere/outputs/runs/2026-01-01_00-00-00-1 to resume" in hint
    monkeypatch.setenv("TORNADO_SWEEP_DIR", "/somewhere/outputs/multirun/x")
    hint = _resume_hint(Path("/somewhere/outputs/multirun/x/3"))
    assert "the sweep's command again with hydra.sweep.dir=/somewhere/outputs/multirun/x to resume" in hint
    monkeypatch.setenv("TORNADO_SWEEP_DIR", "/my runs/x")  # a space: quoted for the shell and for Hydra
    assert "the sweep's command again with 'hydra.sweep.dir='\"'\"'/my runs/x'\"'\"'' to resume" in _resume_hint(
        Path("/my runs/x/3"))


def test_progress_bar_counts_batches_on_a_terminal_and_stays_out_of_pipes(data_dir, tmp_path, on_terminal):
    tty_run, piped_run = tmp_path / "tty", tmp_path / "piped"
    rc, text = on_terminal(["tornado.train", *small(data_dir, "epochs=1"), f"hydra.run.dir={tty_run}"])
    assert rc == 0, text[-2000:]
    result = json.loads((tty_run / "result.json").read_text())
    steps = math.ceil(result["data"]["n_train"] / 64)
    assert f" {steps}/{steps} " in text, text[-1500:]  # batches, not the blocks of batches Lightning sees
    p = _cli([*small(data_dir, "epochs=1"), f"hydra.run.dir={piped_run}"], cwd=ROOT)
    assert p.returncode == 0 and f"/{steps}" not in p.stdout + p.stderr


def test_cpu_ddp_two_processes_keep_global_batch(data_dir, tmp_path):
    run = tmp_path / "ddp"
    p = _cli([*small(data_dir, "epochs=10", "batch_size=128", "lr=0.003", "trainer.accelerator=cpu", "gpus=2",
                     "patience=1"), f"hydra.run.dir={run}"], cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads((run / "result.json").read_text())
    assert result["batch"] == {"global": 128, "per_device": 64, "devices": 2, "effective_global": 128}
    assert result["devices"]["count"] == 2
    assert (run / "train_ddp_process_1.log").exists()
    said = (f"stopped early after epoch {len(result['history'])} of 10: validation ROC AUC has not improved for "
            f"1 epoch; scoring epoch {result['early_stop']['best_epoch']}'s weights")
    assert said in p.stdout and said in (run / "train.log").read_text()  # on the terminal and in the log
    # rank 0 scores the validation split; its decision to stop reaches rank 1 (else the run would hang)
    aucs = [h["val_roc_auc"] for h in result["history"]]
    assert result["early_stop"]["stopped"] and len(aucs) < 10 and aucs[-1] <= max(aucs[:-1])
    assert result["metrics"]["val_roc_auc"] == pytest.approx(max(aucs), abs=1e-6)  # the best epoch's weights


def test_cpu_ddp_on_streamed_data_with_fewer_chunks_than_ranks(data_dir, tmp_path):
    """Data read from the file chunk by chunk (not held in memory), one chunk for two ranks: a rank without a
    chunk of its own used to spin for ever while the other waited for it."""
    run = tmp_path / "ddp"
    p = _cli([*small(data_dir, "epochs=1", "batch_size=512", "trainer.accelerator=cpu", "gpus=2",
                     "fast.resident=false", "score_epochs=false"), f"hydra.run.dir={run}"], cwd=ROOT, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "ok" and result["batch"]["per_device"] == 256 and result["devices"]["count"] == 2
    assert "Initializing distributed" not in p.stdout + p.stderr  # each rank's start-up line


def test_lightning_s_per_rank_start_up_lines_are_quiet_but_its_warnings_are_not():
    import importlib
    import logging

    importlib.import_module("tornado.fit")  # which sets the levels as it is imported
    for name in ("lightning_fabric.utilities.distributed", "pytorch_lightning.accelerators.cuda"):
        assert not logging.getLogger(name).isEnabledFor(logging.INFO)
        assert logging.getLogger(name).isEnabledFor(logging.WARNING)


def test_predict_round_trip(first_run, data_dir, tmp_path):
    from tornado.data import find_files, read_storms
    from tornado.predict import predict

    result, out = first_run
    files = find_files(data_dir / "synthetic")[-2:]
    df = predict(out / "checkpoints" / "last.ckpt", str(data_dir / "synthetic" / files[0].name))
    storms = read_storms([files[0]])
    assert len(df) == len(storms.y)
    assert np.array_equal(df["label"].to_numpy(dtype=np.int64), storms.y.astype(np.int64))
    assert ((df["probability"] >= 0) & (df["probability"] <= 1)).all()
    csv = tmp_path / "p.csv"
    p = subprocess.run([sys.executable, "-m", "tornado.predict", f"checkpoint={out / 'checkpoints' / 'last.ckpt'}",
                        f"input={data_dir / 'synthetic'}", f"output={csv}"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    every = pd.read_csv(csv)
    assert len(every) == len(read_storms(data_dir / "synthetic").y)
    # the run's own test forecasts, patch for patch: inputs standardised with the checkpoint's scaler
    test = every[every["run_date"] >= "2015-01-01"]
    preds = np.load(out / "test_predictions.npz")
    np.testing.assert_array_equal(test["label"], preds["label"])
    np.testing.assert_allclose(test["probability"], preds["prob"], atol=2e-6)
    assert preds["prob"].std() > 0.01  # forecasts that differ from patch to patch, so the match means something
    # storm centres from the files; yes/no at the threshold the run chose on its validation split
    assert every["centroid_lat"].between(20, 55).all() and every["centroid_lon"].between(-130, -60).all()
    assert f"yes/no (tornado) at threshold {result['metrics']['threshold']:.4g}" in p.stdout
    thr, clear = result["metrics"]["threshold"], (every["probability"] - result["metrics"]["threshold"]).abs() > 1e-5
    np.testing.assert_array_equal(every["tornado"][clear], (every["probability"] >= thr)[clear])  # csv: 6 decimals
    assert "tornado" not in predict(out / "checkpoints" / "last.ckpt", str(files[0]), threshold="none").columns
    with pytest.raises(TornadoError, match=r"threshold=2: expected auto, none or a probability in \[0, 1\]"):
        predict(out / "checkpoints" / "last.ckpt", str(files[0]), threshold="2")
    # a run's folder stands for its checkpoint (and its threshold)
    by_folder = predict(out, str(files[0]))
    from tornado.predict import load_model

    assert load_model(out).hparams.label == {"reduce": "max", "threshold": 0.005, "inclusive": False}  # the run's
    pd.testing.assert_frame_equal(by_folder, predict(out / "checkpoints" / "last.ckpt", str(files[0])))
    from tornado.predict import _main

    with pytest.raises(TornadoError, match=r"output=.*/p.csv/x.csv: cannot write it \(.*/p.csv is a file\)$"):
        _main([f"checkpoint={out}", f"input={files[0]}", f"output={csv / 'x.csv'}"])  # under a file
    bad = subprocess.run([sys.executable, "-m", "tornado.predict", f"checkpoint={tmp_path / 'nope.ckpt'}",
                          f"input={data_dir}"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == f"error: checkpoint={tmp_path / 'nope.ckpt'}: no such file"


@pytest.mark.slow
def test_default_run_reaches_skill(tmp_path):
    """`python -m tornado.train` with no arguments: the default synthetic set is learnable (ROC AUC >= 0.75)."""
    p = _cli([f"data.out_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "ROC AUC" in p.stdout and str(tmp_path / "run") in p.stdout
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["metrics"]["roc_auc"] >= 0.75, result["metrics"]


def test_predict_reads_files_without_future_vorticity(first_run, data_dir, tmp_path):
    """New model output has no RVORT1_MAX_future: predict still scores it, with an empty label."""
    import xarray as xr
    from tornado.data import find_files
    from tornado.predict import predict

    src = find_files(data_dir / "synthetic")[0]
    with xr.open_dataset(src, decode_times=False) as ds:
        ds.drop_vars("RVORT1_MAX_future").load().to_netcdf(tmp_path / src.name)
    df = predict(first_run[1] / "checkpoints" / "last.ckpt", str(tmp_path / src.name))
    assert len(df) > 0 and df["label"].isna().all()
    with_label = predict(first_run[1] / "checkpoints" / "last.ckpt", str(src))
    assert np.allclose(df["probability"], with_label["probability"])
