"""SLURM launcher: jobs grouped by resource need, each group one submitit job array; one task per rank."""
import contextlib
import datetime
import io
import json
import logging
import shlex
import shutil
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn

from tornado.cli import counted
from tornado.errors import Terminated, TornadoError
from tornado.records import write_json

from .config import SlurmLauncherConf
from .jobs import (Job, TornadoLauncherBase, Progress, as_count, assign_threads, check_resume, check_settings,
                   compose_jobs, counts, describe_exit, duration_text, eta_text, finish, gpu_request, job_args,
                   job_cost, job_module, job_record, job_return, log_tail, move_aside, passthrough_overrides, place,
                   same_command, same_config, settle, sweeper_decides)

log = logging.getLogger(__name__)

# SLURM job states after which a job may still run (it is queued, running, or being requeued).
_ALIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING",
          "SUSPENDED", "PREEMPTED", "STAGE_OUT", "SIGNALING", "STOPPED", "RESV_DEL_HOLD"}


# why a pending job waits, where waiting will not help: what it asks for is more than the partition has
_NEVER = {"PartitionConfig": "it asks for more than the partition offers (CPUs, GPUs, memory, nodes)",
          "BadConstraints": "its constraints cannot be met", "PartitionTimeLimit": "its time exceeds the partition's",
          "PartitionNodeLimit": "it asks for more nodes than the partition's limit"}


def queue_states(slurm_ids: Sequence[str], reasons: Optional[Dict[str, str]] = None,
                 times: Optional[Dict[str, tuple]] = None) -> Optional[Dict[str, str]]:
    """SLURM state of each job or array task still known to slurmctld; None if squeue did not answer.
    `reasons`, if given, gets why each pending one waits (squeue's reason: Resources, Priority, ...); `times`, if
    given, each one's (start, end) as squeue tells them (None where it does not, or only expects them)."""
    bases = sorted({i.split("_")[0] for i in slurm_ids})
    if not bases:
        return {}
    try:
        r = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%r|%S|%e", "-j", ",".join(bases)],
                           capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return {} if "Invalid job id" in r.stderr else None
    states = {}
    for line in r.stdout.splitlines():
        jid, state, reason, start, end = (line.strip().split("|") + [""] * 4)[:5]
        states[jid] = state.split()[0] if state else ""
        if reasons is not None and states[jid] == "PENDING" and reason.strip() not in ("", "None", "(null)"):
            reasons[jid] = reason.strip()
        if times is not None:  # a queued job's start, a running one's end: what SLURM expects, not what happened
            started = states[jid] in ("RUNNING", "COMPLETING") or states[jid] not in _ALIVE
            times[jid] = (_iso_time(start) if started else None,
                          _iso_time(end) if states[jid] not in _ALIVE else None)
    return states


def _result_pickles(folder: Path, slurm_id: str, tasks: int) -> List[Path]:
    from submitit.core.utils import JobPaths

    return [JobPaths(folder, job_id=slurm_id, task_id=t).result_pickle for t in range(tasks)]


def _outcome(pickles: List[Path]) -> tuple:
    """(exit code of the first failing rank or 0, reason if a task itself raised) from submitit's result files."""
    from submitit.core.utils import pickle_load

    rc = 0
    for p in pickles:
        try:
            outcome, value = pickle_load(p)
        except Exception as e:
            return None, f"unreadable submitit result {p.name}: {e}"
        if outcome != "success":
            lines = [ln for ln in str(value).splitlines() if ln.strip()]
            return None, f"SLURM task failed: {lines[-1].strip() if lines else value}"
        if rc == 0 and value:
            rc = int(value)
    return rc, None


def _checked(setup: Sequence[str]) -> List[str]:
    """The setup lines under a trap that ends the job at a failing one, naming it: an sbatch script runs on past a
    failing line (a `module load` of a module the node lacks), so the job would start in the wrong environment. A
    trap, not a check after each line, so that a line continued (`\\`, `&&`) or an `if`/`else`, `case` or
    here-document over several lines runs as written; as with `set -e`, a failing condition does not count, nor
    does a command inside a sourced script (the `source` line's own status does)."""
    if not setup:
        return []
    said = " ".join(shlex.quote(ln.strip()) for ln in "\n".join(setup).split("\n"))  # by line number in the trap
    return [f"_tornado_setup=({said}); _tornado_in=${{#BASH_SOURCE[@]}}; _tornado_at=$LINENO",
            "trap '_tornado_rc=$?; [ ${#BASH_SOURCE[@]} -gt $_tornado_in ] || { echo \"setup line failed: "
            "${_tornado_setup[LINENO - _tornado_at - 2]} (exit $_tornado_rc)\" >&2; exit $_tornado_rc; }' ERR",
            *setup, "trap - ERR"]


def _log_end(folder: Path, slurm_id: str) -> str:
    """The last line of a job's log (task 0's, which its sbatch script writes to as well), or ''."""
    from submitit.core.utils import JobPaths

    return log_tail(JobPaths(folder, job_id=slurm_id, task_id=0).stdout)


def _ran_between_polls(job: Job, squeued: Optional[tuple], polled: float) -> tuple:
    """(start, end) of a job that started and ended between two polls: as squeue tells them, else as its
    result.json records them (not a resumed run's: its `started` is its first session's); no start where
    neither tells, and the end no later than the poll that found it ended."""
    start, end = squeued or (None, None)
    res = job.result or {}
    if start is None and not res.get("resumed_after_epochs"):
        start, end = _iso_time(res.get("started")), _iso_time(res.get("finished"))
    if start is None or start > polled:
        return None, polled
    return start, end if end is not None and start <= end <= polled else polled


def _iso_time(text: Any) -> Optional[float]:
    """A time as squeue (2026-11-27T10:00:00, local) or result.json writes it, as a timestamp; None for N/A, ..."""
    try:
        return datetime.datetime.fromisoformat(text.strip()).timestamp()
    except (AttributeError, TypeError, ValueError):
        return None


def sbatch_parameters(p: SlurmLauncherConf, gpus: int, tasks: int) -> Dict[str, Any]:
    """submitit SlurmExecutor parameters for jobs of `gpus` GPUs and `tasks` ranks on one node."""
    params = dict(job_name=p.job_name, partition=p.partition, account=p.account, qos=p.qos, time=p.time_min,
                  nodes=1, ntasks_per_node=tasks, gpus_per_node=gpus or None, cpus_per_task=p.cpus_per_task,
                  mem=f"{int(p.mem_gb * 1024)}MB" if p.mem_gb else None, constraint=p.constraint, exclude=p.exclude,
                  array_parallelism=p.array_parallelism, signal_delay_s=p.signal_delay_s, setup=_checked(p.setup),
                  additional_parameters=dict(p.additional_parameters), stderr_to_stdout=True)
    return {k: v for k, v in params.items() if v is not None}


class TornadoSlurmLauncher(TornadoLauncherBase):
    conf_cls = SlurmLauncherConf

    def _launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> List[JobReturn]:
        p = self.p
        if p.time_min * 60 <= p.signal_delay_s:  # submitit would take every start for a timeout and requeue it
            raise TornadoError(f"hydra.launcher.time_min={p.time_min}: no longer than signal_delay_s="
                               f"{p.signal_delay_s}, the warning before the time limit; give more minutes, or a "
                               "smaller hydra.launcher.signal_delay_s")
        if not p.wait and sweeper_decides(self.config):
            raise TornadoError("hydra.launcher.wait=false: the sweeper chooses its next jobs from these jobs' "
                               "returns, so the launcher must wait for them; leave it true with this sweeper")
        module = job_module(p.module)
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        jobs = compose_jobs(self.hydra_context, self.config, job_overrides, initial_job_idx)
        check_settings(self.config, jobs, module)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        for job in jobs:
            gpus, cpu = gpu_request(job.cfg)
            # On SLURM, gpus=auto asks for none: say how many GPUs a job needs.
            n = 0 if str(gpus) == "auto" else as_count(gpus, job.label)
            job.gpus, job.procs = (0 if cpu else n), max(1, n)
            assign_threads(job, p.cpus_per_task * job.procs)
            job.cost = job_cost(job.cfg, 64.0)
            check_resume(job)
        HydraConfig.instance().set_config(self.config)
        place(jobs, sweep_dir)
        todo = [j for j in jobs if j.status == "pending"]
        folder = sweep_dir / ".submitit"
        record_path = sweep_dir / "launcher.json"
        adopted = self._adopt(todo, record_path)
        submit = [j for j in todo if j.slurm_id is None]
        if submit:
            if shutil.which("sbatch") is None:
                raise TornadoError("launcher=slurm: sbatch not found; run on a SLURM login node "
                                   "(or start a local cluster: bash launchers/slurm_local.sh start)")
            moved = {j.dir: aside for j in submit if (aside := move_aside(j)) is not None}
            self._submit(submit, sweep_dir, folder, module, moved)
        for j in todo:
            j.status = "running"  # submitted: queued or running
        plan = {"launcher": "slurm", "slots": None, "state": "running", "submitted": time.time(),
                "jobs": [self._record(j) for j in jobs]}
        write_json(record_path, plan)
        log.info(f"{counted(len(submit), 'job')} submitted, {len(adopted)} still in SLURM from before, "
                 f"{len(jobs) - len(todo)} already ok")
        if not p.wait:
            ids = sorted({j.slurm_id.split("_")[0] for j in todo})
            print(f"submitted to SLURM: job ids {', '.join(ids) or 'none'} ({counted(len(todo), 'job')}). Each job "
                  f"refreshes {sweep_dir / 'results.csv'} as it ends; collect any time with: python -m tornado.collect "
                  f"{sweep_dir}; {same_command(self.config, sweep_dir)} to wait for them and resubmit failed ones.",
                  flush=True)
            return [job_return(j) for j in jobs]
        t0 = time.time()
        try:
            self._wait(todo, folder)
        except (KeyboardInterrupt, Terminated):  # the jobs are SLURM's: they run on without the launcher
            running = [j.slurm_id for j in todo if j.status == "running"]
            one = len(running) == 1
            print(f"\nstopped waiting; {counted(len(running), 'job')} {'stays' if one else 'stay'} in SLURM (scancel "
                  f"{' '.join(running)} to stop {'it' if one else 'them'}); {same_command(self.config, sweep_dir)} to "
                  f"wait for {'it' if one else 'them'}, or collect later with: python -m tornado.collect "
                  f"{shlex.quote(str(sweep_dir))}", flush=True)
            raise
        plan.update(state="finished", started=t0, finished=time.time(), wall_s=time.time() - t0,
                    jobs=[self._record(j) for j in jobs])
        write_json(record_path, plan)
        return finish(self.config, jobs, sweep_dir)

    def _request(self, job: Job) -> Dict[str, Any]:
        """What the job asks SLURM for (sbatch's settings), as launcher.json records it."""
        params = {**sbatch_parameters(self.p, job.gpus, job.procs), "setup": list(self.p.setup)}  # as given
        return json.loads(json.dumps({k: v for k, v in params.items() if k != "array_parallelism"}, default=str))

    def _record(self, job: Job) -> Dict[str, Any]:
        return {**job_record(job), "request": self._request(job)}

    def _adopt(self, todo: List[Job], record_path: Path) -> List[Job]:
        """Jobs of the same config that an earlier launch submitted and SLURM still holds: watch, don't resubmit.
        One still queued with other settings (hydra.launcher.*, changed since) is cancelled, to be submitted again
        with these; one running with them runs on. One of another config running in a job's folder, or squeue not
        answering, is refused: a job submitted there would share the folder with it."""
        try:
            before = {r["dir"]: r for r in json.loads(record_path.read_text())["jobs"]}
        except (OSError, ValueError, KeyError, TypeError):
            return []
        ids = {j.num: before[j.dir.name]["slurm_id"] for j in todo if before.get(j.dir.name, {}).get("slurm_id")}
        states = queue_states(list(ids.values())) if ids else {}
        if states is None:  # unknown: submitting again could put a second job in a folder one still trains in
            raise TornadoError(f"squeue did not answer: cannot tell whether the {counted(len(ids), 'job')} the last "
                               "launch submitted still run; run the same command again in a moment")
        alive = [(j, ids[j.num], before[j.dir.name]) for j in todo if states.get(ids.get(j.num)) in _ALIVE]

        def same(j: Job, then: dict) -> bool:  # up to the thread count the launcher chose (cpus_per_task)
            return same_config(j, {"config_hash": then.get("config_hash"), "hparams": {"threads": then.get("threads")}})

        for j, sid, then in alive:  # moving its folder aside would leave it writing into the new job's folder
            if not same(j, then) and states[sid] != "PENDING":
                raise TornadoError(f"{j.label}: SLURM job {sid} of another config is {states[sid]} in {j.dir}; "
                                   f"scancel {sid} or wait for it to end, then run the same command again")
        adopted = []
        for j, sid, then in alive:
            now = self._request(j)
            asked = then.get("request") or now  # launches before requests were recorded: as now
            changed = sorted(k for k in set(asked) | set(now) if asked.get(k) != now.get(k))
            if (changed or not same(j, then)) and states[sid] == "PENDING":
                subprocess.run(["scancel", sid], capture_output=True, timeout=120)
                log.info(f"{j.label}: SLURM job {sid} was queued with other settings "
                         f"({', '.join(changed) or 'the config'}): cancelled, submitted again with these")
            else:
                if changed:
                    log.warning(f"{j.label}: SLURM job {sid} runs with the settings it was submitted with "
                                f"({', '.join(changed)} differ); it goes on")
                j.slurm_id = sid
                adopted.append(j)
        return adopted

    def _submit(self, jobs: List[Job], sweep_dir: Path, folder: Path, module: str,
                moved: Optional[Dict[Path, Path]] = None) -> None:
        import submitit

        from .slurm_task import TrainTask

        p = self.p
        passthrough = passthrough_overrides(self.config)
        groups: Dict[tuple, List[Job]] = defaultdict(list)
        for j in jobs:
            groups[(j.gpus, j.procs)].append(j)
        made = [j.dir for j in jobs if not j.dir.exists()]
        before = set(folder.iterdir()) if folder.is_dir() else set()
        for (gpus, tasks), group in sorted(groups.items()):
            ex = submitit.SlurmExecutor(folder=folder / "%j", max_num_timeout=p.max_num_timeout, python=p.python)
            ex.update_parameters(**sbatch_parameters(p, gpus, tasks))
            for j in group:
                j.dir.mkdir(parents=True, exist_ok=True)
            said = io.StringIO()
            try:  # sbatch's refusal is said once, in our line (submitit prints it to stderr too)
                with contextlib.redirect_stderr(said), ex.batch():
                    handles = [ex.submit(TrainTask(job_args(module, j, passthrough), str(j.dir),
                                                   self._env(j, sweep_dir))) for j in group]
            except Exception as e:
                self._undo_submit(jobs, made, folder, before, moved or {})
                lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
                why = lines[-1] if lines else type(e).__name__
                hint = ""
                if gpus and "gres" in why.lower():
                    hint = (f"; does the partition have GPUs (sinfo -o \"%P %G\"; hydra.launcher.partition=...)? "
                            f"trainer.accelerator=cpu gpus={gpus} runs {counted(gpus, 'CPU rank')} instead")
                raise TornadoError(f"sbatch refused {counted(len(group), 'job')} with gpus={gpus}, "
                                   f"{counted(tasks, 'task')} of {p.cpus_per_task} CPUs: {why}{hint}; "
                                   "nothing of this launch was left queued") from None
            for line in said.getvalue().splitlines():  # warnings, on a submission that went through
                if line.strip():
                    log.warning(line.rstrip())
            for j, h in zip(group, handles):
                j.slurm_id = str(h.job_id)
            log.info(f"SLURM job {handles[0].job_id.split('_')[0]}: {counted(len(group), 'job')}, gpus={gpus}, "
                     f"{counted(tasks, 'task')} each")

    @staticmethod
    def _undo_submit(jobs: List[Job], made: List[Path], folder: Path, before: set,
                     moved: Dict[Path, Path]) -> None:
        """After sbatch refused a group: cancel the groups it took, remove the folders and files made for them,
        and put back the runs of other configs moved aside for them (`moved`: job folder -> .replaced/...)."""
        taken = [j.slurm_id for j in jobs if j.slurm_id is not None]
        if taken:
            subprocess.run(["scancel", *taken], capture_output=True, check=False, timeout=120)
        for j in jobs:
            j.slurm_id = None
        for d in made:
            shutil.rmtree(d, ignore_errors=True)
        for d, aside in moved.items():
            with contextlib.suppress(OSError):
                aside.rename(d)
                with contextlib.suppress(OSError):
                    aside.parent.rmdir()  # .replaced/, where it held nothing else
        if folder.is_dir():
            for f in set(folder.iterdir()) - before:
                shutil.rmtree(f) if f.is_dir() else f.unlink(missing_ok=True)
            if not before:
                with contextlib.suppress(OSError):
                    folder.rmdir()

    @staticmethod
    def _env(job: Job, sweep_dir: Path) -> Dict[str, str]:
        env = {"TORNADO_SWEEP_DIR": str(sweep_dir)}
        if job.threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(job.threads)
        return env

    def _wait(self, todo: List[Job], folder: Path) -> None:
        """Poll until every job has a result or has left SLURM without one; settle each as it ends."""
        progress = Progress(self.p.progress)
        grace = max(10.0, 2 * self.p.poll_s)  # for result files on a slow shared file system
        gone: Dict[int, float] = {}
        t0 = time.time()
        waiting = {j.num: j for j in todo}
        stuck: set = set()  # jobs warned of as never to start
        try:
            while waiting:
                reasons: Dict[str, str] = {}
                times: Dict[str, tuple] = {}
                states = queue_states([j.slurm_id for j in waiting.values()], reasons, times)
                queued = running = 0
                for num, j in list(waiting.items()):
                    pickles = _result_pickles(folder / j.slurm_id, j.slurm_id, j.procs)
                    state = (states or {}).get(j.slurm_id)
                    ran = all(pk.exists() for pk in pickles)
                    if ran:
                        rc, reason = _outcome(pickles)
                        # A failed job: wait (briefly) for SLURM's final state, e.g. CANCELLED, to name the cause.
                        if rc and state in _ALIVE and time.time() - gone.setdefault(num, time.time()) < grace:
                            continue
                        if rc and state and state not in _ALIVE and state != "COMPLETED":
                            reason = f"SLURM job {j.slurm_id} {state}: {describe_exit(rc)}"
                        if reason and "timed-out too many times" in reason:  # submitit's words
                            reason = (f"SLURM job {j.slurm_id} reached its time limit (hydra.launcher.time_min="
                                      f"{self.p.time_min}) once more than max_num_timeout={self.p.max_num_timeout} "
                                      "requeues allow; give it more minutes, and run the same command again to "
                                      "resume from its checkpoint")
                    elif states is None or state in _ALIVE:
                        gone.pop(num, None)
                        if state in ("RUNNING", "COMPLETING"):
                            running += 1
                            j.start = j.start or time.time()  # first seen running: its time, without the queue's
                        else:
                            queued += 1
                            why = reasons.get(j.slurm_id, "")
                            if why in _NEVER and num not in stuck:
                                stuck.add(num)
                                progress.note(logging.WARNING, f"{j.label}: SLURM job {j.slurm_id} waits for "
                                              f"{why}: {_NEVER[why]}; it will not start: scancel it and ask for "
                                              "less (hydra.launcher.*)")
                        continue
                    elif time.time() - gone.setdefault(num, time.time()) < grace:
                        continue
                    else:
                        end = _log_end(folder / j.slurm_id, j.slurm_id)
                        rc, reason = None, (f"SLURM job {j.slurm_id} {state or 'left the queue'} without a result"
                                            f"{f'; its log ends: {end}' if end else ''}")
                    j.end = time.time()
                    settle(j, rc, reason)
                    if j.start is None and ran:  # never seen running: it ran between two polls
                        j.start, j.end = _ran_between_polls(j, times.get(j.slurm_id), j.end)
                    if j.status == "failed":
                        progress.note(logging.WARNING, f"{j.label} failed: {j.error}")
                    del waiting[num]
                c, now = counts(todo), time.time()
                why = ", ".join(sorted(set(reasons.values())))
                progress.show(f"slurm: {c['ok'] + c['failed']}/{len(todo)} done ({c['ok']} ok, {c['failed']} failed), "
                              f"{running} running, {queued} queued{f' ({why})' if why else ''}, "
                              f"{duration_text(now - t0)}{eta_text(todo, now)}")
                if waiting:
                    time.sleep(self.p.poll_s)
        finally:
            progress.close()
