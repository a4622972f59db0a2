"""SLURM sweeps on a real cluster (bash launchers/slurm_local.sh start): job arrays, ranks, cancel, resume.

Without a cluster these skip; with TORNADO_REQUIRE_SLURM=1 (CI) a missing cluster fails them.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

# Small jobs for a small node: one CPU per task, 1 GB, results polled every second.
SLURM = ["launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
         "hydra.launcher.poll_s=1", "hydra.launcher.time_min=10"]
FAKE_SLURM = ["hydra/launcher=tornado_slurm", *SLURM[1:]]


def results(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("[0-9]*/result.json")}


def wait_for(path: Path, timeout: float = 120) -> None:
    t0 = time.time()
    while not path.exists():
        assert time.time() - t0 < timeout, f"{path} did not appear in {timeout} s"
        time.sleep(0.2)


def test_slurm_sweep_of_the_real_train_runs_as_one_array(sweep_cli, sweep_train_overrides, tmp_path):
    sweep = tmp_path / "sweep"
    p = sweep_cli(["-m", "batch_size=64,128", "gpus=0", *sweep_train_overrides, *SLURM, f"hydra.sweep.dir={sweep}"],
                  module="tornado.train", cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "2 ok, 0 failed, 0 skipped" in p.stdout
    launch = json.loads((sweep / "launcher.json").read_text())
    ids = [j["slurm_id"] for j in launch["jobs"]]
    assert len({i.split("_")[0] for i in ids}) == 1 and sorted(i.split("_")[1] for i in ids) == ["0", "1"]
    assert all((sweep / ".submitit" / i).is_dir() for i in ids)
    res = results(sweep)
    assert {r["status"] for r in res.values()} == {"ok"}
    assert sorted(r["hparams"]["batch_size"] for r in res.values()) == [64, 128]
    table = pd.read_csv(sweep / "results.csv")
    assert list(table["status"]) == ["ok", "ok"] and table["roc_auc"].notna().all()


def test_slurm_multi_rank_job_gets_one_task_per_rank(sweep_cli, tmp_path):
    sweep = tmp_path / "sweep"
    p = sweep_cli(["-m", "gpus=2", "trainer.accelerator=cpu", *FAKE_SLURM, f"hydra.sweep.dir={sweep}"])
    assert p.returncode == 0, p.stderr
    envs = [json.loads((sweep / "0" / f"env_{r}.json").read_text()) for r in (0, 1)]
    assert [e["SLURM_PROCID"] for e in envs] == ["0", "1"]
    assert {e["SLURM_NTASKS"] for e in envs} == {"2"}
    assert envs[0]["SLURM_JOB_ID"] == envs[1]["SLURM_JOB_ID"]  # one job, two tasks
    assert (sweep / "0" / "stdout_rank1.log").exists()
    assert results(sweep)["0"]["status"] == "ok"


def test_slurm_cancelled_job_is_recorded_failed_and_rerun_on_resume(sweep_cli, sweep_popen, tmp_path):
    sweep, hold, counter = tmp_path / "sweep", tmp_path / "release", tmp_path / "trainings.txt"
    args = ["-m", "batch_size=32,64", *FAKE_SLURM, f"hydra.sweep.dir={sweep}", f"hold={hold}", f"counter={counter}"]
    proc = sweep_popen(args)
    wait_for(sweep / "1" / "env_0.json")
    env = json.loads((sweep / "1" / "env_0.json").read_text())
    task = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    subprocess.run(["scancel", task], check=True)
    time.sleep(1)
    hold.touch()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert "1 ok, 1 failed, 0 skipped" in out
    failed = results(sweep)["1"]
    assert failed["status"] == "failed" and f"SLURM job {task} CANCELLED" in failed["error"]
    assert sorted(pd.read_csv(sweep / "results.csv")["status"]) == ["failed", "ok"]

    again = sweep_cli(args)
    assert again.returncode == 0, again.stderr
    assert "1 ok, 0 failed, 1 skipped" in again.stdout
    assert [ln.split()[0] for ln in counter.read_text().splitlines()].count("1") == 2
    assert {r["status"] for r in results(sweep).values()} == {"ok"}


def test_slurm_no_wait_returns_at_once_and_jobs_collect_themselves(sweep_cli, tmp_path):
    sweep, hold = tmp_path / "sweep", tmp_path / "release"
    args = ["-m", "batch_size=32,64", *FAKE_SLURM, f"hydra.sweep.dir={sweep}", f"hold={hold}"]
    p = sweep_cli([*args, "hydra.launcher.wait=false"])
    assert p.returncode == 0, p.stderr
    assert "submitted to SLURM: job ids" in p.stdout and "python -m tornado.collect" in p.stdout
    assert not (sweep / "results.csv").exists()  # nothing has finished: the jobs are held
    hold.touch()
    t0 = time.time()
    while True:  # every finishing job refreshes results.csv (TORNADO_SWEEP_DIR)
        done = (sweep / "results.csv").exists() and list(pd.read_csv(sweep / "results.csv")["status"]) == ["ok"] * 2
        if done:
            break
        assert time.time() - t0 < 120, "the jobs did not refresh results.csv"
        time.sleep(0.5)
    again = sweep_cli(args)
    assert again.returncode == 0 and "0 ok, 0 failed, 2 skipped" in again.stdout
