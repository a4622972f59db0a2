"""Local launcher: every job is its own single-run process, scheduled onto this machine's GPUs and cores."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import pkgutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn

from tornado.cli import closest, counted
from tornado.errors import TornadoError, is_number
from tornado.records import read_result, write_json

from .config import LocalLauncherConf
from .jobs import (Job, TornadoLauncherBase, Progress, as_count, assign_threads, check_resume, check_settings,
                   compose_jobs, counts, duration_text, eta_text, finish, gpu_request, job_args, job_cost, job_module,
                   job_record, move_aside, passthrough_overrides, place, same_command, settle, sweeper_decides)
from .schedule import imbalance, partition

log = logging.getLogger(__name__)


def visible_gpus() -> List[str]:
    """Ids of the GPUs this process may use, as CUDA_VISIBLE_DEVICES names them."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None and not env.strip():
        return []
    if not any(os.path.exists(d) for d in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd")):
        return []  # no GPU driver: skip importing torch
    try:
        import torch

        n = torch.cuda.device_count()
    except Exception:  # no usable CUDA at all
        n = 0
    if env:
        return [x.strip() for x in env.split(",") if x.strip()][:n]
    return [str(i) for i in range(n)]


def _visible_note(configured: Optional[Sequence[str]]) -> str:
    if configured is not None:
        return "hydra.launcher.devices"
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    return "CUDA_VISIBLE_DEVICES unset" if env is None else f"CUDA_VISIBLE_DEVICES={env!r}"


def _threads_text(jobs: Sequence[Job], per_job: int) -> str:
    """The threads the jobs use: the launcher's share per job, and the counts jobs set themselves (threads=N)."""
    mine = [j for j in jobs if not j.threads_assigned and "threads" in j.cfg and j.cfg.threads is not None]
    share = f"{counted(per_job, 'thread')} per job"
    if not mine:
        return share
    own = sorted({int(j.cfg.threads) for j in mine})
    n = f"{' or '.join(map(str, own))} thread{'' if own == [1] else 's'} per process"
    n += f" (threads={','.join(map(str, own))})"
    return n if len(mine) == len(jobs) else f"{share} where threads is unset, else {n}"


def _times_text(job: Job) -> str:
    """'in 26.4 s, process start to exit (training 20.3 s)': the launcher's time of the job's process (start-up,
    imports, data loading and test included) and, where its result.json has it, the training time (wall_s; not
    for a resumed run, whose wall_s adds up every session's)."""
    res = job.result or {}
    fit = res["times"].get("wall_s") if isinstance(res.get("times"), dict) else None
    training = f" (training {fit:.1f} s)" if is_number(fit) and not res.get("resumed_after_epochs") else ""
    return f"in {job.end - job.start:.1f} s, process start to exit{training}"


class _Stop:
    """The sweep's stop flag: set by the launcher, or by SIGINT/SIGTERM. The signal handler only appends to
    `signals` (no lock is taken in a handler, so it can never deadlock the thread it interrupts)."""

    def __init__(self) -> None:
        self.flag = False
        self.signals: List[int] = []

    def set(self) -> None:
        self.flag = True

    def is_set(self) -> bool:
        return self.flag or bool(self.signals)

    @property
    def name(self) -> str:
        return signal.Signals(self.signals[0]).name if self.signals else ""


def _signal_group(pid: int, sig: int) -> None:
    """Signal a job's process group (its DDP ranks too); the process alone if it has no group of its own yet
    (a warm worker's child between fork and setsid)."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def check_preload(names: Sequence[str]) -> None:
    """Every module a warm worker is to preload can be found: a misspelt one would not be preloaded, and each job
    would import it itself, slower, with nothing said. Nothing is imported here but a dotted name's packages."""
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ModuleNotFoundError, ValueError):  # a package above it missing, an empty or relative name
            found = False
        except Exception:  # a package above it there but failing to import: the worker says so, the jobs run
            found = True
        if found:
            continue
        parent, _, last = name.rpartition(".")
        try:  # the modules it may misspell: those of its package, or every top-level one
            known = [m.name for m in pkgutil.iter_modules(importlib.import_module(parent).__path__ if parent else None)]
        except Exception:  # the suggestion is a courtesy
            known = []
        close = closest(last, known)
        hint = f" (did you mean {parent + '.' if parent else ''}{close}?)" if close else ""
        raise TornadoError(f"hydra.launcher.preload: {name or repr(name)}: no such module to import{hint}")


class _DevicePool:
    """GPUs handed to jobs: a job needing g waits until g are free and gets exactly those."""

    def __init__(self, ids: Sequence[str]) -> None:
        self.order = {d: i for i, d in enumerate(ids)}
        self.free = list(ids)
        self.cond = threading.Condition()

    def acquire(self, n: int, stop: "_Stop") -> Optional[List[str]]:
        with self.cond:
            while len(self.free) < n:
                if stop.is_set():
                    return None
                self.cond.wait(0.5)
            taken, self.free = self.free[:n], self.free[n:]
            return taken

    def release(self, ids: Sequence[str]) -> None:
        with self.cond:
            self.free = sorted(self.free + list(ids), key=self.order.__getitem__)
            self.cond.notify_all()


class _WarmWorker:
    """A warm.py server: forks each job from a process that has the job module's imports done."""

    def __init__(self, module: str, preload: List[str], env: Dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "hydra_plugins.tornado_launcher.warm", module, *preload],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                     start_new_session=True)

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"warm worker exited with code {self.proc.wait()}")
        return json.loads(line)

    def start(self, args: List[str], env: Dict[str, str], log: Path) -> int:
        self.proc.stdin.write(json.dumps({"args": args, "env": env, "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        return int(self._read()["pid"])

    def wait(self) -> int:
        return int(self._read()["rc"])

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


class TornadoLocalLauncher(TornadoLauncherBase):
    conf_cls = LocalLauncherConf

    # -- planning -------------------------------------------------------------------------------------
    def _launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> List[JobReturn]:
        """Plan and run the sweep. SIGINT (Ctrl-C) and SIGTERM stop it in order instead of a traceback: no new
        jobs, the running ones get the signal and `stop_grace_s` to end (then SIGKILL), every job's record is
        settled, launcher.json and results.csv are written, and the command exits 130 or 143 (`_interrupted`)."""
        self._stop = _Stop()
        self._restore: Dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                old = signal.getsignal(sig)
                if old is not signal.SIG_IGN:  # started with it ignored (nohup, `cmd &` in a script): keep that
                    self._restore[sig] = old
                    signal.signal(sig, lambda signum, frame: self._stop.signals.append(signum))
        try:
            return self._plan_and_run(job_overrides, initial_job_idx)
        finally:
            self._restore_signals()

    def _restore_signals(self) -> None:
        """The command's own SIGINT/SIGTERM handling again: once every job is settled, a signal stops the final
        collect and summary at once (one `error: interrupted` line) instead of being noted and ignored."""
        for sig, old in self._restore.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self._restore = {}

    def _plan_and_run(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> List[JobReturn]:
        p = self.p
        if p.schedule not in ("dynamic", "static"):
            raise TornadoError(f"hydra.launcher.schedule={p.schedule!r}: use dynamic or static")
        for key in ("max_parallel", "workers", "threads_per_job"):  # 0 is not "choose for me": null is
            if getattr(p, key) is not None and getattr(p, key) < 1:
                raise TornadoError(f"hydra.launcher.{key}={getattr(p, key)}: must be at least 1, or null to choose")
        if p.stop_grace_s < 0:
            raise TornadoError(f"hydra.launcher.stop_grace_s={p.stop_grace_s:g}: must be 0 or more seconds")
        if p.warm:
            check_preload([str(m) for m in p.preload])
        module = job_module(p.module)
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        jobs = compose_jobs(self.hydra_context, self.config, job_overrides, initial_job_idx)
        check_settings(self.config, jobs, module)
        sweep_dir.mkdir(parents=True, exist_ok=True)

        requests = [gpu_request(j.cfg) for j in jobs]
        may_use_gpus = any(not cpu and str(g) != "0" for g, cpu in requests)
        devices = [str(d) for d in p.devices] if p.devices is not None else (visible_gpus() if may_use_gpus else [])
        for job, (gpus, cpu) in zip(jobs, requests):
            if str(gpus) == "auto":
                n = 1 if cpu else len(devices)
            else:
                n = as_count(gpus, job.label)
            job.gpus, job.procs = (0 if cpu else n), max(1, n)

        cores = len(os.sched_getaffinity(0))
        gpu_jobs = any(j.gpus for j in jobs)
        max_parallel = p.max_parallel or (max(1, len(devices)) if gpu_jobs else max(1, cores // 4))
        slots = (p.workers or max_parallel) if p.schedule == "static" else max_parallel
        if slots < 1:
            raise TornadoError(f"hydra.launcher: max_parallel/workers={slots} must be at least 1")
        per_job = p.threads_per_job or max(1, cores // slots)
        for job in jobs:
            assign_threads(job, per_job)
            job.cost = job_cost(job.cfg, p.cost_batch_overhead)
            check_resume(job)
        HydraConfig.instance().set_config(self.config)
        place(jobs, sweep_dir)

        todo = [j for j in jobs if j.status == "pending"]
        for job in todo:
            if job.gpus > len(devices):
                g, s = job.gpus, "" if job.gpus == 1 else "s"
                raise TornadoError(
                    f"gpus={g} asks for {g} GPU{s} but {len(devices)} are visible ({_visible_note(p.devices)}): "
                    f"{job.label}; add trainer.accelerator=cpu to run {g} CPU process{'' if g == 1 else 'es'} instead")
        for job in todo:
            move_aside(job)
        # no more slots than jobs to run: a huge max_parallel starts no idle worker threads, nor records them
        slots = min(slots, max(1, len(todo)))
        skipped = len(jobs) - len(todo)
        shared = [j for j in todo if j.threads_assigned or j.cfg.get("threads") is None]  # those given per_job
        if p.threads_per_job and shared and per_job * slots > cores:
            log.warning(f"hydra.launcher.threads_per_job={per_job} × {counted(slots, 'job')} at once = "
                        f"{per_job * slots} threads on {counted(cores, 'core')}: oversubscribed, the jobs slow each "
                        "other down (null: cores // jobs at once)")
        log.info(f"Launching {counted(len(todo), 'job')} locally ({skipped} already ok): {p.schedule} schedule, "
                 f"{slots} at once, {_threads_text(todo, per_job)}, GPUs {devices or 'none'}")

        plan: Dict[str, Any] = {"launcher": "local", "schedule": p.schedule, "slots": slots, "cores": cores,
                                "threads_per_job": per_job, "devices": devices, "skipped": skipped}
        lists: Optional[List[List[Job]]] = None
        if p.schedule == "static" and todo:
            lists = [[todo[i] for i in idx] for idx in partition([j.cost for j in todo], slots)]
            loads = [sum(j.cost for j in lst) for lst in lists]
            plan["predicted_cost"] = loads
            plan["predicted_imbalance"] = imbalance(loads)
            log.info(f"Static split over {slots} workers: predicted cost {[round(x, 2) for x in loads]} "
                     f"(imbalance {imbalance(loads):.1%})")

        # the plan, before any job starts: a report made meanwhile knows the jobs not started yet
        write_json(sweep_dir / "launcher.json", {**plan, "state": "running", "jobs": [job_record(j) for j in jobs]})
        t0 = time.time()
        if todo and not self._stop.is_set():
            self._run(todo, sweep_dir, module, devices, slots, lists)
        t1 = time.time()
        busy = [sum(j.end - j.start for j in todo if j.worker == w and j.start and j.end) for w in range(slots)]
        plan.update(state="finished", started=t0, finished=t1, wall_s=t1 - t0, achieved_busy_s=busy,
                    achieved_imbalance=imbalance(busy), jobs=[job_record(j) for j in jobs])
        if self._stop.signals:
            plan["interrupted"] = self._stop.name
        write_json(sweep_dir / "launcher.json", plan)
        self._restore_signals()  # a signal from here on (results.csv waits for its lock) stops the command
        if lists is not None:
            log.info(f"Static split achieved busy time per worker {[round(x, 1) for x in busy]} s "
                     f"(imbalance {imbalance(busy):.1%}) in {t1 - t0:.1f} s")
        if self._stop.signals:
            self._interrupted(jobs, sweep_dir)
        return finish(self.config, jobs, sweep_dir)

    def _interrupted(self, jobs: List[Job], sweep_dir: Path) -> None:
        """The end of a sweep stopped by a signal: results.csv, the summary, one error line, exit 128 + signal."""
        from tornado.collect import collect

        c = counts(jobs)
        try:
            collect(sweep_dir)
            where = f"results: {sweep_dir / 'results.csv'}"
        except (TornadoError, OSError) as e:
            where = f"no results.csv ({e})"
        print(f"sweep {sweep_dir}: {c['ok']} ok, {c['failed']} failed, {c['skipped']} skipped (already ok), "
              f"{c['pending']} not started; {where}", flush=True)
        of = " of this launch of its sweeper" if sweeper_decides(self.config) else ""
        print(f"error: sweep interrupted ({self._stop.name}): {c['ok'] + c['skipped']} of "
              f"{counted(len(jobs), 'job')}{of} done; {same_command(self.config, sweep_dir)} to resume",
              file=sys.stderr, flush=True)
        raise SystemExit(128 + self._stop.signals[0])

    # -- running --------------------------------------------------------------------------------------
    def _run(self, todo: List[Job], sweep_dir: Path, module: str, devices: List[str], slots: int,
             lists: Optional[List[List[Job]]]) -> None:
        pool = _DevicePool(devices)
        stop = self._stop
        lock = threading.Lock()
        running: Dict[int, int] = {}  # job number -> pid (= process group) of its process
        queue = deque(sorted(todo, key=lambda j: (-j.cost, j.num)))  # dynamic: largest estimated cost first
        passthrough = passthrough_overrides(self.config)
        warm: List[Optional[_WarmWorker]] = [None] * slots
        progress = Progress(self.p.progress)

        def next_job(w: int) -> Optional[Job]:
            with lock:
                if stop.is_set():
                    return None
                if lists is not None:
                    return lists[w].pop(0) if lists[w] else None
                return queue.popleft() if queue else None

        def work(w: int) -> None:
            while (job := next_job(w)) is not None:
                ids = pool.acquire(job.gpus, stop)
                if ids is None:
                    return
                try:
                    env = self._env(job, ids, sweep_dir)
                    if self.p.warm and warm[w] is None:
                        warm[w] = _WarmWorker(module, [str(m) for m in self.p.preload], env)
                    self._run_one(job, w, ids, env, job_args(module, job, passthrough), warm[w], running, lock, stop)
                except Exception as e:  # keep the sweep going; the job records what happened
                    job.end = time.time()
                    settle(job, None, reason=f"launcher could not run it: {type(e).__name__}: {e}")
                    if warm[w] is not None:
                        warm[w].close()
                        warm[w] = None
                finally:
                    pool.release(ids)
                if job.status == "failed" and not stop.signals:  # when stopping, the summary counts them
                    progress.note(logging.WARNING, f"{job.label} failed: {job.error}")
                elif job.status == "ok":
                    progress.note(logging.INFO, f"{job.label} ok {_times_text(job)}")

        workers = [threading.Thread(target=work, args=(w,), daemon=True) for w in range(slots)]
        for t in workers:
            t.start()
        t0 = time.time()
        grace_end: Optional[float] = None  # when running jobs get SIGKILL after a stop signal
        give_up: Optional[float] = None  # when a worker still waiting on a killed job is left behind
        try:
            while alive := [t for t in workers if t.is_alive()]:
                alive[0].join(0.2)
                now = time.time()
                if stop.signals and grace_end is None:
                    # The jobs run in their own sessions, so the terminal's Ctrl-C does not reach them: pass it on.
                    with lock:
                        n = len(running)
                    log.warning(f"{stop.name}: starting no more jobs; passing it on to {n} running, SIGKILL in "
                                f"{self.p.stop_grace_s:g} s (again to kill them now)")
                    self._kill(running, lock, stop.signals[0])
                    grace_end = now + max(0.0, float(self.p.stop_grace_s))
                if grace_end is not None and (now >= grace_end or len(stop.signals) > 1):
                    self._kill(running, lock, signal.SIGKILL)  # every round: also catches a job started just now
                    give_up = give_up or now + 10.0
                    if now >= give_up:
                        break
                c = counts(todo)
                if grace_end is not None:
                    progress.show(f"sweep {stop.name}: stopping {c['running']} running jobs")
                else:
                    progress.show(f"sweep: {c['ok'] + c['failed']}/{len(todo)} done ({c['ok']} ok, {c['failed']} "
                                  f"failed), {c['running']} running, {c['pending']} waiting, "
                                  f"{duration_text(now - t0)}{eta_text(todo, now)}")
            for job in todo:  # only after giving up on a worker: its job's process would not die
                if job.status == "running":
                    job.end = job.end or time.time()
                    settle(job, None, reason="interrupted")
        finally:
            progress.close()
            for wk in warm:
                if wk is not None:
                    wk.close()

    @staticmethod
    def _env(job: Job, ids: List[str], sweep_dir: Path) -> Dict[str, str]:
        env = dict(os.environ, TORNADO_SWEEP_DIR=str(sweep_dir), CUDA_VISIBLE_DEVICES=",".join(ids))
        if job.threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(job.threads)
        return env

    def _run_one(self, job: Job, w: int, ids: List[str], env: Dict[str, str], args: List[str],
                 warm: Optional[_WarmWorker], running: Dict[int, int], lock: threading.Lock,
                 stop: _Stop) -> None:
        job.dir.mkdir(parents=True, exist_ok=True)
        log_path = job.dir / "stdout.log"
        job.worker, job.devices = w, list(ids)
        with lock:
            if stop.is_set():
                return
            job.status, job.start = "running", time.time()
        if warm is not None:
            pid = warm.start(args[2:], env, log_path)  # args[:2] is `-m module`
        else:
            with open(log_path, "ab") as out:
                proc = subprocess.Popen([sys.executable, *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
            pid = proc.pid
        with lock:
            running[job.num] = pid
            if stop.is_set():
                _signal_group(pid, stop.signals[0] if stop.signals else signal.SIGTERM)
        rc = warm.wait() if warm is not None else proc.wait()
        job.end = time.time()
        with lock:
            running.pop(job.num, None)
        if stop.signals:
            self._settle_stopped(job, rc)
        else:
            settle(job, rc)

    @staticmethod
    def _settle_stopped(job: Job, rc: int) -> None:
        """A job that ended while the sweep stops for a signal: ok if it finished (its complete result.json says
        so, even if the signal then hit it on its way out); otherwise failed as `interrupted`, whatever it
        managed to record (it may have been killed with result.json `running`)."""
        res = read_result(job.dir) or {}
        own = str(res.get("error") or "") if res.get("status") == "failed" else ""
        if res.get("status") == "ok":
            job.status, job.result = "ok", res
        elif own.startswith("interrupted"):
            settle(job, rc)  # it recorded its interruption itself, e.g. `interrupted (SIGINT)`
        else:
            settle(job, rc, reason="interrupted")

    @staticmethod
    def _kill(running: Dict[int, int], lock: threading.Lock, sig: int) -> None:
        with lock:
            pids = list(running.values())
        for pid in pids:
            _signal_group(pid, sig)  # the job's own process group: DDP ranks too
