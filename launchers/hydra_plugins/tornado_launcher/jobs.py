"""What both launchers share: each job's config, folder, resources and command; skip on resume; failure records."""

import contextlib
import datetime as _dt
import logging
import os
import re
import shlex
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from tornado.cli import (closest, counted, hydra_quoted, missing_folders, override_text, python_command, shown_path,
                         typed_overrides, unwritable_text)
from tornado.errors import IN_USE, TornadoError, is_int, run_cli
from tornado.records import (SWEEP_LOCK, HeldElsewhere, config_hash, flatten, hold, load_result, read_result,
                             task_container, write_json)

log = logging.getLogger(__name__)

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
# hydra.* command-line overrides that belong to the sweep, not to one job's single run.
_SWEEP_ONLY = ("hydra.sweep", "hydra.sweeper", "hydra/sweeper", "hydra.launcher", "hydra/launcher",
               "hydra.run", "hydra.mode", "hydra.job.id", "hydra.job.num")


def sweep_folder(config: DictConfig) -> Path:
    """The sweep's folder; an empty `hydra.sweep.dir` (`=$DIR`, DIR unset), which would be the working directory, is
    refused."""
    folder = str(config.hydra.sweep.dir)
    if not folder.strip():
        raise TornadoError("hydra.sweep.dir=: must name a folder (leave the setting out for the default)")
    return Path(folder).absolute()


def hold_sweep(sweep_dir: Path) -> contextlib.ExitStack:
    """Lock the sweep folder for this launcher (the lock goes with the process): two sweeps in one folder at
    once would move each other's running jobs aside and write into each other's job folders."""
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        return hold(sweep_dir / SWEEP_LOCK)
    except HeldElsewhere as e:
        raise TornadoError(f"sweep folder {sweep_dir}: another sweep{f' (pid {e.pid})' if e.pid else ''} runs in "
                           "it; wait for it to end and run again, or give another hydra.sweep.dir", IN_USE) from None
    except OSError as e:  # as the command says it of the folders Hydra makes
        raise TornadoError(unwritable_text(e, sweep_dir)) from None


class TornadoLauncherBase(Launcher):
    """Hydra's launcher protocol; subclasses set `conf_cls` and implement `_launch`."""

    conf_cls: type

    def __init__(self, **params: Any) -> None:
        params = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in params.items()}
        self.p = run_cli(lambda: self._settings(params))  # a key added with `+hydra.launcher.x=`: one line, exit 2
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.task_function: Optional[TaskFunction] = None
        self._made: set[str] = set()

    def _settings(self, params: Dict[str, Any]) -> Any:
        names = list(self.conf_cls.__dataclass_fields__)
        for key in params:
            if key not in names:
                close = closest(key, names)
                raise TornadoError(f"hydra.launcher.{key}: no such setting"
                                   + (f" (did you mean hydra.launcher.{close}?)" if close else ""))
        return self.conf_cls(**params)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        # before Hydra writes the sweep's multirun.yaml: a second sweep in the folder is refused, and changes nothing
        folder = run_cli(lambda: sweep_folder(config))
        self._made = missing_folders(folder)  # outputs/multirun too, for a first sweep: a refused one leaves neither
        self._held = run_cli(lambda: hold_sweep(folder))

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        try:
            return run_cli(lambda: self._launch(job_overrides, initial_job_idx))
        except SystemExit as e:
            if e.code == 2:  # refused before any job: the folder goes, where it holds no more than our lock and
                sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()  # the basic sweeper's multirun.yaml
                with contextlib.suppress(OSError):
                    if {p.name for p in sweep_dir.iterdir()} <= {SWEEP_LOCK, "multirun.yaml"}:
                        (sweep_dir / "multirun.yaml").unlink(missing_ok=True)
                        (sweep_dir / SWEEP_LOCK).unlink(missing_ok=True)
                        sweep_dir.rmdir()
                        for parent in sweep_dir.resolve().parents:
                            if str(parent) not in self._made or any(parent.iterdir()):
                                break
                            parent.rmdir()
            raise

    def _launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> List[JobReturn]:
        raise NotImplementedError


class JobFailed(Exception):
    """The return value of a failed job, for sweepers that look at it."""


@dataclass
class Job:
    num: int
    overrides: List[str]
    cfg: DictConfig  # the composed config, hydra node included
    dir: Path
    gpus: int = 0  # GPUs the job needs
    procs: int = 1  # training processes (DDP ranks)
    threads: Optional[int] = None  # torch threads per process
    threads_assigned: bool = False  # chosen by the launcher, not by the job's config
    stale: bool = False  # its folder holds another config's run
    cost: float = 1.0  # estimated, for the static schedule
    config_hash: str = ""
    status: str = "pending"  # pending | running | ok | failed | skipped
    error: Optional[str] = None
    start: Optional[float] = None
    end: Optional[float] = None
    worker: Optional[int] = None
    devices: List[str] = field(default_factory=list)
    slurm_id: Optional[str] = None
    result: Optional[dict] = None
    earlier: Optional[dict] = None  # the result.json its folder held when planned (check_resume reads it once)

    @property
    def label(self) -> str:
        return f"job {self.num} [{' '.join(filter_overrides(self.overrides))}]"


def job_module(configured: Optional[str]) -> str:
    """The module each job runs as `python -m`: the configured one, else the one that started this sweep."""
    if configured:
        return configured
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        return spec.name.removesuffix(".__main__")
    raise TornadoError("hydra.launcher.module: not set and the sweep was not started with `python -m`; "
                       "set it, e.g. hydra.launcher.module=tornado.train")


def compose_jobs(hydra_context: Any, config: DictConfig, job_overrides: Sequence[Sequence[str]],
                 initial_job_idx: int) -> List[Job]:
    """Compose every job's config as Hydra's basic launcher does, and find its output folder."""
    sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
    jobs = []
    for i, overrides in enumerate(job_overrides):
        num = initial_job_idx + i
        cfg = hydra_context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.id = num
            cfg.hydra.job.num = num
        HydraConfig.instance().set_config(cfg)
        jobs.append(Job(num=num, overrides=list(overrides), cfg=cfg, dir=sweep_dir / str(cfg.hydra.sweep.subdir)))
    HydraConfig.instance().set_config(config)
    seen: Dict[str, Job] = {}
    base = Path(os.path.normpath(sweep_dir))
    for job in jobs:  # `hydra.sweep.subdir=x` would train every job in one folder, each over the one before
        folder = os.path.normpath(job.dir)
        other = seen.setdefault(folder, job)
        if other is not job or base not in Path(folder).parents:
            subdir = OmegaConf.to_container(config.hydra.sweep, resolve=False)["subdir"]
            why = (f"jobs {other.num} and {job.num} would share the folder {folder}" if other is not job
                   else f"job {job.num}'s folder {folder} is not one inside the sweep's")
            raise TornadoError(f"hydra.sweep.subdir={subdir}: {why}; it must name one folder per "
                               "job inside hydra.sweep.dir (the default: ${hydra.job.num})")
    return jobs


def sweeper_decides(config: DictConfig) -> bool:
    """Whether a sweeper other than Hydra's basic one (Optuna, Nevergrad, ...) runs the sweep: it launches batch
    after batch into one folder and chooses the next from what each job returns (`optimize_metric`)."""
    return str(config.hydra.sweeper.get("_target_")) != BASIC_SWEEPER


def check_settings(config: DictConfig, jobs: Sequence[Job], module: str) -> None:
    """Run the job module's `validate(cfg)`, where it has one, on every job's settings: a bad value in one job of
    a grid is refused before any job starts or is queued, not on a node after the wait. Under a sweeper that
    chooses by the jobs' returns (`sweeper_decides`), a validation score to return without a validation split is
    refused too: every job would train only to return nothing."""
    main = sys.modules.get("__main__")
    owner = main if getattr(getattr(main, "__spec__", None), "name", None) == module else sys.modules.get(module)
    validate = getattr(owner, "validate", None)
    try:
        for job in jobs:
            HydraConfig.instance().set_config(job.cfg)
            try:
                if validate is not None:
                    validate(OmegaConf.masked_copy(job.cfg, [k for k in job.cfg if k != "hydra"]))
            except TornadoError as e:
                raise TornadoError(f"{job.label}: {e}", e.code) from None
            metric = str(job.cfg.get("optimize_metric") or "")
            if (sweeper_decides(config) and metric.startswith("val_")
                    and OmegaConf.select(job.cfg, "data.split.val_fraction") == 0):
                raise TornadoError(f"{job.label}: optimize_metric={metric}: no validation split to score it on "
                                   "(data.split.val_fraction=0), so the sweeper would get nothing; give "
                                   f"data.split.val_fraction > 0, or optimize_metric={metric[4:]} (test: optimistic)")
    finally:
        HydraConfig.instance().set_config(config)


def gpu_request(cfg: DictConfig) -> tuple[Any, bool]:
    """(the job's `gpus` value, whether trainer.accelerator=cpu forces CPU processes)."""
    gpus = cfg.get("gpus", 0)
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="auto") or "auto").lower()
    return gpus, accelerator == "cpu"


def as_count(gpus: Any, where: str) -> int:
    if not is_int(gpus):  # 1.5 or true is no GPU count (int() would make it 1)
        raise TornadoError(f"{where}: gpus={gpus!r} is not a whole number or auto")
    n = int(gpus)
    if n < 0:
        raise TornadoError(f"{where}: gpus={n} is negative")
    return n


def set_override(job: Job, key: str, value: Any) -> None:
    """Set a config key in the composed config and in the job's overrides (so the job composes the same)."""
    job.overrides = [o for o in job.overrides if o.lstrip("+~").split("=", 1)[0] != key]
    job.overrides.append(f"{key}={value}")
    with open_dict(job.cfg):
        OmegaConf.update(job.cfg, key, value, merge=False)


def assign_threads(job: Job, per_job: Optional[int]) -> None:
    """Threads per process: the job's own `threads` if set, else its share of `per_job` (passed as threads=N)."""
    own = job.cfg.get("threads") if "threads" in job.cfg else None
    if own is not None:
        job.threads = int(own)
    elif per_job:
        job.threads = max(1, per_job // job.procs)
        if "threads" in job.cfg:
            set_override(job, "threads", job.threads)
            job.threads_assigned = True


def same_config(job: Job, old: dict) -> bool:
    """Whether an earlier result is of this job's config, up to the thread count the launcher chose then."""
    if old.get("config_hash") == job.config_hash:
        return True
    before = (old.get("hparams") or {}).get("threads")
    if not job.threads_assigned or before is None:
        return False
    data = task_container(job.cfg)
    data["threads"] = before
    return config_hash(data) == old.get("config_hash")


def keep_threads(job: Job, old: dict, folder: Path) -> None:
    """A job that goes on from a checkpoint in `folder` keeps the thread count the launcher gave it then: on a
    CPU the count sets the order of its sums, and a resumed run matches one never stopped only with the same."""
    before = (old.get("hparams") or {}).get("threads")
    if (job.threads_assigned and is_int(before) and int(before) != job.threads and job.cfg.get("resume", True)
            and (folder / "checkpoints" / "last.ckpt").exists()):
        log.info(f"{job.label}: goes on from its checkpoint with the {counted(int(before), 'thread')} it had, not "
                 f"{job.threads}")
        job.threads = int(before)
        set_override(job, "threads", job.threads)
        job.config_hash = config_hash(job.cfg)


def finished_ok(res: Optional[dict]) -> bool:
    """A run to skip on resume: its result.json says ok and holds its metrics (one edited to ok without them, or
    cut short, is run again)."""
    metrics = (res or {}).get("metrics")
    return (res or {}).get("status") == "ok" and isinstance(metrics, dict) and bool(metrics)


def check_resume(job: Job) -> None:
    """Hash the job's config; mark it skipped if its folder already holds an ok result of the same config,
    or stale if it holds a result of another config (the grid changed). Threads the launcher chose do
    not count: a sweep resumed with another max_parallel keeps its finished jobs."""
    HydraConfig.instance().set_config(job.cfg)
    job.config_hash = config_hash(job.cfg)
    old = job.earlier = read_result(job.dir)
    if old is None:
        return
    if not same_config(job, old):
        job.stale = True
    elif finished_ok(old):
        job.status, job.result = "skipped", old
    else:
        keep_threads(job, old, job.dir)
        if old.get("status") == "ok":
            log.warning(f"{job.label}: {job.dir / 'result.json'} says ok but holds no metrics; running it again")


def place(jobs: Sequence[Job], sweep_dir: Path) -> None:
    """Find each job's folder when its own (its number's) is empty or holds another config's run: a folder of the
    sweep that holds this config's run (skipped if ok, else resumed there), else a new number where its own holds
    a finished run or one such a job took. So a grid run again in another order, shrunk or extended keeps every
    finished run; only another config's unfinished run is moved aside when its folder's job runs (`move_aside`).
    Call after `check_resume`."""
    folders = [d for d in sweep_dir.iterdir() if d.is_dir() and not d.name.startswith(".")]
    read = {j.dir: j.earlier for j in jobs}  # as check_resume read them: each result.json read once
    held = {d: r for d in sorted(folders, key=lambda d: (not d.name.isdigit(), len(d.name), d.name))
            if (r := read[d] if d in read else read_result(d)) is not None}
    homeless = {id(j) for j in jobs if j.stale or j.earlier is None}  # no run of its own in its folder
    taken = {j.dir for j in jobs if id(j) not in homeless}
    found: Dict[int, Path] = {}
    for j in (j for j in jobs if id(j) in homeless):
        same = [d for d in held if d not in taken and same_config(j, held[d])]
        if same:
            found[id(j)] = min(same, key=lambda d: not finished_ok(held[d]))
            taken.add(found[id(j)])
    numbers = [int(d.name) for d in folders if d.name.isdigit()] + [j.num for j in jobs]
    for j in jobs:
        d = found.get(id(j))
        if d is not None:
            j.dir, j.stale = d, False
            j.num = int(d.name) if d.name.isdigit() else j.num
            if finished_ok(held[d]):
                j.status, j.result = "skipped", held[d]
            else:
                keep_threads(j, held[d], d)
        elif j.dir in found.values() or (j.stale and held.get(j.dir, {}).get("status") == "ok"):
            j.num = max(numbers) + 1
            numbers.append(j.num)
            j.dir, j.stale = sweep_dir / str(j.num), False
    if found:
        log.info(f"{counted(len(found), 'configuration')} of this launch found in other job folders of the sweep")


def move_aside(job: Job) -> Optional[Path]:
    """Move a stale job folder to .replaced/, so the job never resumes from another config's checkpoint;
    returns where it went (None: nothing moved)."""
    if not job.stale or not job.dir.exists():
        return None
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    aside = job.dir.parent / ".replaced" / f"{job.dir.name}-{stamp}-{os.getpid()}"
    aside.parent.mkdir(parents=True, exist_ok=True)
    job.dir.rename(aside)
    job.stale = False
    log.warning(f"{job.label}: {job.dir} held another config's run; moved to {aside}")
    return aside


def job_cost(cfg: DictConfig, batch_overhead: float) -> float:
    """Estimated cost ~ epochs * data_multiplier * (1 + c / batch_size): samples seen, plus per-step overhead."""
    def num(key: str, default: float) -> float:
        try:
            return float(cfg.get(key, default))
        except (TypeError, ValueError):
            return default
    return num("epochs", 1) * num("data_multiplier", 1) * (1.0 + batch_overhead / max(num("batch_size", 128), 1.0))


def same_command(config: DictConfig, sweep_dir: Path) -> str:
    """"run the same command again", naming the sweep's folder where the command did not (the default folder is
    new on every run), quoted for Hydra and for the shell where needed."""
    if any(str(o).lstrip("+~").split("=", 1)[0] == "hydra.sweep.dir" for o in typed_overrides(config.hydra)):
        return "run the same command again"
    return f"run the same command with {override_text('hydra.sweep.dir', sweep_dir)}"


def passthrough_overrides(config: DictConfig) -> List[str]:
    """The user's hydra.* overrides that make sense for one job's single run."""
    out = []
    for o in typed_overrides(config.hydra):
        key = str(o).lstrip("+~").split("=", 1)[0]
        if not key.startswith(_SWEEP_ONLY):
            out.append(str(o))
    return out


def job_args(module: str, job: Job, passthrough: Sequence[str]) -> List[str]:
    """Arguments after the Python executable: `-m module overrides... hydra.run.dir=JOB_DIR`."""
    return ["-m", module, *job.overrides, *passthrough, f"hydra.run.dir={hydra_quoted(str(job.dir))}"]


def log_tail(path: Path, limit: int = 300, having: str = "") -> str:
    """The last non-empty line of a log (with `having`, the last one holding it), shortened: usually the exception
    that ended the job."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if having in ln and ln.strip()]
    except OSError:
        return ""
    return lines[-1][:limit] if lines else ""


def describe_exit(rc: Optional[int], log_path: Optional[Path] = None) -> str:
    if rc is None:
        text = "no exit code"
    elif rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        text = f"exit code {rc} (killed by {name}{', e.g. out of memory' if name == 'SIGKILL' else ''})"
    else:
        text = f"exit code {rc}"
    tail = log_tail(log_path) if log_path else ""
    if re.match(r"\[[^]]*\]\[[^]]*\]\[(DEBUG|INFO)\]", tail):  # a progress line of the job's log: no cause
        tail = ""
    return f"{text}: {tail}" if tail else text


def _iso(t: Optional[float]) -> Optional[str]:
    return None if t is None else _dt.datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")


def settle(job: Job, rc: Optional[int], reason: Optional[str] = None) -> None:
    """Decide a finished job's status from its exit code and result.json; record failures the job couldn't."""
    path = job.dir / "result.json"
    try:
        res, fault = load_result(path), ""
    except FileNotFoundError:
        res, fault = None, f"result.json missing: {path}"
    except (OSError, ValueError) as e:  # the error names the file
        res, fault = None, str(e)
    if rc == 0 and reason is None and res and res.get("status") == "ok":
        job.status, job.result = "ok", res
        return
    job.status = "failed"
    own = res.get("error") if res and res.get("status") == "failed" else None
    if own and not reason:
        job.error, job.result = str(own), res
        return
    if reason:
        job.error = f"{reason} ({own})" if own else reason
    elif rc == 0:
        said = f"result.json says {res.get('status')!r}" if res is not None else fault
        job.error = f"exit code 0 but {said}"
    else:
        job.error = describe_exit(rc, job.dir / "stdout.log")
    if rc == IN_USE:  # another process trains in its folder (and keeps its result.json, and writes the same log)
        refused = log_tail(job.dir / "stdout.log", having="in use by another training process")
        job.error = f"exit code {rc}: {refused}" if refused else job.error
        return
    rec = dict(res or {})
    rec.update(status="failed", error=job.error, config_hash=job.config_hash, overrides=list(job.overrides),
               output_dir=str(job.dir), finished=_iso(job.end or time.time()),
               host=rec.get("host") or socket.gethostname())
    rec.setdefault("started", _iso(job.start))
    if not rec.get("hparams"):
        rec["hparams"] = flatten(task_container(job.cfg))
    write_json(job.dir / "result.json", rec)
    job.result = rec


def job_return(job: Job) -> JobReturn:
    task_cfg = OmegaConf.create(task_container(job.cfg)) if job.status != "pending" else None
    ret = JobReturn(overrides=list(job.overrides), cfg=task_cfg, hydra_cfg=OmegaConf.create({"hydra": job.cfg.hydra}),
                    working_dir=str(job.dir), task_name=str(job.cfg.hydra.job.name))
    if job.status == "failed":
        ret.status, ret.return_value = JobStatus.FAILED, JobFailed(f"{job.label}: {job.error}")
    else:
        ret.status = JobStatus.COMPLETED
        metric = job.cfg.get("optimize_metric")
        metrics = (job.result or {}).get("metrics")
        metrics = metrics if isinstance(metrics, dict) else {}  # a hand-edited result.json: no value, no traceback
        ret.return_value = metrics.get(metric) if metric else None
        if metric and ret.return_value is None and job.status in ("ok", "skipped"):
            log.warning(f"{job.label}: optimize_metric={metric}: not in its result.json; the sweeper gets None")
    return ret


class Progress:
    """One refreshed status line on a terminal (silent otherwise); `note` logs a line above it."""

    def __init__(self, enabled: bool) -> None:
        self.on = enabled and sys.stderr.isatty()
        self.text = ""
        self.lock = threading.Lock()

    def _draw(self, text: str) -> None:
        sys.stderr.write("\r\033[K" + text)
        sys.stderr.flush()

    def show(self, text: str) -> None:
        with self.lock:
            if self.on and text != self.text:
                self._draw(text)
                self.text = text

    def note(self, level: int, msg: str) -> None:
        with self.lock:
            if self.on and self.text:
                self._draw("")
            log.log(level, msg)
            sys.stdout.flush()
            if self.on and self.text:
                self._draw(self.text)

    def close(self) -> None:
        with self.lock:
            if self.on and self.text:
                self._draw("")
            self.text = ""


def duration_text(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def time_model(done: Sequence[Job]) -> tuple[float, float]:
    """(fixed, per_cost): a job takes about fixed + per_cost × cost seconds, fitted on the finished jobs by least
    squares where their costs differ (fixed: each process's start-up, which a short job is mostly made of), else
    all per cost."""
    cost, secs = [j.cost for j in done], [j.end - j.start for j in done]
    mc, ms = sum(cost) / len(done), sum(secs) / len(done)
    spread = sum((c - mc) ** 2 for c in cost)
    if spread > 0:
        per_cost = sum((c - mc) * (t - ms) for c, t in zip(cost, secs)) / spread
        if per_cost > 0 and ms - per_cost * mc >= 0:
            return ms - per_cost * mc, per_cost
    return 0.0, ms / mc


def eta_text(jobs: Sequence[Job], now: float) -> str:
    """', about T left': the estimated time of the jobs still to run (`time_model`), less what the running ones
    have done, over the jobs running at once; '' until a job has finished. A job handed out but not started yet
    (queued in SLURM: running, no start) counts as still to run."""
    done = [j for j in jobs if j.status == "ok" and j.start is not None and j.end is not None]
    if sum(j.cost for j in done) <= 0:
        return ""
    fixed, per_cost = time_model(done)
    running = [j for j in jobs if j.status == "running" and j.start is not None]
    work = sum(fixed + per_cost * j.cost for j in jobs
               if j.status == "pending" or (j.status == "running" and j.start is None))
    work += sum(max(0.0, fixed + per_cost * j.cost - (now - j.start)) for j in running)
    if not running and not work:
        return ""
    return f", about {duration_text(work / max(1, len(running)))} left"


def counts(jobs: Sequence[Job]) -> dict[str, int]:
    out = {k: 0 for k in ("ok", "failed", "skipped", "running", "pending")}
    for j in jobs:
        out[j.status] += 1
    return out


def finish(config: DictConfig, jobs: Sequence[Job], sweep_dir: Path) -> List[JobReturn]:
    """Collect results.csv, print the summary, and fail the command if any job failed."""
    from tornado.collect import collect

    c = counts(jobs)
    for j in jobs:
        if j.status == "failed":
            print(f"failed: {j.label}: {j.error} ({j.dir})", file=sys.stderr)
    try:
        collect(sweep_dir)
        where = f"results: {shown_path(sweep_dir / 'results.csv')}"
    except TornadoError as e:
        where = f"no results.csv ({e})"
    batch = f" (this launch of its sweeper: {counted(len(jobs), 'job')})" if sweeper_decides(config) else ""
    print(f"sweep {shown_path(sweep_dir)}{batch}: {c['ok']} ok, {c['failed']} failed, {c['skipped']} skipped "
          f"(already ok); {where}", flush=True)
    if c["ok"] + c["skipped"]:
        print(f"tables, plots and report.html: {python_command()} -m tornado.report "
              f"{shlex.quote(shown_path(sweep_dir))}", flush=True)
    returns = [job_return(j) for j in jobs]
    # Hydra's basic sweeper turns a failed job into a traceback; the summary above already says it all.
    if c["failed"] and not sweeper_decides(config):
        sys.stderr.flush()
        raise SystemExit(1)
    return returns


def job_record(j: Job) -> dict:
    return {"num": j.num, "dir": j.dir.name, "overrides": j.overrides, "status": j.status, "error": j.error,
            "gpus": j.gpus, "procs": j.procs, "threads": j.threads, "cost": round(j.cost, 4),
            "config_hash": j.config_hash,
            "start": j.start, "end": j.end, "worker": j.worker, "devices": j.devices, "slurm_id": j.slurm_id}
