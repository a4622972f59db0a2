"""SLURM sweeps on a real cluster (bash launchers/slurm_local.sh start): job arrays, ranks, cancel, resume.

Without a cluster these skip; with TORNADO_REQUIRE_SLURM=1 (CI) a missing cluster fails them.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from submitit.slurm.slurm import _make_sbatch_string

from hydra_plugins.tornado_launcher.config import SlurmLauncherConf
from hydra_plugins.tornado_launcher.slurm import sbatch_parameters
from tornado.errors import TornadoError

REPO = Path(__file__).resolve().parents[1]


def slurm_only(test):
    return pytest.mark.slurm(pytest.mark.usefixtures("slurm_cluster")(test))

# Small jobs for a small node: one CPU per task, 1 GB, results polled every second.
SLURM = ["launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
         "hydra.launcher.poll_s=1", "hydra.launcher.time_min=10"]
FAKE_SLURM = ["hydra/launcher=tornado_slurm", *SLURM[1:]]


def results(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("[0-9]*/result.json")}


def slurm_state(job: str) -> str:
    """The job's (or array task's) state as squeue shows it, finished jobs included."""
    r = subprocess.run(["squeue", "-h", "-t", "all", "-j", job, "-o", "%T"], capture_output=True, text=True,
                       timeout=60)
    return r.stdout.strip()


def wait_for(path: Path, timeout: float = 120) -> None:
    t0 = time.time()
    while not path.exists():
        assert time.time() - t0 < timeout, f"{path} did not appear in {timeout} s"
        time.sleep(0.2)


@pytest.mark.slow
@slurm_only
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
    eff = subprocess.run([sys.executable, "-m", "tornado.collect", str(sweep), "--efficiency"], capture_output=True,
                         text=True, timeout=120)
    assert eff.returncode == 2 and "measures the local launcher's slots" in eff.stderr.strip().splitlines()[-1]


@pytest.mark.slow
@slurm_only
def test_slurm_preempted_job_is_requeued_and_resumes_from_its_checkpoint(sweep_popen, sweep_train_overrides,
                                                                         tmp_path):
    sweep = tmp_path / "sweep"
    epochs = 200  # far more than pass before the signal (an epoch of the tiny set takes a fraction of a second)
    overrides = [o for o in sweep_train_overrides if not o.startswith("epochs=")]
    proc = sweep_popen(["-m", "batch_size=64", "gpus=0", *overrides, f"epochs={epochs}", *SLURM,
                        f"hydra.sweep.dir={sweep}"], module="tornado.train", cwd=tmp_path)
    wait_for(sweep / "0" / "checkpoints" / "last.ckpt", timeout=300)
    task = json.loads((sweep / "launcher.json").read_text())["jobs"][0]["slurm_id"]
    # what SLURM sends before a preemption or the time limit (--signal=USR2@signal_delay_s)
    subprocess.run(["scancel", "--signal=USR2", task], check=True)
    t0 = time.time()
    while slurm_state(task) != "PENDING":  # requeued by submitit, to start again in two minutes
        assert time.time() - t0 < 120 and proc.poll() is None, f"{task} not requeued: {slurm_state(task)}"
        time.sleep(0.2)
    # sooner than SLURM's two minutes, but not at once: slurmd refuses a start in the second its credential was
    # revoked by the requeue ("Job credential revoked")
    subprocess.run(["scontrol", "update", f"jobid={task}", "starttime=now+5"], check=True)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-2000:] + err[-2000:]
    assert "1 ok, 0 failed, 0 skipped" in out
    r = results(sweep)["0"]
    assert r["status"] == "ok" and 1 <= r["resumed_after_epochs"] < epochs
    assert [h["epoch"] for h in r["history"]] == list(range(epochs))
    assert len(r["times"]["epoch_s"]) == epochs


@slurm_only
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


@slurm_only
def test_slurm_progress_line_on_a_terminal_estimates_the_time_left(on_terminal, tmp_path):
    sweep = tmp_path / "sweep"
    rc, shown = on_terminal(["tornado_fake_train", "-m", "data_multiplier=1,2,3", "sleep_s=1", *FAKE_SLURM,
                             "hydra.launcher.array_parallelism=1", f"hydra.sweep.dir={sweep}"])
    assert rc == 0, shown[-2000:]
    progress = [ln for ln in shown.replace("\x1b[K", "").replace("\r", "\n").splitlines() if ln.startswith("slurm: ")]
    assert any(ln.startswith("slurm: 0/3 done (0 ok, 0 failed), ") and "left" not in ln for ln in progress), progress
    # one at a time: after the first job, the two still queued are estimated from its time
    after_one = [ln for ln in progress if ln.startswith("slurm: 1/3 done (1 ok, 0 failed), ")]
    left = r" queued( \([A-Za-z]+\))?, .*, about \d+ s left$"  # with why they wait, as squeue says
    assert after_one and all(re.search(left, ln) for ln in after_one), after_one
    assert any(re.search(r" queued \([A-Za-z]+\), ", ln) for ln in after_one), after_one  # e.g. JobArrayTaskLimit


@slurm_only
def test_slurm_job_that_ran_between_two_polls_has_its_start_and_end_recorded(sweep_cli, tmp_path):
    """Queued at the first poll (it may not begin for 3 s), finished long before the next: never seen running, its
    start and end are SLURM's, for launcher.json and the time left."""
    sweep = tmp_path / "sweep"
    slow = [o for o in FAKE_SLURM if not o.startswith("hydra.launcher.poll_s=")] + ["hydra.launcher.poll_s=20"]
    p = sweep_cli(["-m", "batch_size=32", *slow, "+hydra.launcher.additional_parameters.begin=now+3",
                   f"hydra.sweep.dir={sweep}"])
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    launch = json.loads((sweep / "launcher.json").read_text())
    (job,) = launch["jobs"]
    assert job["start"] is not None, job
    assert launch["submitted"] + 1 <= job["start"] <= job["end"] < job["start"] + 20, (launch["submitted"], job)


def test_a_job_squeue_no_longer_shows_takes_its_start_and_end_from_its_result_json(tmp_path):
    from hydra_plugins.tornado_launcher.jobs import Job
    from hydra_plugins.tornado_launcher.slurm import _ran_between_polls

    job = Job(num=0, overrides=[], cfg=None, dir=tmp_path, result={
        "started": "2026-01-01T00:00:00+00:00", "finished": "2026-01-01T00:00:12+00:00", "resumed_after_epochs": 0})
    t0 = 1767225600.0  # 2026-01-01T00:00:00Z
    assert _ran_between_polls(job, None, polled=t0 + 15) == (t0, t0 + 12)
    assert _ran_between_polls(job, (t0 + 1, t0 + 11), polled=t0 + 15) == (t0 + 1, t0 + 11)  # squeue's first
    assert _ran_between_polls(job, (t0 + 1, None), polled=t0 + 15) == (t0 + 1, t0 + 15)
    job.result["resumed_after_epochs"] = 3  # started with its first session, in another launch: no start
    assert _ran_between_polls(job, None, polled=t0 + 15) == (None, t0 + 15)


@slurm_only
def test_slurm_cancelled_job_is_recorded_failed_and_rerun_on_resume(sweep_cli, sweep_popen, tmp_path):
    sweep, hold, counter = tmp_path / "sweep", tmp_path / "release", tmp_path / "trainings.txt"
    args = ["-m", "batch_size=32,64", *FAKE_SLURM, f"hydra.sweep.dir={sweep}", f"hold={hold}", f"counter={counter}"]
    proc = sweep_popen(args)
    wait_for(sweep / "1" / "env_0.json")
    env = json.loads((sweep / "1" / "env_0.json").read_text())
    task = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    subprocess.run(["scancel", task], check=True)
    t0 = time.time()  # released only once SLURM has ended the task: the release must not let it finish ok
    while (state := slurm_state(task)) not in ("CANCELLED", ""):  # "": ended and already purged
        assert time.time() - t0 < 120, f"{task} still {state} after scancel"
        time.sleep(0.2)
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


@slurm_only
def test_a_failing_setup_line_ends_the_job_and_is_named_in_its_error(sweep_cli, tmp_path):
    """sbatch scripts run on past a failing line: the job would train in the wrong environment."""
    sweep = tmp_path / "sweep"
    p = sweep_cli(["-m", "batch_size=32", *FAKE_SLURM, f"hydra.sweep.dir={sweep}", f"counter={tmp_path / 'c.txt'}",
                   f'hydra.launcher.setup=["true","test -d /no/such/venv # a comment","touch {tmp_path}/ran-on"]'])
    assert p.returncode == 1, p.stderr[-2000:]
    error = results(sweep)["0"]["error"]
    assert "without a result; its log ends: setup line failed: test -d /no/such/venv # a comment (exit 1)" in error
    assert not (tmp_path / "c.txt").exists() and not (tmp_path / "ran-on").exists()
    request = json.loads((sweep / "launcher.json").read_text())["jobs"][0]["request"]
    assert request["setup"] == ["true", "test -d /no/such/venv # a comment", f"touch {tmp_path}/ran-on"]  # as given


@slurm_only
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


def test_cluster_preset_becomes_the_sbatch_script(tmp_path):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["launcher=example_cluster"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("TornadoSlurmLauncher")
    params = {k: v for k, v in launcher.items() if k != "_target_"}
    conf = SlurmLauncherConf(**{k: list(v) if k == "setup" else dict(v) if k == "additional_parameters" else v
                                for k, v in params.items()})
    script = _make_sbatch_string(command="python -m x", folder=tmp_path / "%j", **sbatch_parameters(conf, 2, 2))
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=my_project", "#SBATCH --qos=normal",
                 "#SBATCH --gpus-per-node=2", "#SBATCH --ntasks-per-node=2", "#SBATCH --nodes=1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --time=240", "#SBATCH --mail-type=FAIL",
                 "module load cuda/12.4"):
        assert line in script.splitlines()
    cpu = _make_sbatch_string(command="python -m x", folder=tmp_path / "%j", **sbatch_parameters(conf, 0, 2))
    assert "#SBATCH --ntasks-per-node=2" in cpu and "gpus-per-node" not in cpu  # CPU DDP: ranks without GPUs


def test_setup_lines_run_as_written_and_a_failing_one_ends_the_script_naming_it(tmp_path):
    """An `if`/`else` or a `\\` continuation over several setup lines is shell as written (a check after each line
    broke them: `else` saw its condition's status); a failing line, inside one too, ends the job."""
    def run(setup):
        params = sbatch_parameters(SlurmLauncherConf(setup=setup), 0, 1)
        script = _make_sbatch_string(command='echo "ran $A $B"', folder=tmp_path / "%j", use_srun=False, **params)
        (tmp_path / "job.sh").write_text(script)
        return subprocess.run(["bash", str(tmp_path / "job.sh")], capture_output=True, text=True, timeout=60)

    p = run(["if [ -d /no/such/venv ]; then", "  A=venv", "else", "  A=system", "fi", "B=$A-\\", "more"])
    assert p.returncode == 0 and p.stdout == "ran system system-more\n", p.stderr
    p = run(["true", "if true; then", "  test -d /no/such/venv # a comment", "fi", "A=1"])
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.splitlines()[-1] == "setup line failed: test -d /no/such/venv # a comment (exit 1)"


@slurm_only
def test_slurm_rerun_waits_for_jobs_still_queued_without_resubmitting(sweep_cli, sweep_popen, tmp_path):
    sweep, hold = tmp_path / "sweep", tmp_path / "release"
    args = ["-m", "batch_size=32,64", *FAKE_SLURM, f"hydra.sweep.dir={sweep}", f"hold={hold}"]
    assert sweep_cli([*args, "hydra.launcher.wait=false"]).returncode == 0
    first = [j["slurm_id"] for j in json.loads((sweep / "launcher.json").read_text())["jobs"]]
    waiting = sweep_popen(args)
    time.sleep(3)
    hold.touch()
    out, err = waiting.communicate(timeout=300)
    assert waiting.returncode == 0, err
    assert "0 jobs submitted, 2 still in SLURM from before" in out + err
    assert "2 ok, 0 failed, 0 skipped" in out
    assert [j["slurm_id"] for j in json.loads((sweep / "launcher.json").read_text())["jobs"]] == first


@slurm_only
def test_slurm_job_that_can_never_start_is_named_with_its_reason(sweep_popen, tmp_path):
    """More CPUs than the partition has: sbatch takes it, and it would wait forever; the launcher says so."""
    import select
    import signal

    sweep = tmp_path / "sweep"
    args = ["-m", "batch_size=32", *FAKE_SLURM, "hydra.launcher.cpus_per_task=512", f"hydra.sweep.dir={sweep}"]
    proc = sweep_popen(args)
    seen, t0 = "", time.time()
    try:
        while "will not start" not in seen:  # the launcher's log lines go to stdout
            assert time.time() - t0 < 120 and proc.poll() is None, seen[-2000:]
            if select.select([proc.stdout], [], [], 1.0)[0]:
                seen += proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        ids = re.findall(r"SLURM job (\d+) waits for", seen)
        subprocess.run(["scancel", *ids], check=False)
    assert re.search(r"job 0 \[.*\]: SLURM job \d+ waits for PartitionConfig: it asks for more than the partition "
                     r"offers \(CPUs, GPUs, memory, nodes\); it will not start: scancel it", seen), seen[-2000:]
    assert re.search(r"stopped waiting; 1 job stays in SLURM \(scancel \d+ to stop it\)", out), out[-2000:]


def test_a_task_that_submitit_ends_stops_its_run_as_scancel_would(tmp_path):
    """At the time limit (or a requeue) submitit's handler raises in the task: the run is told to stop (SIGTERM)
    and gets time to record the epochs it saved, instead of being killed outright."""
    import signal
    import threading

    from hydra_plugins.tornado_launcher.slurm_task import TrainTask

    child = ("import signal, sys, time, pathlib\n"
             "def stop(*_):\n"
             f"    pathlib.Path({str(tmp_path / 'recorded')!r}).write_text('history')\n"
             "    sys.exit(143)\n"
             "signal.signal(signal.SIGTERM, stop)\n"
             f"pathlib.Path({str(tmp_path / 'started')!r}).touch()\n"
             "time.sleep(60)\n")

    class Ended(Exception):
        pass

    def handler(*_):
        raise Ended()

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        def warn():
            wait_for(tmp_path / "started", timeout=60)
            os.kill(os.getpid(), signal.SIGUSR1)
        threading.Thread(target=warn, daemon=True).start()
        with pytest.raises(Ended):
            TrainTask(["-c", child], str(tmp_path / "job"), {})()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert (tmp_path / "recorded").read_text() == "history"


def test_a_time_limit_no_longer_than_its_warning_is_refused(sweep_cli, tmp_path):
    """submitit would take every start for a timeout and requeue the job over and over."""
    args = [o for o in FAKE_SLURM if not o.startswith("hydra.launcher.time_min=")]
    p = sweep_cli(["-m", "batch_size=32", *args, "hydra.launcher.time_min=1", f"hydra.sweep.dir={tmp_path / 's'}"])
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1] == (
        "error: hydra.launcher.time_min=1: no longer than signal_delay_s=90, the warning before the time limit; "
        "give more minutes, or a smaller hydra.launcher.signal_delay_s")


def test_a_bad_value_in_one_job_of_the_grid_is_refused_before_anything_is_queued(sweep_cli, tmp_path):
    sweep = tmp_path / "sweep"
    p = sweep_cli(["-m", "batch_size=64,0", *SLURM, f"hydra.sweep.dir={sweep}"], module="tornado.train")
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1] == (
        "error: job 1 [batch_size=0 launcher=slurm]: batch_size=0: must be a positive integer"), p.stderr[-2000:]
    assert not sweep.exists()  # no .submitit, launcher.json, job folder: nothing


def test_a_sweeper_that_chooses_by_the_jobs_returns_is_refused_not_waiting_for_them(sweep_cli, tmp_path):
    sweep = tmp_path / "sweep"
    p = sweep_cli(["-m", "hydra/sweeper=walk", "hydra.sweeper.batches=[[64]]", *FAKE_SLURM,
                   "hydra.launcher.wait=false", f"hydra.sweep.dir={sweep}"])
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1] == (
        "error: hydra.launcher.wait=false: the sweeper chooses its next jobs from these jobs' returns, so the "
        "launcher must wait for them; leave it true with this sweeper"), p.stderr[-2000:]
    assert not sweep.exists()


@slurm_only
def test_gpus_on_a_cluster_without_them_are_refused_with_a_hint_and_nothing_left_queued(sweep_cli, tmp_path):
    """The gpus=0 group is queued first, then sbatch refuses the gpus=1 one: the first is cancelled again."""
    sweep = tmp_path / "sweep"
    p = sweep_cli(["-m", "gpus=0,1", *FAKE_SLURM, f"hydra.sweep.dir={sweep}"])
    line = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 2 and line.startswith("error: sbatch refused 1 job with gpus=1, 1 task of 1 CPUs: ") and \
        line.endswith('does the partition have GPUs (sinfo -o "%P %G"; hydra.launcher.partition=...)? '
                      "trainer.accelerator=cpu gpus=1 runs 1 CPU rank instead; nothing of this launch was left "
                      "queued"), p.stderr
    assert sum(ln.startswith("sbatch: error") for ln in p.stderr.splitlines()) == 0  # said once, in that line
    first = re.search(r"SLURM job (\d+): 1 job, gpus=0", p.stdout + p.stderr).group(1)
    assert slurm_state(first) in ("", "CANCELLED")
    assert not sweep.exists()


@slurm_only
def test_a_job_of_another_config_still_running_in_the_folder_is_refused(sweep_cli, tmp_path):
    """A grid changed while the last launch's job still trains: moving its folder aside would leave it writing
    into the new job's folder."""
    sweep, go = tmp_path / "sweep", tmp_path / "go"
    args = ["-m", "batch_size=32", *FAKE_SLURM, f"hydra.sweep.dir={sweep}", f"hold={go}"]
    first = sweep_cli([*args, "hydra.launcher.wait=false"])
    assert first.returncode == 0, first.stderr
    sid = json.loads((sweep / "launcher.json").read_text())["jobs"][0]["slurm_id"]
    try:
        t0 = time.time()
        while slurm_state(sid) != "RUNNING":
            assert time.time() - t0 < 120, slurm_state(sid)
            time.sleep(0.5)
        again = sweep_cli([*args, "sleep_s=0.01"])  # another config for the same folder
        assert slurm_state(sid) == "RUNNING"  # left alone
    finally:
        go.touch()
        subprocess.run(["scancel", sid], check=False)
    assert again.returncode == 2, again.stderr[-3000:]
    assert re.fullmatch(rf"error: job 0 \[.*sleep_s=0.01.*\]: SLURM job {sid} of another config is RUNNING in "
                        rf"{re.escape(str(sweep / '0'))}; scancel {sid} or wait for it to end, then run the same "
                        r"command again", again.stderr.strip().splitlines()[-1]), again.stderr[-2000:]
    assert (sweep / "0").is_dir() and not (sweep / ".replaced").exists()


def test_a_rerun_is_refused_while_squeue_does_not_answer(tmp_path, monkeypatch):
    """Unknown is not gone: submitting again could put a second job into a folder one still trains in."""
    from hydra_plugins.tornado_launcher import slurm
    from hydra_plugins.tornado_launcher.jobs import Job

    record = tmp_path / "launcher.json"
    record.write_text(json.dumps({"jobs": [{"dir": "0", "slurm_id": "4242", "config_hash": "x"}]}))
    monkeypatch.setattr(slurm, "queue_states", lambda ids, reasons=None: None)
    job = Job(num=0, overrides=["batch_size=32"], cfg=None, dir=tmp_path / "0", config_hash="x")
    with pytest.raises(TornadoError, match=r"^squeue did not answer: cannot tell whether the 1 job the last launch "
                                           r"submitted still run; run the same command again in a moment$"):
        slurm.TornadoSlurmLauncher()._adopt([job], record)


def test_a_running_job_whose_threads_only_the_launcher_changed_runs_on(tmp_path, monkeypatch):
    """cpus_per_task changed since: the launcher passes another threads=N, yet the running job is of this config."""
    from omegaconf import OmegaConf

    from hydra_plugins.tornado_launcher import slurm
    from hydra_plugins.tornado_launcher.jobs import Job
    from tornado.records import config_hash

    then = {"batch_size": 32, "threads": 1}
    record = tmp_path / "launcher.json"
    record.write_text(json.dumps({"jobs": [{"dir": "0", "slurm_id": "4242", "config_hash": config_hash(then),
                                            "threads": 1}]}))
    monkeypatch.setattr(slurm, "queue_states", lambda ids, reasons=None: {"4242": "RUNNING"})
    cfg = OmegaConf.create({"batch_size": 32, "threads": 2})
    job = Job(num=0, overrides=["batch_size=32", "threads=2"], cfg=cfg, dir=tmp_path / "0", threads=2,
              threads_assigned=True, config_hash=config_hash(cfg))
    adopted = slurm.TornadoSlurmLauncher(cpus_per_task=2)._adopt([job], record)
    assert adopted == [job] and job.slurm_id == "4242"


def test_a_folder_moved_aside_comes_back_when_sbatch_refuses(tmp_path):
    from hydra_plugins.tornado_launcher import slurm
    from hydra_plugins.tornado_launcher.jobs import Job

    old = tmp_path / "0"
    old.mkdir()
    (old / "result.json").write_text("{}")
    job = Job(num=0, overrides=[], cfg=None, dir=old, stale=True)
    aside = slurm.move_aside(job)
    old.mkdir()  # made by _submit for the new job
    slurm.TornadoSlurmLauncher._undo_submit([job], [old], tmp_path / ".submitit", set(), {old: aside})
    assert (old / "result.json").read_text() == "{}" and not (tmp_path / ".replaced").exists()


def test_what_submitit_warns_of_on_a_submission_that_went_through_is_passed_on(tmp_path, monkeypatch, caplog):
    """Its stderr is held back while submitting (a refusal is said once, in our line), not dropped."""
    import submitit

    from hydra_plugins.tornado_launcher import slurm
    from hydra_plugins.tornado_launcher.jobs import Job

    class Executor:
        def __init__(self, **kwargs):
            pass

        def update_parameters(self, **kwargs):
            pass

        @contextlib.contextmanager
        def batch(self):
            yield
            print("UserWarning: a parameter submitit does not know", file=sys.stderr)

        def submit(self, task):
            return types.SimpleNamespace(job_id="77_0")

    monkeypatch.setattr(submitit, "SlurmExecutor", Executor)
    monkeypatch.setattr(slurm, "passthrough_overrides", lambda config: [])
    job = Job(num=0, overrides=["batch_size=32"], cfg=None, dir=tmp_path / "0")
    with caplog.at_level(logging.WARNING):
        slurm.TornadoSlurmLauncher()._submit([job], tmp_path, tmp_path / ".submitit", "tornado.train")
    assert job.slurm_id == "77_0" and "UserWarning: a parameter submitit does not know" in caplog.text


@slurm_only
def test_a_job_queued_with_settings_changed_since_is_submitted_again_with_the_new_ones(sweep_cli, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "batch_size=32", *FAKE_SLURM, f"hydra.sweep.dir={sweep}"]
    first = sweep_cli([*args, "hydra.launcher.cpus_per_task=512", "hydra.launcher.wait=false"])  # can never start
    assert first.returncode == 0, first.stderr
    stuck = json.loads((sweep / "launcher.json").read_text())["jobs"][0]["slurm_id"]
    try:
        again = sweep_cli(args)  # the request mended
        state = slurm_state(stuck)
    finally:
        subprocess.run(["scancel", stuck], check=False)  # were it left
    out = again.stdout + again.stderr
    assert state == "CANCELLED", state
    assert again.returncode == 0, out[-3000:]
    assert re.search(rf"SLURM job {stuck} was queued with other settings \(cpus_per_task\): cancelled, submitted "
                     "again with these", out), out[-3000:]
    assert "1 job submitted, 0 still in SLURM from before" in out and "1 ok, 0 failed, 0 skipped" in out
    assert json.loads((sweep / "launcher.json").read_text())["jobs"][0]["request"]["cpus_per_task"] == 1
