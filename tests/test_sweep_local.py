"""Local sweeps: scheduling, failure isolation, resume, GPU refusal, CPU DDP jobs, results.csv.

Scheduler logic runs the fake app (tests/apps/tornado_fake_train.py: tornado.train's run contract, no
training); the GPU refusal and the CPU DDP sweep run the real tornado.train.
"""
from __future__ import annotations

import csv
import datetime as dt
import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hydra_plugins.tornado_launcher.schedule import imbalance, partition
from tornado import report
from tornado.collect import collect, sweep_efficiency
from tornado.records import write_json


def job_dirs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def results(sweep: Path) -> dict[str, dict]:
    return {p.name: json.loads((p / "result.json").read_text()) for p in job_dirs(sweep)}


def intervals(sweep: Path) -> list[tuple[float, float]]:
    """(start, end) of each job as the job itself recorded them."""
    t = dt.datetime.fromisoformat
    return [(t(r["started"]).timestamp(), t(r["finished"]).timestamp()) for r in results(sweep).values()]


def max_overlap(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    now = best = 0
    for _, d in events:
        now += d
        best = max(best, now)
    return best


def started_while_held(proc, sweep: Path, n: int, timeout: float = 120) -> set[str]:
    """Wait until `n` jobs of a sweep whose jobs wait for a `hold` file have started (written result.json), give
    the launcher a second to start more, and return the jobs started."""
    deadline = time.monotonic() + timeout
    while len(list(sweep.glob("*/result.json"))) < n:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {n} jobs running at once: {proc.communicate()[1][-2000:]}")
        time.sleep(0.1)
    time.sleep(1.0)
    return {p.parent.name for p in sweep.glob("*/result.json")}


def test_grid_runs_as_separate_jobs_two_at_a_time(sweep_popen, tmp_path):
    sweep, go = tmp_path / "sweep", tmp_path / "go"
    proc = sweep_popen(["-m", "batch_size=32,64,128,256", f"hold={go}", "hold_s=150", f"hydra.sweep.dir={sweep}",
                        "hydra.launcher.max_parallel=2"])
    # the jobs wait for `go`: two start and run side by side, and no third starts beside them
    assert len(started_while_held(proc, sweep, 2)) == 2
    plan = json.loads((sweep / "launcher.json").read_text())  # written before the first job started
    assert plan["state"] == "running" and [j["dir"] for j in plan["jobs"]] == ["0", "1", "2", "3"]
    started = {p.parent.name for p in sweep.glob("*/result.json")}
    assert sorted(report.load_sweep(sweep).waiting) == sorted({"0", "1", "2", "3"} - started)
    go.touch()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "4 ok, 0 failed, 0 skipped" in out
    res = results(sweep)
    assert sorted(res) == ["0", "1", "2", "3"]
    assert sorted(r["hparams"]["batch_size"] for r in res.values()) == [32, 64, 128, 256]
    assert max_overlap(intervals(sweep)) == 2  # the first two overlap for sure: both waited for `go`
    # cores are shared: 2 slots on this machine's cores, threads passed to the job and to OpenMP
    launch = json.loads((sweep / "launcher.json").read_text())
    for d in job_dirs(sweep):
        env = json.loads((d / "env_0.json").read_text())
        assert env["OMP_NUM_THREADS"] == str(launch["threads_per_job"])
        assert res[d.name]["hparams"]["threads"] == launch["threads_per_job"]
        assert env["TORNADO_SWEEP_DIR"] == str(sweep)
    table = pd.read_csv(sweep / "results.csv")
    assert list(table["status"]) == ["ok"] * 4 and list(table["job"]) == [0, 1, 2, 3]
    assert list(table["score"]) == [32.0, 64.0, 128.0, 256.0]


@pytest.mark.parametrize("warm", ["false", "true"])
def test_failures_are_isolated_reported_and_rerun_on_resume(sweep_cli, tmp_path, warm):
    sweep, counter = tmp_path / "sweep", tmp_path / "trainings.txt"
    args = ["-m", "batch_size=32,64,128,256", f"counter={counter}", f"hydra.sweep.dir={sweep}",
            "hydra.launcher.max_parallel=2", f"hydra.launcher.warm={warm}", "hydra.launcher.preload=[]"]
    first = sweep_cli(args, env={"FAKE_FAIL_BATCH": "64", "FAKE_CRASH_BATCH": "128"})
    assert first.returncode == 1
    assert "2 ok, 2 failed, 0 skipped" in first.stdout
    last = first.stdout.splitlines()[-1]  # `python`, or the venv's own where it is not activated
    assert last.startswith("tables, plots and report.html: ") and last.endswith(f"python -m tornado.report {sweep}")
    res = results(sweep)
    by_batch = {r["hparams"]["batch_size"]: r for r in res.values()}
    assert by_batch[64]["status"] == "failed" and by_batch[64]["error"] == "RuntimeError: fake failure"
    # the killed job could not write its result: the launcher did
    assert by_batch[128]["status"] == "failed" and "exit code -9" in by_batch[128]["error"]
    assert by_batch[128]["hparams"]["batch_size"] == 128 and by_batch[128]["config_hash"]
    assert [by_batch[b]["status"] for b in (32, 256)] == ["ok", "ok"]
    assert "failed: job" in first.stderr and "exit code -9" in first.stderr
    assert sorted(pd.read_csv(sweep / "results.csv")["status"]) == ["failed", "failed", "ok", "ok"]
    assert len(counter.read_text().splitlines()) == 4

    again = sweep_cli(args)  # same command, no failure injection
    assert again.returncode == 0, again.stderr
    assert "2 ok, 0 failed, 2 skipped" in again.stdout
    ran = [ln.split()[0] for ln in counter.read_text().splitlines()[4:]]
    assert sorted(ran) == sorted(d for d, r in res.items() if r["status"] == "failed")
    now = {r["hparams"]["batch_size"]: r for r in results(sweep).values()}
    assert {r["status"] for r in now.values()} == {"ok"}
    # the hash the launcher recorded for the killed job is the one the job itself computes
    assert now[128]["config_hash"] == by_batch[128]["config_hash"]


def test_progress_line_on_a_terminal_counts_jobs_and_estimates_the_time_left(on_terminal, tmp_path):
    sweep = tmp_path / "sweep"
    rc, shown = on_terminal(["tornado_fake_train", "-m", "data_multiplier=1,2,3,4", "sleep_s=0.6",
                             f"hydra.sweep.dir={sweep}", "hydra.launcher.max_parallel=1", "hydra.launcher.preload=[]"])
    assert rc == 0, shown[-2000:]
    lines = [ln for ln in shown.replace("\r", "\n").splitlines() if ln.strip()]
    progress = [ln.replace("\x1b[K", "") for ln in lines if "sweep: " in ln and " done (" in ln]
    assert any(ln.startswith("sweep: 0/4 done (0 ok, 0 failed), 1 running, 3 waiting, ") and "left" not in ln
               for ln in progress), progress
    # after the first job (the largest, 4 of 10 units of cost), an estimate of the rest: ~1.5 times its time
    after_one = [ln for ln in progress if ln.startswith("sweep: 1/4 done")]
    assert after_one and all(re.search(r", about \d+ s left$", ln) for ln in after_one), after_one
    assert (sweep / "results.csv").is_file()


def test_time_left_from_the_finished_jobs_seconds_per_cost():
    from hydra_plugins.tornado_launcher.jobs import Job, duration_text, eta_text, time_model

    def job(cost, status, start=None, end=None):
        return Job(num=0, overrides=[], cfg=None, dir=Path("."), cost=cost, status=status, start=start, end=end)

    # 10 s per unit of cost (the ok job; the failed one is left out of the rate); pending 4 -> 40 s of work;
    # running: cost 3 has run 10 of its 30 s -> 20 s, cost 1 has run 2 of its 10 s -> 8 s; 68 s, two at once
    jobs = [job(2, "ok", 0, 20), job(5, "failed", 20, 21), job(3, "running", 90, None), job(1, "running", 98, None),
            job(4, "pending"), job(7, "skipped")]
    assert eta_text(jobs, now=100.0) == ", about 34 s left"
    assert eta_text([j for j in jobs if j.status != "ok"], now=100.0) == ""  # no finished job: no estimate
    assert eta_text(jobs[:2], now=100.0) == ""  # nothing left
    # handed out but not started (queued in SLURM): still to run, not running; 20 s more, still two at once
    assert eta_text([*jobs, job(2, "running")], now=100.0) == ", about 44 s left"
    # finished jobs of costs 1 and 3 took 6 and 10 s: 4 s of start-up each, then 2 s per unit of cost; pending
    # cost 2 -> 8 s, running cost 3 (10 s) for 3 s so far -> 7 s; 15 s, one at a time
    jobs = [job(1, "ok", 0, 6), job(3, "ok", 6, 16), job(3, "running", 97, None), job(2, "pending")]
    assert time_model(jobs[:2]) == (4.0, 2.0)
    assert eta_text(jobs, now=100.0) == ", about 15 s left"
    # costs that fit no start-up (longer jobs faster) fall back to seconds per cost: 16 s / 4 = 4 per unit
    assert time_model([job(1, "ok", 0, 10), job(3, "ok", 10, 16)]) == (0.0, 4.0)
    assert [duration_text(s) for s in (0.4, 59.6, 61, 3600 * 2 + 125)] == ["0 s", "1 min 0 s", "1 min 1 s", "2 h 2 min"]


def test_another_grid_in_the_same_folder_keeps_every_finished_run(sweep_cli, tmp_path):
    sweep, counter = tmp_path / "sweep", tmp_path / "trainings.txt"
    base = ["-m", f"counter={counter}", f"hydra.sweep.dir={sweep}"]
    assert sweep_cli([*base, "batch_size=32,64,128"]).returncode == 0
    # the same configurations in another order, fewer of them: found wherever they are, none run or counted twice
    p = sweep_cli([*base, "batch_size=128,32"])
    assert p.returncode == 0 and "0 ok, 0 failed, 2 skipped" in p.stdout, p.stdout + p.stderr
    assert len(counter.read_text().splitlines()) == 3
    assert sorted(pd.read_csv(sweep / "results.csv")["batch_size"]) == [32, 64, 128]
    # a new configuration gets a new number, the finished runs stay where they are
    p = sweep_cli([*base, "batch_size=256,64", "hydra.launcher.max_parallel=1"])
    assert p.returncode == 0 and "1 ok, 0 failed, 1 skipped" in p.stdout, p.stdout + p.stderr
    assert re.search(r"job 3 \[[^]]*batch_size=256[^]]*\] ok", p.stdout), p.stdout
    assert {n: r["hparams"]["batch_size"] for n, r in results(sweep).items()} == {"0": 32, "1": 64, "2": 128, "3": 256}
    # other settings for the whole grid: new jobs beside the old ones
    p = sweep_cli([*base, "batch_size=32,64", "epochs=2"])
    assert p.returncode == 0 and "2 ok, 0 failed, 0 skipped" in p.stdout
    assert sorted(pd.read_csv(sweep / "results.csv")["epochs"]) == [1, 1, 1, 1, 2, 2]
    assert len(counter.read_text().splitlines()) == 6 and not (sweep / ".replaced").exists()


def test_another_configs_unfinished_run_is_moved_aside(sweep_cli, tmp_path):
    sweep, counter = tmp_path / "sweep", tmp_path / "trainings.txt"
    base = ["-m", f"counter={counter}", f"hydra.sweep.dir={sweep}"]
    assert sweep_cli([*base, "batch_size=32,64"], env={"FAKE_FAIL_BATCH": "32"}).returncode == 1
    p = sweep_cli([*base, "batch_size=16,64"])
    assert p.returncode == 0 and "1 ok, 0 failed, 1 skipped" in p.stdout, p.stdout + p.stderr
    assert {n: r["hparams"]["batch_size"] for n, r in results(sweep).items()} == {"0": 16, "1": 64}
    (aside,) = (sweep / ".replaced").iterdir()
    assert json.loads((aside / "result.json").read_text())["hparams"]["batch_size"] == 32


def test_a_second_sweep_in_a_folder_another_sweep_runs_in_is_refused(sweep_popen, sweep_cli, tmp_path):
    """Another grid pointed at the folder of a sweep still running: refused in one line (exit 75) before anything
    changes (its multirun.yaml, its running jobs' folders); once the first has ended, it runs beside its jobs."""
    sweep, go = tmp_path / "sweep", tmp_path / "go"
    first = sweep_popen(["-m", "batch_size=32,64", f"hold={go}", f"hydra.sweep.dir={sweep}",
                         "hydra.launcher.max_parallel=2"])
    assert started_while_held(first, sweep, 2) == {"0", "1"}
    plan = (sweep / "multirun.yaml").read_text()
    p = sweep_cli(["-m", "batch_size=128,256", f"hold={go}", f"hydra.sweep.dir={sweep}"])
    assert p.returncode == 75, p.stdout + p.stderr
    assert re.fullmatch(rf"error: sweep folder {re.escape(str(sweep))}: another sweep \(pid {first.pid}\) runs in "
                        r"it; wait for it to end and run again, or give another hydra.sweep.dir", p.stderr.strip()), \
        p.stderr
    assert (sweep / "multirun.yaml").read_text() == plan and not (sweep / ".replaced").exists()
    go.touch()
    assert first.wait(timeout=120) == 0
    p = sweep_cli(["-m", "batch_size=128,256", f"hold={go}", f"hydra.sweep.dir={sweep}"])
    assert p.returncode == 0, p.stderr
    assert {n: r["hparams"]["batch_size"] for n, r in results(sweep).items()} == {"0": 32, "1": 64, "2": 128,
                                                                                  "3": 256}


def test_resume_with_other_parallelism_keeps_finished_jobs(sweep_cli, tmp_path):
    sweep, counter = tmp_path / "sweep", tmp_path / "trainings.txt"
    base = ["-m", "batch_size=32,64", f"counter={counter}", f"hydra.sweep.dir={sweep}"]
    assert sweep_cli([*base, "hydra.launcher.threads_per_job=2"]).returncode == 0
    p = sweep_cli([*base, "hydra.launcher.threads_per_job=1"])
    assert p.returncode == 0 and "0 ok, 0 failed, 2 skipped" in p.stdout
    # a thread count the job asked for itself is part of its config
    p = sweep_cli([*base, "threads=1"])
    assert p.returncode == 0 and "2 ok, 0 failed, 0 skipped" in p.stdout
    assert len(counter.read_text().splitlines()) == 4


def test_a_result_json_edited_to_ok_without_metrics_runs_again(sweep_cli, tmp_path):
    """ok is a finished run only with its metrics: one edited (or cut short) to ok without them, or with metrics
    that are no mapping, runs again on resume, with a warning, and no traceback at the end."""
    sweep, counter = tmp_path / "sweep", tmp_path / "trainings.txt"
    base = ["-m", "batch_size=32,64,128", f"counter={counter}", f"hydra.sweep.dir={sweep}"]
    assert sweep_cli(base).returncode == 0
    for job, metrics in (("0", None), ("1", "garbage")):
        res = json.loads((sweep / job / "result.json").read_text())
        res.pop("metrics")
        write_json(sweep / job / "result.json", res | ({"metrics": metrics} if metrics else {}))
    p = sweep_cli(base)
    assert p.returncode == 0 and "2 ok, 0 failed, 1 skipped" in p.stdout, p.stdout + p.stderr
    assert "Traceback" not in p.stderr and f"{sweep / '0' / 'result.json'} says ok but holds no metrics" in p.stdout
    assert len(counter.read_text().splitlines()) == 3 + 2
    assert {r["metrics"]["score"] for r in results(sweep).values()} == {32.0, 64.0, 128.0}


def test_sweeper_params_from_an_experiment_file(sweep_cli, tmp_path):
    sweep = tmp_path / "sweep"
    p = sweep_cli(["-m", "experiment=tiny", f"hydra.sweep.dir={sweep}", "hydra.launcher.max_parallel=2"])
    assert p.returncode == 0, p.stderr
    grid = sorted((r["hparams"]["epochs"], r["hparams"]["batch_size"]) for r in results(sweep).values())
    assert grid == [(1, 32), (1, 64), (2, 32), (2, 64)]


def test_dynamic_and_static_schedules_finish_the_same_grid(sweep_cli, tmp_path):
    grid = ["epochs=1,2,3", "batch_size=64,128"]
    tables = {}
    for schedule in ("dynamic", "static"):
        sweep = tmp_path / schedule
        p = sweep_cli(["-m", *grid, "sleep_s=0.3", f"hydra.sweep.dir={sweep}", "hydra.launcher.max_parallel=2",
                       f"hydra.launcher.schedule={schedule}"])
        assert p.returncode == 0, p.stderr
        launch = json.loads((sweep / "launcher.json").read_text())
        assert launch["schedule"] == schedule
        tables[schedule] = pd.read_csv(sweep / "results.csv").sort_values("config_hash")
        if schedule == "static":
            assert "Static split over 2 workers: predicted cost" in p.stdout + p.stderr
            assert len(launch["predicted_cost"]) == 2 and len(launch["achieved_busy_s"]) == 2
            # each worker ran its own list one job at a time, in job order
            for w in range(2):
                mine = sorted((j for j in launch["jobs"] if j["worker"] == w), key=lambda j: j["start"])
                assert [j["num"] for j in mine] == sorted(j["num"] for j in mine)
                assert all(a["end"] <= b["start"] for a, b in zip(mine, mine[1:]))
            costs = {j["num"]: j["cost"] for j in launch["jobs"]}
            for w, load in enumerate(launch["predicted_cost"]):
                assert load == pytest.approx(sum(costs[j["num"]] for j in launch["jobs"] if j["worker"] == w))
    assert list(tables["dynamic"]["config_hash"]) == list(tables["static"]["config_hash"])
    assert set(tables["dynamic"]["status"]) == set(tables["static"]["status"]) == {"ok"}


def test_static_partition_balances_estimated_cost():
    costs = [8.0, 1.0, 4.0, 4.0, 3.0, 2.0, 2.0]
    lists = partition(costs, 2)
    assert sorted(i for lst in lists for i in lst) == list(range(len(costs)))
    loads = [sum(costs[i] for i in lst) for lst in lists]
    assert sorted(loads) == [12.0, 12.0] and imbalance(loads) == 0.0
    assert partition(costs, 2) == lists  # deterministic
    equal = partition([1.0] * 7, 3)
    assert sorted(len(lst) for lst in equal) == [2, 2, 3]


def test_gpu_jobs_wait_for_free_devices_and_get_only_theirs(sweep_popen, tmp_path):
    sweep, go = tmp_path / "sweep", tmp_path / "go"
    proc = sweep_popen(["-m", "gpus=1,2", "batch_size=32,64", f"hold={go}", "hold_s=150", f"hydra.sweep.dir={sweep}",
                        "hydra.launcher.devices=[a,b,c]", "hydra.launcher.max_parallel=3"])
    # 3 slots, 3 GPUs: the first three jobs need 1, 2 and 1 GPUs; while the first two hold theirs, the third
    # waits with its slot free
    held = started_while_held(proc, sweep, 2)
    assert len(held) == 2
    busy = [json.loads((sweep / j / "env_0.json").read_text())["CUDA_VISIBLE_DEVICES"].split(",") for j in held]
    assert len(set(busy[0]) | set(busy[1])) == len(busy[0]) + len(busy[1])
    go.touch()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "4 ok, 0 failed, 0 skipped" in out
    spans, devices = [], []
    for d in job_dirs(sweep):
        r = json.loads((d / "result.json").read_text())
        env = json.loads((d / "env_0.json").read_text())
        got = env["CUDA_VISIBLE_DEVICES"].split(",")
        assert len(got) == r["hparams"]["gpus"] and set(got) <= {"a", "b", "c"}
        t = dt.datetime.fromisoformat
        spans.append((t(r["started"]).timestamp(), t(r["finished"]).timestamp()))
        devices.append(set(got))
    for i in range(len(spans)):
        for k in range(i + 1, len(spans)):
            if spans[i][0] < spans[k][1] and spans[k][0] < spans[i][1]:
                assert not devices[i] & devices[k], "two running jobs shared a GPU"


def test_gpu_request_without_gpus_is_refused_up_front(sweep_cli, tmp_path):
    # Two sweeps of the real app started together, with the default sweep folder: both refused, each removing the
    # folder Hydra made for it (its multirun.yaml all it held).
    import concurrent.futures as cf

    with cf.ThreadPoolExecutor(2) as ex:
        runs = list(ex.map(lambda _: sweep_cli(["-m", "gpus=1,2", "epochs=1"], module="tornado.train",
                                               cwd=tmp_path), range(2)))
    for p in runs:
        assert p.returncode == 2
        assert p.stderr.strip().splitlines()[-1].startswith(
            "error: gpus=1 asks for 1 GPU but 0 are visible (CUDA_VISIBLE_DEVICES unset)")
    assert [p for p in tmp_path.rglob("*") if not p.is_dir()] == []  # nothing was launched, nothing left


def test_a_refused_first_sweep_leaves_no_outputs_folder(sweep_cli, tmp_path):
    """The default sweep folder's parents (outputs/multirun), made for it, go with it; one there before stays."""
    p = sweep_cli(["-m", "gpus=1,2"], module="tornado.train", cwd=tmp_path)
    assert p.returncode == 2 and list(tmp_path.iterdir()) == [], p.stderr[-2000:]
    (tmp_path / "outputs").mkdir()
    p = sweep_cli(["-m", "gpus=1,2"], module="tornado.train", cwd=tmp_path)
    assert p.returncode == 2 and list(tmp_path.rglob("*")) == [tmp_path / "outputs"], p.stderr[-2000:]


@pytest.mark.parametrize("value", ["1.5", "true", "'2'"])
def test_a_gpu_count_that_is_no_whole_number_is_refused_not_rounded(sweep_cli, tmp_path, value):
    p = sweep_cli(["-m", f"gpus={value}", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    line = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 2 and line.startswith("error: job 0 [gpus=") and line.endswith(
        "is not a whole number or auto"), p.stderr[-2000:]
    assert not (tmp_path / "sweep").exists()


def test_a_bad_value_in_one_job_of_the_grid_is_refused_before_any_job_runs(sweep_cli, tmp_path):
    sweep = tmp_path / "sweep"
    p = sweep_cli(["-m", "lr=0.001,-1", "epochs=1", f"hydra.sweep.dir={sweep}"], module="tornado.train")
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1] == (
        "error: job 1 [lr=-1 epochs=1]: lr=-1: must be a positive number"), p.stderr[-2000:]
    assert not sweep.exists() and "Launching" not in p.stdout + p.stderr


def test_a_sweeper_that_launches_batch_after_batch_gets_every_job_s_return(sweep_cli, tmp_path):
    """Optuna and its kind launch into one folder again and again (tests/apps/hydra_plugins: `walk`)."""
    sweep = tmp_path / "sweep"
    p = sweep_cli(["-m", "hydra/sweeper=walk", "hydra.sweeper.batches=[[64,128],[128,256]]",
                   f"hydra.sweep.dir={sweep}"], env={"FAKE_FAIL_BATCH": "256"})
    assert p.returncode == 0, p.stderr[-2000:]  # a failed job is the sweeper's to judge: it gets it as failed
    walked = [ln.split(" threads=")[0] + " " + ln.split(" -> ")[1] for ln in p.stdout.splitlines()
              if ln.startswith("walk ")]
    assert walked == [f"walk 0: batch_size=64 COMPLETED 64.0 in {sweep / '0'}",
                      f"walk 0: batch_size=128 COMPLETED 128.0 in {sweep / '1'}",
                      f"walk 1: batch_size=128 COMPLETED 128.0 in {sweep / '1'}",  # run before: not again
                      f"walk 1: batch_size=256 FAILED raised JobFailed in {sweep / '3'}"], p.stdout
    assert "sweep " + str(sweep) + " (this launch of its sweeper: 2 jobs): 0 ok, 1 failed, 1 skipped" in p.stdout
    csv = pd.read_csv(sweep / "results.csv")
    assert csv[["job", "batch_size", "status"]].values.tolist() == [[0, 64, "ok"], [1, 128, "ok"], [3, 256, "failed"]]


def test_a_validation_score_without_a_validation_split_is_refused_where_a_sweeper_chooses_by_it(sweep_cli, tmp_path):
    sweep = tmp_path / "sweep"
    p = sweep_cli(["-m", "hydra/sweeper=walk", "hydra.sweeper.batches=[[128]]", "data.split.val_fraction=0",
                   f"hydra.sweep.dir={sweep}"], module="tornado.train")
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1] == (
        "error: job 0 [batch_size=128 data.split.val_fraction=0]: optimize_metric=val_roc_auc: no validation split "
        "to score it on (data.split.val_fraction=0), so the sweeper would get nothing; give data.split.val_fraction "
        "> 0, or optimize_metric=roc_auc (test: optimistic)"), p.stderr[-2000:]
    assert not sweep.exists()


@pytest.mark.parametrize("setting, line", [
    ("hydra.launcher.max_parallel=0", "error: hydra.launcher.max_parallel=0: must be at least 1, or null to choose"),
    ("hydra.launcher.stop_grace_s=-1", "error: hydra.launcher.stop_grace_s=-1: must be 0 or more seconds"),
    ("+hydra.launcher.maxparallel=2",
     "error: hydra.launcher.maxparallel: no such setting (did you mean hydra.launcher.max_parallel?)"),
])
def test_launcher_settings_that_cannot_work_are_refused_up_front(sweep_cli, tmp_path, setting, line):
    p = sweep_cli(["-m", "batch_size=64,128", f"hydra.sweep.dir={tmp_path / 'sweep'}", setting])
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1] == line, p.stderr[-2000:]
    assert not (tmp_path / "sweep").exists()


def test_a_preload_module_that_is_not_there_is_refused_before_any_job(sweep_cli, tmp_path):
    """warm=true: a misspelt module would not be preloaded, each job importing it itself, slower, unsaid."""
    sweep = tmp_path / "sweep"
    p = sweep_cli(["-m", "batch_size=64,128", f"hydra.sweep.dir={sweep}", "hydra.launcher.warm=true",
                   "hydra.launcher.preload=[json,pandsa]"])
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1] == (
        "error: hydra.launcher.preload: pandsa: no such module to import (did you mean pandas?)"), p.stderr[-2000:]
    assert not sweep.exists() and "Launching" not in p.stdout + p.stderr
    p = sweep_cli(["-m", "batch_size=64", f"hydra.sweep.dir={sweep}", "hydra.launcher.preload=[pandsa]"])
    assert p.returncode == 0, p.stderr[-2000:]  # warm=false preloads nothing


def test_a_preload_module_that_fails_to_import_is_warned_of_and_the_jobs_run(sweep_cli, tmp_path):
    import os

    (tmp_path / "needs_libfoo.py").write_text("raise ImportError('libfoo.so: cannot open shared object file')\n")
    (tmp_path / "broken").mkdir()  # a module there, in a package that fails to import: not "no such module"
    (tmp_path / "broken" / "__init__.py").write_text("raise ImportError('libbar.so: missing')\n")
    (tmp_path / "broken" / "part.py").write_text("")
    apps = Path(__file__).resolve().parent / "apps"
    path = os.pathsep.join(filter(None, [str(tmp_path), str(apps), os.environ.get("PYTHONPATH")]))
    p = sweep_cli(["-m", "batch_size=64", f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra.launcher.warm=true",
                   "hydra.launcher.preload=[json,needs_libfoo,broken.part]"], env={"PYTHONPATH": path})
    assert p.returncode == 0, p.stderr[-2000:]
    assert ("warning: hydra.launcher.preload: needs_libfoo: not preloaded (libfoo.so: cannot open shared object "
            "file)") in p.stderr.splitlines()
    assert "warning: hydra.launcher.preload: broken.part: not preloaded (libbar.so: missing)" in p.stderr.splitlines()


def test_a_preload_module_that_raises_another_error_on_import_is_warned_of_and_the_jobs_run(sweep_cli, tmp_path):
    """A module there but broken otherwise (an error other than ImportError as it is imported) is not preloaded, as
    one that fails with ImportError: the warm worker goes on and the jobs run."""
    import os

    (tmp_path / "needs_setup.py").write_text("raise RuntimeError('run setup first')\n")
    apps = Path(__file__).resolve().parent / "apps"
    path = os.pathsep.join(filter(None, [str(tmp_path), str(apps), os.environ.get("PYTHONPATH")]))
    p = sweep_cli(["-m", "batch_size=64", f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra.launcher.warm=true",
                   "hydra.launcher.preload=[json,needs_setup]"], env={"PYTHONPATH": path})
    assert p.returncode == 0, p.stderr[-2000:]
    assert "warning: hydra.launcher.preload: needs_setup: not preloaded (RuntimeError: run setup first)" in (
        p.stderr.splitlines())


@pytest.mark.parametrize("value", ["", "''"])
def test_an_empty_sweep_folder_is_refused_not_the_working_directory(sweep_cli, tmp_path, value):
    """`hydra.sweep.dir=$DIR` with DIR unset: Hydra would take the working directory as the sweep's folder."""
    p = sweep_cli(["-m", "batch_size=64,128", f"hydra.sweep.dir={value}"], cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1] == (
        "error: hydra.sweep.dir=: must name a folder (leave the setting out for the default)"), p.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("subdir, why", [
    ("x", "jobs 0 and 1 would share the folder {sweep}/x"),  # each job would train over the one before
    ("''", "job 0's folder {sweep} is not one inside the sweep's"),
    ("../j${hydra.job.num}", "job 0's folder {parent}/j0 is not one inside the sweep's"),
])
def test_a_job_folder_that_is_not_one_per_job_in_the_sweep_is_refused(sweep_cli, tmp_path, subdir, why):
    sweep = tmp_path / "sweep"
    p = sweep_cli(["-m", "batch_size=64,128", f"hydra.sweep.dir={sweep}", f"hydra.sweep.subdir={subdir}"])
    shown = subdir.strip("'")
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1] == (
        f"error: hydra.sweep.subdir={shown}: {why.format(sweep=sweep, parent=tmp_path)}; it must name one folder "
        "per job inside hydra.sweep.dir (the default: ${hydra.job.num})"), p.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []


def test_an_interpolation_in_a_hydra_override_reaches_the_jobs_as_typed(sweep_cli, tmp_path):
    """The launcher passes the command's hydra.* overrides on to each job: read as typed, not resolved where the
    sweep has no job number."""
    sweep = tmp_path / "sweep"
    p = sweep_cli(["-m", "batch_size=64,128", f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=j${hydra.job.num}"])
    assert p.returncode == 0, p.stderr[-2000:]
    assert sorted(d.name for d in job_dirs(sweep)) == ["j0", "j1"]


def test_max_parallel_above_the_job_count_runs_no_idle_slots(sweep_cli, tmp_path):
    sweep = tmp_path / "sweep"
    p = sweep_cli(["-m", "batch_size=64,128", f"hydra.sweep.dir={sweep}", "hydra.launcher.max_parallel=100000"])
    assert p.returncode == 0, p.stderr[-2000:]
    assert "2 at once" in p.stdout + p.stderr
    launch = json.loads((sweep / "launcher.json").read_text())
    assert launch["slots"] == 2 and len(launch["achieved_busy_s"]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("warm", ["false", "true"])
def test_cpu_ddp_sweep_of_the_real_train(sweep_cli, sweep_train_overrides, tmp_path, warm):
    sweep = tmp_path / "sweep"
    p = sweep_cli(["-m", "gpus=1,2", "trainer.accelerator=cpu", "batch_size=64", *sweep_train_overrides,
                   f"hydra.sweep.dir={sweep}", "hydra.launcher.max_parallel=2", f"hydra.launcher.warm={warm}"],
                  module="tornado.train", cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert [d.name for d in job_dirs(sweep)] == ["0", "1"]  # no sweep re-run by a DDP rank
    assert not (tmp_path / "outputs").exists()
    res = results(sweep)
    assert [res[n]["status"] for n in ("0", "1")] == ["ok", "ok"]
    assert [res[n]["devices"]["count"] for n in ("0", "1")] == [1, 2]
    assert [res[n]["devices"]["accelerator"] for n in ("0", "1")] == ["cpu", "cpu"]
    assert (sweep / "1" / "train_ddp_process_1.log").exists()
    assert not (sweep / "0" / "train_ddp_process_1.log").exists()
    table = pd.read_csv(sweep / "results.csv")
    assert list(table["status"]) == ["ok", "ok"] and list(table["devices"]) == [1, 2]
    assert table["wall_s"].gt(0).all() and table["roc_auc"].notna().all()
    assert (table["samples_per_epoch"] == table["n_train"]).all() and table["n_train"].gt(0).all()


# -- tornado.collect ----------------------------------------------------------------------------------

def _design_result(out: Path, batch: int, status: str = "ok") -> dict:
    return {"status": status, "error": None if status == "ok" else "RuntimeError: x", "config_hash": f"h{batch}",
            "overrides": [f"batch_size={batch}"], "output_dir": str(out),
            "hparams": {"epochs": 5, "batch_size": batch, "model.pool3": False},
            "times": {"total_s": 12.0, "wall_s": 9.0, "epoch_s": [4.5, 4.5], "data_wait_s": 0.2, "compute_s": 8.8,
                      "test_s": 0.4},
            "samples_per_s": 7400.0, "batch": {"global": batch, "per_device": batch // 2, "devices": 2,
                                              "effective_global": batch},
            "devices": {"accelerator": "cpu", "count": 2, "names": ["cpu", "cpu"]},
            "metrics": {"accuracy": 0.95, "roc_auc": 0.8}, "started": "2026-01-01T00:00:00+00:00",
            "finished": "2026-01-01T00:00:12+00:00", "host": "h"}


def test_collect_writes_one_row_per_job_with_the_design_columns(tmp_path):
    for name, batch, status in (("10", 64, "ok"), ("2", 128, "failed"), ("x", 256, "ok")):
        write_json(tmp_path / name / "result.json", _design_result(tmp_path / name, batch, status))
    write_json(tmp_path / ".replaced" / "old" / "result.json", _design_result(tmp_path, 1))
    (tmp_path / "empty").mkdir()
    df = collect(tmp_path)
    on_disk = pd.read_csv(tmp_path / "results.csv", dtype={"job": str})
    assert list(on_disk["job"]) == ["2", "10", "x"] == list(df["job"])
    cols = list(on_disk.columns)
    assert cols[:4] == ["job", "status", "error", "output_dir"]
    for c in ("epochs", "batch_size", "model.pool3", "accuracy", "roc_auc", "total_s", "wall_s", "data_wait_s",
              "samples_per_s", "batch_global", "batch_per_device", "devices", "accelerator"):
        assert c in cols
    assert "epoch_s" not in cols
    assert cols.index("batch_size") < cols.index("accuracy") < cols.index("wall_s") < cols.index("samples_per_s")
    assert list(on_disk["status"]) == ["failed", "ok", "ok"]
    assert list(on_disk["batch_per_device"]) == [64, 32, 128]


def test_counts_stay_whole_numbers_in_results_csv_where_a_failed_job_has_none(tmp_path):
    from tornado.metrics import forecast_scores

    scores = forecast_scores(np.array([0.9, 0.2, 0.1, 0.7]), np.array([1, 0, 0, 0]))
    write_json(tmp_path / "0" / "result.json", _design_result(tmp_path / "0", 64) | {"metrics": scores})
    write_json(tmp_path / "1" / "result.json", _design_result(tmp_path / "1", 128, "failed") | {"metrics": {}})
    collect(tmp_path)
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [(r["n"], r["positives"]) for r in rows] == [("4", "1"), ("", "")]
    assert rows[0]["accuracy"] == "0.75"


def test_slowest_epoch_ratio_leaves_the_first_epoch_out():
    from tornado.collect import slowest_epoch_ratio

    assert slowest_epoch_ratio([30.0, 1.0, 1.0, 5.0]) == 5.0  # 30 s: warm-up, not counted
    assert slowest_epoch_ratio([2.0, 1.0, 1.5]) == pytest.approx(1.5 / 1.25)
    assert slowest_epoch_ratio([2.0, 1.0]) is None and slowest_epoch_ratio(None) is None


def test_best_epoch_is_the_first_with_the_highest_validation_roc_auc():
    from tornado.records import best_epoch

    hist = [{"epoch": 0, "val_roc_auc": 0.6}, {"epoch": 1, "val_roc_auc": 0.8}, {"epoch": 2, "val_roc_auc": 0.7},
            {"epoch": 3, "val_roc_auc": 0.8}, {"epoch": 4, "val_roc_auc": float("nan")}]
    assert best_epoch(hist) == 2  # epochs count from 1 here, as in the report; the tie goes to the earlier
    assert best_epoch([{"epoch": 0, "train_acc": 0.9}]) is None and best_epoch(None) is None
    assert best_epoch([{"epoch": 5, "val_roc_auc": 0.5}, "junk", {"val_roc_auc": True}]) == 6


def test_write_atomic_replaces_the_file_whole_or_not_at_all(tmp_path, monkeypatch):
    import os

    from tornado import records

    path = tmp_path / "results.csv"
    umask = os.umask(0o027)
    try:
        records.write_atomic(path, "old\n")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o640  # as any new file under that umask, not mkstemp's 0600

    def fail(*args):
        raise OSError("no space left")
    monkeypatch.setattr(records.os, "replace", fail)
    with pytest.raises(OSError, match="no space left"):
        records.write_atomic(path, "new\n")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_config_hash_ignores_key_order_and_the_hydra_node_and_sees_resolved_values():
    from omegaconf import OmegaConf

    from tornado.records import config_hash

    a = OmegaConf.create({"lr": 0.1, "model": {"width": 8, "decay": "${lr}"}, "hydra": {"run": {"dir": "out/1"}}})
    b = OmegaConf.create({"model": {"decay": 0.1, "width": 8}, "lr": 0.1, "hydra": {"run": {"dir": "out/2"}}})
    assert config_hash(a) == config_hash(b)
    assert config_hash({"b": 1, "a": 2}) == config_hash({"a": 2, "b": 1}) != config_hash({"a": 2, "b": 2})
    assert config_hash(a) != config_hash(OmegaConf.merge(b, {"model": {"decay": 0.2}}))


def test_flatten_joins_nested_keys_and_writes_lists_as_json():
    from tornado.records import flatten

    got = flatten({"lr": 0.1, "model": {"pool3": False, "sizes": ("a", "b")}, "augment": {}})
    assert got == {"lr": 0.1, "model.pool3": False, "model.sizes": '["a", "b"]', "augment": "{}"}


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing", "no such folder"),
    (lambda d: (d / "multirun.yaml").touch() or d / "multirun.yaml", "multirun.yaml: not a folder"),
    (lambda d: d, "no */result.json in it"),
])
def test_collect_cli_refuses_a_folder_without_results(sweep_cli, tmp_path, make, message):
    p = sweep_cli([make(tmp_path)], module="tornado.collect")
    assert p.returncode == 2
    assert p.stderr.strip().startswith("error: sweep folder") and message in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_collect_cli_refuses_a_sweep_it_cannot_write_saying_how_to_report_it(tmp_path, capsys, monkeypatch):
    import tornado.collect

    write_json(tmp_path / "0" / "result.json", {"status": "ok", "times": {"wall_s": 1.0}})

    def refused(path, *a, **k):  # someone else's sweep folder (root writes anywhere, so the refusal is made up)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(tornado.collect, "locked", refused)
    with pytest.raises(SystemExit) as exc:
        tornado.collect.main([str(tmp_path)])
    assert exc.value.code == 2 and capsys.readouterr().err == (
        f"error: {tmp_path}: cannot write results.csv there (Permission denied); python -m tornado.report {tmp_path} "
        "out=DIR reports it without writing there\n")
    assert not (tmp_path / "results.csv").exists()


def test_collect_cli_and_sweep_efficiency(sweep_cli, tmp_path):
    t0 = 1000.0
    jobs = []
    for i, (start, end, fit) in enumerate([(0, 10, 8.0), (0, 12, 9.0), (10, 20, 7.0), (12, 20, 6.0)]):
        write_json(tmp_path / str(i) / "result.json", {"status": "ok", "times": {"wall_s": fit}})
        jobs.append({"num": i, "dir": str(i), "status": "ok", "start": t0 + start, "end": t0 + end})
    write_json(tmp_path / "launcher.json", {"slots": 2, "schedule": "dynamic", "wall_s": 20.0, "jobs": jobs})
    eff = sweep_efficiency(tmp_path)
    assert eff["efficiency"] == pytest.approx((8 + 9 + 7 + 6) / (20.0 * 2))
    assert eff["occupancy"] == pytest.approx((10 + 12 + 10 + 8) / (20.0 * 2))
    assert sweep_efficiency(tmp_path, slots=4)["efficiency"] == pytest.approx((8 + 9 + 7 + 6) / (20.0 * 4))
    p = sweep_cli([tmp_path, "--efficiency"], module="tornado.collect")
    assert p.returncode == 0, p.stderr
    assert "4 jobs (4 ok)" in p.stdout
    assert "\nthe last launch (4 jobs that ran then, of the sweep's 4 jobs):\n" in p.stdout
    assert len(pd.read_csv(tmp_path / "results.csv")) == 4
    # for people: seconds to 0.1, ratios to 0.01, each said what it is
    assert p.stdout.splitlines()[-6:] == [
        "  jobs           4 (4 ok), dynamic schedule, 2 slots",
        "  launch         20.0 s",
        "  training       30.0 s (the jobs' wall_s in results.csv, summed)",
        "  job processes  40.0 s (start-up and test included, summed)",
        "  efficiency     0.75 (training / (launch × slots))",
        "  occupancy      1.00 (job processes / (launch × slots))"], p.stdout
    # for programs: the figures exact, alone on stdout
    p = sweep_cli([tmp_path, "--json"], module="tornado.collect")
    assert p.returncode == 0 and p.stderr.startswith("wrote "), p.stderr
    assert json.loads(p.stdout) == sweep_efficiency(tmp_path) and json.loads(p.stdout)["efficiency"] == 0.75


def test_collect_survives_result_json_that_is_not_an_object_or_has_odd_sections(sweep_cli, tmp_path):
    write_json(tmp_path / "0" / "result.json", _design_result(tmp_path / "0", 64))
    write_json(tmp_path / "1" / "result.json", [])
    write_json(tmp_path / "2" / "result.json", {"status": "ok", "hparams": "x", "metrics": [1], "times": 5,
                                                "batch": "b", "devices": None})
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / "result.json").write_text('{"status": "ok", ')  # cut off mid-write
    (tmp_path / "4").mkdir()
    (tmp_path / "4" / "result.json").write_bytes(b"\xff\xfe")  # no text
    p = sweep_cli([tmp_path], module="tornado.collect")
    assert p.returncode == 0, p.stderr
    jobs = pd.read_csv(tmp_path / "results.csv", dtype={"job": str}).set_index("job")
    for job in ("1", "3", "4"):
        assert jobs.loc[job, "status"] == "unreadable"
        assert jobs.loc[job, "error"].startswith(f"result.json unreadable: {tmp_path / job / 'result.json'}: ")
    assert jobs.loc["2", "status"] == "ok" and pd.isna(jobs.loc["2", "batch_size"])
    assert jobs.loc["0", "batch_size"] == 64


@pytest.mark.parametrize("record, expect", [
    ({"slots": 2, "wall_s": 20.0}, "no 'jobs' list"),
    ([], "no 'jobs' list"),
    ({"slots": 0, "wall_s": 20.0, "jobs": None}, "no 'jobs' list"),
    ({"wall_s": 20.0, "jobs": "J"}, "'slots' is None"),
    ({"slots": 2, "wall_s": 0, "jobs": "J"}, None),        # no wall time: efficiency n/a (null)
    ({"slots": 2, "state": "running", "jobs": "J"}, "the launch was cut short"),  # no launcher holds the folder
])
def test_sweep_efficiency_with_a_defective_launcher_json(sweep_cli, tmp_path, record, expect):
    """A launcher.json without jobs (or slots) is a one-line error; one with wall_s 0 gives efficiency n/a."""
    write_json(tmp_path / "0" / "result.json", {"status": "ok", "times": {"wall_s": 4.0}})
    if isinstance(record, dict) and record.get("jobs") == "J":
        record = dict(record, jobs=[{"dir": "0", "status": "ok", "start": 1.0, "end": 6.0}])
    write_json(tmp_path / "launcher.json", record)
    p = sweep_cli([tmp_path, "--efficiency"], module="tornado.collect")
    if expect is None:
        assert p.returncode == 0, p.stderr
        eff = sweep_efficiency(tmp_path)
        assert eff["efficiency"] is None and eff["occupancy"] is None and eff["sum_fit_s"] == 4.0
        assert "\n  efficiency     n/a (the launch recorded no wall time)\n" in p.stdout
    else:
        assert p.returncode == 2
        assert p.stderr.startswith(f"error: {tmp_path / 'launcher.json'}: ")
        assert expect in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_efficiency_names_a_result_json_it_could_not_read(sweep_cli, tmp_path):
    write_json(tmp_path / "0" / "result.json", {"status": "ok", "times": {"wall_s": 4.0}})
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "result.json").write_text("{")
    write_json(tmp_path / "launcher.json", {"slots": 2, "wall_s": 10.0, "jobs": [
        {"dir": d, "status": "ok", "start": 1.0, "end": 6.0} for d in ("0", "1")]})
    eff = sweep_efficiency(tmp_path)
    assert eff["sum_fit_s"] == 4.0 and len(eff["unreadable"]) == 1
    assert eff["unreadable"][0].startswith(f"result.json unreadable: {tmp_path / '1' / 'result.json'}: ")
    p = sweep_cli([tmp_path, "--efficiency"], module="tornado.collect")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[-1] == f"  training counted as 0 s: {eff['unreadable'][0]}"


def test_a_lock_held_by_a_pid_not_running_here_is_held(tmp_path):
    """The launcher of a sweep folder both hosts see runs on the other: its pid is none of this host's."""
    import subprocess
    import sys

    from tornado.records import held_by, hold

    lock = tmp_path / ".launcher.lock"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with hold(lock):
        lock.write_text(gone.stdout)  # as the other host's launcher wrote it
        assert held_by(lock) == gone.stdout.strip()
    assert held_by(lock) is None


def test_efficiency_of_a_launch_that_ends_while_asked_is_its_figures(tmp_path, monkeypatch):
    """launcher.json read while its launcher runs, the launcher gone when asked: it wrote its last record first."""
    from tornado import collect as collect_module

    write_json(tmp_path / "0" / "result.json", {"status": "ok", "times": {"wall_s": 4.0}})
    write_json(tmp_path / "launcher.json", {"slots": 1, "state": "running", "jobs": [{"dir": "0", "status": None}]})

    def ended(path):
        write_json(tmp_path / "launcher.json", {"slots": 1, "state": "finished", "wall_s": 10.0, "jobs": [
            {"dir": "0", "status": "ok", "start": 1.0, "end": 6.0}]})
        return None

    monkeypatch.setattr(collect_module, "held_by", ended)
    assert sweep_efficiency(tmp_path)["efficiency"] == 0.4


def test_efficiency_tells_a_launcher_killed_outright_from_one_still_running(sweep_popen, sweep_cli, tmp_path):
    """launcher.json says "running" until the launch ends: while its launcher holds the sweep folder's lock the
    sweep runs; once the launcher is gone (SIGKILL), the launch was cut short and recorded no job's times."""
    sweep, go = tmp_path / "sweep", tmp_path / "go"
    proc = sweep_popen(["-m", "batch_size=32,64", f"hold={go}", "hold_s=150", f"hydra.sweep.dir={sweep}",
                        "hydra.launcher.max_parallel=2"])
    where = sweep / "launcher.json"
    try:
        started_while_held(proc, sweep, 2)
        live = sweep_cli([sweep, "--efficiency"], module="tornado.collect")
        assert live.returncode == 2 and live.stderr.strip() == (
            f"error: {where}: the sweep is still running (launcher pid {proc.pid}); --efficiency needs a finished "
            "launch"), live.stderr
        proc.kill()
        proc.wait()
        dead = sweep_cli([sweep, "--efficiency"], module="tornado.collect")
        assert dead.returncode == 2 and dead.stderr.strip() == (
            f"error: {where}: the launch was cut short (its launcher ended without recording its jobs' times); "
            "--efficiency needs a finished launch: run the sweep's command again to finish it"), dead.stderr
        assert json.loads(where.read_text())["state"] == "running"
    finally:
        go.touch()  # the jobs the killed launcher left behind end


# -- Ctrl-C / SIGTERM ---------------------------------------------------------------------------------

def _start_in_own_group(args: list, module: str = "tornado_fake_train", cwd: Path | None = None):
    """A sweep CLI in its own process group (as a shell starts a command), so a signal to the group is a Ctrl-C."""
    import os
    import subprocess
    import sys

    apps = Path(__file__).parent / "apps"
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "TORNADO_SWEEP_DIR")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(apps), env.get("PYTHONPATH")]))
    return subprocess.Popen([sys.executable, "-m", module, *map(str, args)], cwd=cwd or apps.parent.parent, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                            start_new_session=True)


def _interrupt_when_started(proc, sweep: Path, sig, jobs: int, timeout: float = 240) -> tuple[str, str]:
    """Wait until `jobs` job folders hold a result.json (those jobs are running), signal the sweep's process
    group, and return its (stdout, stderr)."""
    import os
    import time

    deadline = time.time() + timeout
    try:
        while len(list(sweep.glob("*/result.json"))) < jobs:
            if proc.poll() is not None or time.time() > deadline:
                out, err = proc.communicate(timeout=60) if proc.poll() is not None else ("", "")
                pytest.fail(f"no {jobs} running jobs (exit {proc.poll()}): {out[-2000:]} {err[-2000:]}")
            time.sleep(0.05)
        os.killpg(proc.pid, sig)
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()


def _assert_stopped_cleanly(proc, out: str, err: str, sweep: Path, sig) -> None:
    name, code = {2: ("SIGINT", 130), 15: ("SIGTERM", 143)}[int(sig)]
    assert proc.returncode == code, out[-3000:] + err[-3000:]
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: sweep interrupted ({name}): ") and last.endswith(
        "run the same command again to resume"), err
    assert len(err.strip().splitlines()) == 1, err
    res = results(sweep)
    assert "running" not in {r["status"] for r in res.values()}
    for r in res.values():  # killed with result.json "running": the launcher recorded it
        assert r["status"] == "ok" or r["error"].startswith("interrupted"), r
    table = pd.read_csv(sweep / "results.csv", dtype={"job": str})
    assert sorted(table["job"]) == sorted(res)
    launch = json.loads((sweep / "launcher.json").read_text())
    assert launch["interrupted"] == name
    assert not {j["status"] for j in launch["jobs"]} & {"running"}


@pytest.mark.parametrize("sig, warm", [(2, "false"), (15, "true")])
def test_interrupted_sweep_stops_cleanly_and_resumes(sweep_cli, tmp_path, sig, warm):
    """Ctrl-C (SIGINT to the process group) or SIGTERM: no new jobs, the running ones stopped and recorded
    `interrupted`, launcher.json and results.csv written, one error line, 128 + signal; the same command resumes."""
    sweep, go, counter = tmp_path / "sweep", tmp_path / "go", tmp_path / "trainings.txt"
    common = [f"hold={go}", "hold_s=600", f"counter={counter}", f"hydra.sweep.dir={sweep}",
              f"hydra.launcher.warm={warm}", "hydra.launcher.preload=[]"]
    go.touch()  # job 0 done before the interrupted launch
    assert sweep_cli(["-m", "batch_size=32", *common]).returncode == 0
    go.unlink()  # the next jobs wait for it: they are running when the signal comes
    args = ["-m", "batch_size=32,64,128,256", "hydra.launcher.max_parallel=2", *common]
    proc = _start_in_own_group(args)
    out, err = _interrupt_when_started(proc, sweep, sig, jobs=3)
    _assert_stopped_cleanly(proc, out, err, sweep, sig)
    assert err.strip().startswith(f"error: sweep interrupted ({'SIGINT' if sig == 2 else 'SIGTERM'}): 1 of 4 jobs done")
    assert "1 skipped (already ok), 1 not started" in out
    res = results(sweep)
    assert sorted(res) == ["0", "1", "2"] and res["0"]["status"] == "ok"
    assert [res[n]["error"] for n in ("1", "2")] == ["interrupted", "interrupted"]

    go.touch()
    again = sweep_cli(args)
    assert again.returncode == 0, again.stderr
    assert "3 ok, 0 failed, 1 skipped" in again.stdout
    assert {r["status"] for r in results(sweep).values()} == {"ok"} and len(results(sweep)) == 4
    assert len(counter.read_text().splitlines()) == 1 + 2 + 3  # job 0 once; 1, 2 again; 3 first time


def test_sigterm_while_the_final_results_csv_waits_for_its_lock_stops_the_command(sweep_popen, tmp_path):
    """Every job settled, the launcher collecting results.csv (here waiting for the lock another collect holds):
    a SIGTERM ends the command at once in one line, exit 143, not noted and ignored until the lock frees."""
    import fcntl
    import os

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    lock = os.open(sweep / ".collect.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:  # the fake jobs fail before their own collect: only the launcher's waits for the lock
        proc = sweep_popen(["-m", "batch_size=64,128", f"hydra.sweep.dir={sweep}"], env={"FAKE_FAIL_BATCH": "64,128"})
        deadline = time.monotonic() + 120
        while '"state": "finished"' not in ((sweep / "launcher.json").read_text()
                                             if (sweep / "launcher.json").exists() else ""):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        time.sleep(0.5)
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    finally:
        os.close(lock)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "error: interrupted (SIGTERM)", err


@pytest.mark.slow
def test_ctrl_c_on_a_sweep_of_the_real_train(sweep_cli, sweep_train_overrides, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "batch_size=64,128", *sweep_train_overrides, f"hydra.sweep.dir={sweep}"]
    proc = _start_in_own_group(args, module="tornado.train", cwd=tmp_path)
    out, err = _interrupt_when_started(proc, sweep, 2, jobs=1)
    _assert_stopped_cleanly(proc, out, err, sweep, 2)
    again = sweep_cli(args, module="tornado.train", cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert {r["status"] for r in results(sweep).values()} == {"ok"} and len(results(sweep)) == 2
    assert list(pd.read_csv(sweep / "results.csv")["status"]) == ["ok", "ok"]


def test_a_job_refused_for_a_folder_in_use_leaves_that_folders_record(tmp_path):
    """Another process trains in the job's folder (an orphan of a killed launcher): the job fails, and the
    result.json that process keeps is not overwritten with the failure."""
    from hydra_plugins.tornado_launcher.jobs import Job, settle
    from tornado.errors import IN_USE

    (tmp_path / "result.json").write_text('{"status": "running", "hparams": {"epochs": 1}}')
    (tmp_path / "stdout.log").write_text(f"error: {tmp_path}: in use by another training process (pid 7); wait\n"
                                         "its report: python -m tornado.report ...\n")  # the other one's, after
    job = Job(num=0, overrides=[], cfg=None, dir=tmp_path)
    settle(job, IN_USE)
    assert job.status == "failed" and job.error.endswith("in use by another training process (pid 7); wait")
    assert (tmp_path / "result.json").read_text() == '{"status": "running", "hparams": {"epochs": 1}}'
    settle(job, 1)  # any other failure is recorded
    assert '"status": "failed"' in (tmp_path / "result.json").read_text()


@pytest.mark.parametrize("text, fault", [('{"status": "ok", ', "Expecting"), ("[]", "holds a JSON list, not an object"),
                                         (None, None)])
def test_a_job_that_exits_0_without_a_readable_result_json_fails_naming_the_file(tmp_path, text, fault):
    from omegaconf import OmegaConf

    from hydra_plugins.tornado_launcher.jobs import Job, settle

    path = tmp_path / "result.json"
    if text is not None:
        path.write_text(text)
    job = Job(num=0, overrides=[], cfg=OmegaConf.create({"batch_size": 32}), dir=tmp_path)
    settle(job, 0)
    said = f"result.json unreadable: {path}: " if text is not None else f"result.json missing: {path}"
    assert job.status == "failed" and job.error.startswith(f"exit code 0 but {said}"), job.error
    assert fault is None or fault in job.error
    assert json.loads(path.read_text())["error"] == job.error  # recorded in its place


def test_planning_a_launch_reads_each_result_json_once(tmp_path, monkeypatch):
    """check_resume reads each job's folder, place() every folder of the sweep: no file twice."""
    import types
    from collections import Counter

    from omegaconf import OmegaConf

    from hydra_plugins.tornado_launcher import jobs as launcher_jobs
    from hydra_plugins.tornado_launcher.jobs import Job, check_resume, place
    from tornado.records import config_hash, read_result

    monkeypatch.setattr(launcher_jobs, "HydraConfig", types.SimpleNamespace(
        instance=lambda: types.SimpleNamespace(set_config=lambda cfg: None)))
    reads = Counter()
    monkeypatch.setattr(launcher_jobs, "read_result", lambda d: reads.update([Path(d).name]) or read_result(d))
    cfgs = [OmegaConf.create({"batch_size": b}) for b in (32, 64, 128)]
    # 0: job 0's finished run; 1: another config's finished run; 2: job 1's run
    for d, cfg in (("0", cfgs[0]), ("1", {"batch_size": 16}), ("2", cfgs[1])):
        write_json(tmp_path / d / "result.json", {"status": "ok", "config_hash": config_hash(cfg),
                                                  "metrics": {"score": 1.0}})
    jobs = [Job(num=n, overrides=[], cfg=cfg, dir=tmp_path / str(n)) for n, cfg in enumerate(cfgs)]
    for job in jobs:
        check_resume(job)
    place(jobs, tmp_path)
    assert [(j.status, j.dir.name) for j in jobs] == [("skipped", "0"), ("skipped", "2"), ("pending", "3")]
    assert reads == {"0": 1, "1": 1, "2": 1}


def test_threads_per_job_beyond_the_cores_is_warned_of_in_one_line(sweep_cli, tmp_path):
    import os

    cores = len(os.sched_getaffinity(0))
    p = sweep_cli(["-m", "batch_size=32", "hydra.launcher.threads_per_job=1000", f"hydra.sweep.dir={tmp_path / 'a'}"])
    assert p.returncode == 0, p.stderr[-2000:]
    warned = [ln for ln in (p.stdout + p.stderr).splitlines() if "oversubscribed" in ln]
    s = "" if cores == 1 else "s"
    assert len(warned) == 1 and warned[0].endswith(
        f"hydra.launcher.threads_per_job=1000 × 1 job at once = 1000 threads on {cores} core{s}: oversubscribed, "
        "the jobs slow each other down (null: cores // jobs at once)"), warned
    assert results(tmp_path / "a")["0"]["hparams"]["threads"] == 1000  # warned of, not refused
    p = sweep_cli(["-m", "batch_size=32", f"hydra.launcher.threads_per_job={cores}",
                   f"hydra.sweep.dir={tmp_path / 'b'}"])
    assert p.returncode == 0 and "oversubscribed" not in p.stdout + p.stderr


def test_a_finished_jobs_line_says_its_process_time_and_its_training_time(sweep_cli, tmp_path):
    p = sweep_cli(["-m", "batch_size=32", "sleep_s=0.3", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    assert p.returncode == 0, p.stderr[-2000:]
    m = re.search(r"job 0 \[batch_size=32 sleep_s=0.3[^]]*\] ok in (\d+\.\d) s, process start to exit "
                  r"\(training (\d+\.\d) s\)$", p.stdout + p.stderr, re.M)
    assert m and float(m[1]) > float(m[2]) >= 0.3, p.stdout + p.stderr


def test_a_killed_jobs_error_names_its_last_error_line_not_a_progress_line(tmp_path):
    from hydra_plugins.tornado_launcher.jobs import describe_exit

    log = tmp_path / "stdout.log"
    log.write_text("[2026-11-27 10:00:00,000][tornado.prepare][INFO] - prepared data: x.h5 (up to date)\n")
    assert describe_exit(-9, log) == "exit code -9 (killed by SIGKILL, e.g. out of memory)"
    log.write_text("Traceback (most recent call last):\nRuntimeError: CUDA error: out of memory\n")
    assert describe_exit(1, log) == "exit code 1: RuntimeError: CUDA error: out of memory"


def test_the_launch_line_names_the_threads_the_jobs_set_themselves(sweep_cli, tmp_path):
    base = ["-m", "hydra.launcher.threads_per_job=2"]
    p = sweep_cli([*base, "threads=1", f"hydra.sweep.dir={tmp_path / 'own'}"])
    assert p.returncode == 0 and ", 1 thread per process (threads=1), GPUs" in p.stdout, p.stdout + p.stderr
    assert [r["hparams"]["threads"] for r in results(tmp_path / "own").values()] == [1]
    p = sweep_cli([*base, "threads=1,null", f"hydra.sweep.dir={tmp_path / 'mixed'}"])
    assert p.returncode == 0
    assert ", 2 threads per job where threads is unset, else 1 thread per process (threads=1), GPUs" in p.stdout
    assert [r["hparams"]["threads"] for r in results(tmp_path / "mixed").values()] == [1, 2]
    p = sweep_cli([*base, f"hydra.sweep.dir={tmp_path / 'share'}"])
    assert p.returncode == 0 and ", 2 threads per job, GPUs" in p.stdout


def test_the_sweep_s_last_lines_show_its_folder_as_given_under_the_working_directory(sweep_cli, tmp_path):
    p = sweep_cli(["-m", "batch_size=32,64", "hydra.sweep.dir=outputs/multirun/s"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    summary, hint = p.stdout.splitlines()[-2:]
    assert summary == "sweep outputs/multirun/s: 2 ok, 0 failed, 0 skipped (already ok); results: " \
                      "outputs/multirun/s/results.csv"  # as the docs show it, not /home/…/outputs/multirun/s
    assert hint.startswith("tables, plots and report.html: ") and hint.endswith(" -m tornado.report outputs/multirun/s")


def test_a_configuration_found_in_two_folders_is_taken_where_it_finished(tmp_path, monkeypatch):
    import types

    from omegaconf import OmegaConf

    from hydra_plugins.tornado_launcher import jobs as launcher_jobs
    from hydra_plugins.tornado_launcher.jobs import Job, check_resume, place
    from tornado.records import config_hash

    monkeypatch.setattr(launcher_jobs, "HydraConfig", types.SimpleNamespace(
        instance=lambda: types.SimpleNamespace(set_config=lambda cfg: None)))
    cfg = OmegaConf.create({"batch_size": 32})
    # 0: another config's run; 1: this config's failed run; 2: its finished run
    for d, c, status in (("0", {"batch_size": 16}, "ok"), ("1", cfg, "failed"), ("2", cfg, "ok")):
        write_json(tmp_path / d / "result.json", {"status": status, "config_hash": config_hash(c),
                                                  "metrics": {"score": 1.0} if status == "ok" else {}})
    job = Job(num=0, overrides=[], cfg=cfg, dir=tmp_path / "0")
    check_resume(job)
    place([job], tmp_path)
    assert (job.status, job.dir.name, job.num, job.stale) == ("skipped", "2", 2, False)


def test_a_job_the_launcher_stopped_says_so_beside_the_error_it_recorded(tmp_path):
    from omegaconf import OmegaConf

    from hydra_plugins.tornado_launcher.jobs import Job, settle

    write_json(tmp_path / "result.json", {"status": "failed", "error": "RuntimeError: boom"})
    job = Job(num=0, overrides=[], cfg=OmegaConf.create({"batch_size": 32}), dir=tmp_path)
    settle(job, -15, reason="interrupted")
    assert job.status == "failed" and job.error == "interrupted (RuntimeError: boom)"
    assert json.loads((tmp_path / "result.json").read_text())["error"] == job.error


@pytest.mark.parametrize("res, done", [({"status": "ok", "metrics": {"roc_auc": 0.8}}, True),
                                       ({"status": "ok", "metrics": {}}, False), ({"status": "ok"}, False),
                                       ({"status": "failed", "metrics": {"roc_auc": 0.8}}, False), (None, False)])
def test_only_an_ok_run_that_holds_its_scores_is_skipped_on_resume(res, done):
    from hydra_plugins.tornado_launcher.jobs import finished_ok

    assert finished_ok(res) is done


def test_a_job_s_share_of_threads_is_split_among_its_processes():
    from omegaconf import OmegaConf

    from hydra_plugins.tornado_launcher.jobs import Job, assign_threads

    def job(procs: int, threads=None) -> Job:
        return Job(num=0, overrides=[], cfg=OmegaConf.create({"threads": threads}), dir=Path("0"), procs=procs)

    ddp = job(procs=2)
    assign_threads(ddp, 8)
    assert (ddp.threads, ddp.threads_assigned, ddp.overrides, ddp.cfg.threads) == (4, True, ["threads=4"], 4)
    many = job(procs=4)
    assign_threads(many, 2)
    assert many.threads == 1  # at least one each
    own = job(procs=2, threads=3)
    assign_threads(own, 8)
    assert (own.threads, own.threads_assigned, own.overrides) == (3, False, [])


def test_the_device_pool_hands_out_the_lowest_free_devices_and_none_to_cpu_jobs():
    from hydra_plugins.tornado_launcher.local import _DevicePool, _Stop

    pool, stop = _DevicePool(["0", "1", "2", "3"]), _Stop()
    assert pool.acquire(0, stop) == []
    a, b = pool.acquire(1, stop), pool.acquire(1, stop)
    assert (a, b) == (["0"], ["1"])
    pool.release(a)
    pool.release(b)  # back in their order, whatever the order they come back in
    assert pool.acquire(3, stop) == ["0", "1", "2"] and pool.acquire(1, stop) == ["3"]


def test_only_a_folder_holding_another_config_s_run_is_moved_aside(tmp_path):
    from omegaconf import OmegaConf

    from hydra_plugins.tornado_launcher.jobs import Job, move_aside

    for d in ("0", "1"):
        write_json(tmp_path / d / "result.json", {"status": "failed", "error": "boom"})
    own = Job(num=0, overrides=[], cfg=OmegaConf.create({}), dir=tmp_path / "0")  # this config's: resumed there
    assert move_aside(own) is None and (tmp_path / "0" / "result.json").is_file()
    other = Job(num=1, overrides=[], cfg=OmegaConf.create({}), dir=tmp_path / "1", stale=True)
    aside = move_aside(other)
    assert aside.parent == tmp_path / ".replaced" and (aside / "result.json").is_file()
    assert not (tmp_path / "1").exists() and not other.stale


def test_a_job_that_exits_with_an_error_after_writing_ok_fails(tmp_path):
    from omegaconf import OmegaConf

    from hydra_plugins.tornado_launcher.jobs import Job, settle

    write_json(tmp_path / "result.json", {"status": "ok", "metrics": {"roc_auc": 0.8}})
    (tmp_path / "stdout.log").write_text("RuntimeError: NCCL communicator was aborted\n")  # on its way out
    job = Job(num=0, overrides=[], cfg=OmegaConf.create({"batch_size": 32}), dir=tmp_path)
    settle(job, 1)
    assert job.status == "failed" and job.error == "exit code 1: RuntimeError: NCCL communicator was aborted"
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "failed"


def test_a_job_resumed_from_its_checkpoint_keeps_the_threads_the_launcher_gave_it(tmp_path, monkeypatch):
    """On a CPU the thread count sets the order of a run's sums: a sweep resumed with another max_parallel goes
    on with each checkpointed job's earlier count, so it ends as a run never stopped; a job with nothing saved
    takes the new share."""
    import types

    from omegaconf import OmegaConf

    from hydra_plugins.tornado_launcher import jobs as launcher_jobs
    from hydra_plugins.tornado_launcher.jobs import Job, assign_threads, check_resume, place
    from tornado.records import config_hash, flatten

    monkeypatch.setattr(launcher_jobs, "HydraConfig", types.SimpleNamespace(
        instance=lambda: types.SimpleNamespace(set_config=lambda cfg: None)))

    def settings(batch_size: int, threads=None) -> dict:
        return {"batch_size": batch_size, "threads": threads, "resume": True}

    # 0 and 1: their own folders; 2: its run was put in folder 7 by an earlier grid
    for d, batch_size, saved in (("0", 32, True), ("1", 16, False), ("7", 64, True)):
        earlier = settings(batch_size, threads=2)
        write_json(tmp_path / d / "result.json", {"status": "failed", "config_hash": config_hash(earlier),
                                                  "hparams": flatten(earlier)})
        if saved:
            (tmp_path / d / "checkpoints").mkdir()
            (tmp_path / d / "checkpoints" / "last.ckpt").write_bytes(b"")
    jobs = [Job(num=n, overrides=[], cfg=OmegaConf.create(settings(b)), dir=tmp_path / str(n))
            for n, b in enumerate((32, 16, 64))]
    for job in jobs:
        assign_threads(job, 1)
        check_resume(job)
    place(jobs, tmp_path)
    assert [(j.dir.name, j.status, j.threads, j.overrides) for j in jobs] == [
        ("0", "pending", 2, ["threads=2"]), ("1", "pending", 1, ["threads=1"]), ("7", "pending", 2, ["threads=2"])]
    assert jobs[0].config_hash == config_hash(settings(32, threads=2))
