"""One training run with Lightning: `train(cfg, output_dir)` prepares the data, builds the module and the Trainer
(its callbacks: epoch clock, per-epoch validation scores, early stopping, checkpoints), fits, scores the test set
and writes the run's record. `tornado.train` (the command) loads it for a run only: a sweep's launcher, which
checks and starts its jobs, never loads Lightning.
"""
from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import io
import logging
import math
import os
import platform
import re
import signal
import socket
import sys
import time
import types
import warnings
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pytorch_lightning.callbacks import Checkpoint, TQDMProgressBar

import tornado
from tornado import records
from tornado.cli import counted, override_text, shown_path, typed_overrides
from tornado.data import find_files
from tornado.datamodule import StormDataModule, load_split
from tornado.errors import IN_USE, Terminated, TornadoError, on_sigterm, shown, stop_if_signalled
from tornado.metrics import VAL_SCORES, best_csi_threshold, forecast_scores, roc_auc
from tornado.model import StormModule
from tornado.prepare import ensure_prepared
from tornado.settings import check_complete, data_keys_named, resolve_devices, validate

log = logging.getLogger("tornado.train")  # the command's logger: these are its run's lines

# Lightning's start-up chatter (device summary, tips, the srun hint) says nothing about this run.
logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
# Each DDP rank's "Initializing distributed: GLOBAL_RANK ..." (and, on GPUs, "LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES")
# says only that the run started as asked; their warnings and errors still show.
for _name in ("lightning_fabric.utilities.distributed", "pytorch_lightning.accelerators.cuda"):
    logging.getLogger(_name).setLevel(logging.WARNING)
# Its "Received SIGTERM" lands in the middle of the progress bar; the run's own error line says it once.
logging.getLogger("pytorch_lightning.trainer.connectors.signal_connector").setLevel(logging.WARNING)
# (A resumed run's CSV log: `resume_path` has moved the old metrics.csv aside, nothing is deleted. The epoch
# sums the module logs are already reduced over the ranks: no `sync_dist` needed.)
for _msg in (".*srun.*", ".*LeafSpec.*", ".*does not have many workers.*", ".*smaller than the logging interval.*",
             ".*exists and is not empty.*", ".*sync_dist=True.*"):
    warnings.filterwarnings("ignore", message=_msg)

# TensorBoard's writer imports TensorFlow when it is installed (the optional `peer` extra), which slows torch
# 1.5-2x in the same process; its `notf` switch makes it use the stub it ships for machines without TensorFlow.
sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))


def _switch(value, default: bool) -> bool:
    return default if value == "auto" else bool(value)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


_KEPT = False  # whether keep_memory(True) changed this process's allocator


def keep_memory(on: bool) -> bool:
    """glibc's malloc: with `on`, serve large buffers from the heap and keep what is freed.

    By default every buffer over 32 MB (and, until glibc adapts, many smaller ones) is a fresh mapping whose
    pages fault in on first touch and go back to the system when freed: on a CPU each training step pays that
    again for its activations. Process-wide. `on=False` leaves a process that was never switched alone (glibc's
    adaptive defaults); after `on=True` it restores fixed settings close to what they adapt to (mappings
    above 32 MB, trimming above 64 MB). Returns False where there is no glibc (nothing changed).
    """
    global _KEPT
    if not on and not _KEPT:
        return True
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold, m_mmap_max = -1, -3, -4
    if on:
        ok = mallopt(m_mmap_max, 0) == 1 and mallopt(m_trim_threshold, 1 << 30) == 1
    else:
        ok = (mallopt(m_mmap_max, 65536) == 1 and mallopt(m_mmap_threshold, 32 << 20) == 1
              and mallopt(m_trim_threshold, 64 << 20) == 1)
    _KEPT = on and ok
    return ok


BF16_MIN_BATCH = 1024


def fast_switches(cfg: DictConfig, accelerator: str, devices: int) -> dict:
    """The speed switches resolved for this device (see docs/performance.md)."""
    gpu = accelerator == "gpu"
    f = cfg.fast
    # Measured on an H200 (BENCHMARKS.md): bf16 autocast is 1.6x slower at 128 per step (cast overhead on
    # tiny convolutions) and 1.2x faster at 2048, so on a GPU `auto` turns it on for large per-device batches
    # only. On a CPU with native bf16 (oneDNN) it is about 1.3-1.4x faster at 128 and 2048 alike.
    big_batch = cfg.batch_size // max(1, devices) >= BF16_MIN_BATCH
    return {
        "resident": f.resident if f.resident == "auto" else bool(f.resident),
        "storage": str(f.storage),
        "channels_last": _switch(f.channels_last, True),
        "bf16": _switch(f.bf16, big_batch if gpu else cpu_has_bf16()),
        "compile": _switch(f.compile, False),
        "cuda_graph": _switch(f.cuda_graph, gpu and devices == 1) and gpu,
        "keep_memory": _switch(f.get("keep_memory", "auto"), not gpu),
        "cudnn_benchmark": _switch(f.get("cudnn_benchmark", "auto"), gpu),
    }


class _EpochSkill(pl.Callback):
    """ROC AUC on the validation split after every epoch (rank 0): how soon a run reaches skill. After the
    epoch clock has stopped, and left out of wall_s; kept in checkpoints, like the epoch times.

    With `patience`, training stops once the score has not improved on its best for that many epochs (the
    decision is rank 0's, sent to every rank), and the best epoch's weights are kept (rank 0, in checkpoints
    too) to be scored. A resumed run that had stopped so stops again at once; a larger patience lets it go on."""

    def __init__(self, x: torch.Tensor, y: np.ndarray, patience: int | None = None):
        self.x, self.y = x, y
        self.patience = patience
        self.scores: dict[int, float] = {}
        self.eval_s = 0.0  # this process's scoring time
        self.stopped = False
        self.best_state: dict[str, torch.Tensor] | None = None  # the network's weights at the best epoch
        self.last: tuple[int, np.ndarray, float] | None = None  # this session's last epoch: probabilities, score

    def best_epoch(self) -> int | None:
        """The epoch (from 1) of the highest score so far, the first of ties."""
        return records.best_epoch([{"epoch": e, "val_roc_auc": v} for e, v in self.scores.items()])

    def _stale(self) -> bool:
        best = self.best_epoch()
        return self.patience is not None and best is not None and max(self.scores) + 1 - best >= self.patience

    def on_train_start(self, trainer, pl_module):
        if self._stale():  # scores restored from a checkpoint, on every rank alike
            trainer.should_stop = self.stopped = True

    def state_dict(self) -> dict:
        return {"val_roc_auc": dict(self.scores), "best_state": self.best_state}

    def load_state_dict(self, state_dict: dict) -> None:
        self.scores = {int(k): v for k, v in state_dict.get("val_roc_auc", {}).items()}
        self.best_state = state_dict.get("best_state")

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            t0 = time.perf_counter()
            self.x = self.x.to(pl_module.device)  # once: a no-op after the first epoch
            prob = probabilities(pl_module.net, self.x)
            score = roc_auc(prob, self.y)
            self.scores[trainer.current_epoch] = score
            self.last = (trainer.current_epoch, prob, score)
            pl_module.log("val_roc_auc", score, on_epoch=True, rank_zero_only=True)  # CSV and TensorBoard
            if self.patience is not None and self.best_epoch() == trainer.current_epoch + 1:
                self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.net.state_dict().items()}
            self.eval_s += time.perf_counter() - t0
        if self.patience is not None and trainer.strategy.broadcast(self._stale(), src=0):
            trainer.should_stop = self.stopped = True


TIMES = ("wall_s", "data_wait_s", "epoch_scoring_s", "run_s")  # run_s: the whole job's, start-up included


class _Clock(pl.Callback):
    """Training time, kept in checkpoints: a resumed run counts its earlier sessions' too.

    Seconds per epoch, and as of each epoch saved: the training time (from the start of fit to that epoch's end,
    the validation scoring left out), the part of it spent waiting for data, and the scoring time, each summed
    over the sessions, and the whole job's time to that checkpoint. The record reports them as of the last epoch
    saved, so a restart with nothing left to train reports the same times, and a run stopped midway those of the
    epochs it kept."""

    def __init__(self, dm: StormDataModule | None = None, skill: _EpochSkill | None = None):
        self.dm, self.skill = dm, skill
        self.run_start = time.perf_counter()  # this session's: `train` sets it to its own start
        self.epoch_s: list[float] = []
        self.restored = 0  # epochs timed before a resume
        self.before = dict.fromkeys(TIMES, 0.0)  # the earlier sessions' totals
        self.saved: dict = {"epoch_s": [], **self.before}  # as of the last epoch saved
        self.fit_start = time.perf_counter()  # `train` sets it as it calls fit
        self._t0 = 0.0
        self._end = (0.0, 0.0)  # this session's training time and data wait at the last epoch's end

    def state_dict(self) -> dict:
        # called as an epoch's checkpoint is written, after that epoch's scoring
        wall, wait = self._end
        scoring = self.skill.eval_s if self.skill is not None else 0.0
        self.saved = {"epoch_s": list(self.epoch_s), "wall_s": self.before["wall_s"] + wall,
                      "data_wait_s": self.before["data_wait_s"] + wait,
                      "epoch_scoring_s": self.before["epoch_scoring_s"] + scoring,
                      "run_s": self.before["run_s"] + time.perf_counter() - self.run_start}
        return {"epoch_s": list(self.epoch_s), "times": {k: self.saved[k] for k in TIMES}}

    def load_state_dict(self, state_dict: dict) -> None:
        self.epoch_s = list(state_dict.get("epoch_s", []))
        self.restored = len(self.epoch_s)
        # a checkpoint from before these totals: its epochs' times
        times = state_dict.get("times", {})
        self.before = {**dict.fromkeys(TIMES, 0.0), "wall_s": sum(self.epoch_s), **times}
        if "run_s" not in times:  # a checkpoint from before it: its training time
            self.before["run_s"] = self.before["wall_s"]
        self.saved = {"epoch_s": list(self.epoch_s), **self.before}

    def _sync(self, pl_module):
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_epoch_start(self, trainer, pl_module):
        self._sync(pl_module)
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self._sync(pl_module)
        now = time.perf_counter()
        self.epoch_s.append(now - self._t0)
        scoring = self.skill.eval_s if self.skill is not None else 0.0  # the earlier epochs': this one's comes next
        self._end = (now - self.fit_start - scoring, self.dm.data_wait_s if self.dm is not None else 0.0)


class _EpochSeed(pl.Callback):
    """Seeds torch's global generator (dropout) at the start of every epoch from the run's seed, the epoch and
    the rank: Lightning's checkpoints do not hold that generator's state, so without this a resumed run would
    draw its later epochs' dropout masks from `seed_everything`'s fresh state and part from an uninterrupted
    run of the same seed. (Data order and live augmentation have their own per-epoch generators.)"""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer, pl_module):
        torch.manual_seed(((self.seed * 1_000_003 + trainer.current_epoch) * 64 + 33 + trainer.global_rank)
                          % 2 ** 63)


# the settings that make a run what it is: a checkpoint resumes only a run that has the same ones
IDENTITY = ("data", "augment", "model", "batch_size", "lr", "data_multiplier", "augmentation", "seed")


def identity(task: dict) -> dict:
    flat = records.flatten({k: task[k] for k in IDENTITY if k in task})
    flat.pop("data.out_dir", None)
    return flat


def numerics(accelerator: str, devices: int, fast: dict, dm: StormDataModule) -> dict:
    """What changes a run's numbers, for the same settings, data and seed, without being part of its identity
    (a run may resume with other values): the thread count on a CPU (the order of its sums), whether the data
    are resident (the batch order) and the speed switches that change the arithmetic."""
    return {"accelerator": accelerator, "devices": devices,
            "threads": torch.get_num_threads() if accelerator == "cpu" else None, "resident": dm.is_resident,
            **{k: fast[k] for k in ("storage", "channels_last", "bf16", "compile")}}


class _LastCheckpoint(Checkpoint):
    """checkpoints/last.ckpt after every epoch, written whole (temp file, then rename) and stamped with the
    run's identity and `numerics`. A `Checkpoint` callback, so it runs after the module's own epoch end: an
    epoch whose loss diverged is refused there and never saved. Notes an interruption (Ctrl-C, SIGTERM) for
    the error line. `before`: the numerics of the checkpoint a session resumes from, to warn where they differ."""

    def __init__(self, path: Path, ident: dict, numerics=None, before: dict | None = None):
        self.path, self.ident = path, ident
        self.numerics, self.before = numerics, before
        self.epochs_saved = 0
        self.interrupted: str | None = None

    def on_train_start(self, trainer, pl_module):
        if not self.before or self.numerics is None or not trainer.is_global_zero:
            return
        now = self.numerics()
        diff = [f"{k} {shown(self.before[k])} there, {shown(now[k])} here" for k in now if k in self.before
                and self.before[k] != now[k]]
        if diff:
            log.warning("resumed from %s with %s: the epochs from here on will not match a run never stopped "
                        "bit for bit", shown_path(self.path), ", ".join(diff))

    def on_train_epoch_end(self, trainer, pl_module):
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        trainer.save_checkpoint(tmp, weights_only=False)  # every rank calls it; rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        self.epochs_saved = trainer.current_epoch + 1

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint["tornado"] = {"identity": self.ident,
                                 **({"numerics": self.numerics()} if self.numerics is not None else {})}

    def on_exception(self, trainer, pl_module, exception):
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException):
            self.interrupted = "SIGTERM"
        elif isinstance(exception, KeyboardInterrupt):
            self.interrupted = "SIGINT"


def prepared(cfg: DictConfig) -> Path:
    """The run's HDF5 file (built if missing). prepare's errors name its own keys (`split.val_fraction`); here
    they are `data.` keys."""
    with data_keys_named(cfg):
        return ensure_prepared(cfg.data, cfg.augment)


def keep_best(module: StormModule, skill: _EpochSkill | None, path: Path) -> int | None:
    """With `patience`: the best epoch's weights into the module (to be scored) and into `path` (best.ckpt,
    for predict); returns that epoch (from 1). Without: removes a best.ckpt an earlier run left there."""
    if skill is None or skill.patience is None or skill.best_state is None:
        path.unlink(missing_ok=True)
        return None
    epoch = skill.best_epoch()
    module.net.load_state_dict(skill.best_state)
    buf = io.BytesIO()  # what StormModule.load_from_checkpoint reads: weights and hyperparameters
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": pl.__version__, "epoch": epoch - 1}, buf)
    records.write_atomic(path, buf.getvalue())
    return epoch


def resume_path(last: Path, ident: dict, epochs: int) -> tuple[str | None, int, dict | None]:
    """`last` if it holds a checkpoint of this run to resume, the epochs it holds and its `numerics` (None: a
    checkpoint from before they were kept); refuses a checkpoint that is unreadable, of other settings
    (resuming it would silently continue another experiment) or past `epochs`."""
    if not last.exists():
        return None, 0, None
    try:
        ckpt = torch.load(last, map_location="cpu", weights_only=False)
        stored = ckpt.get("tornado", {}).get("identity")
        kept = ckpt.get("tornado", {}).get("numerics")
        done = int(ckpt["epoch"]) + 1
    except Exception as e:
        reason = f"{type(e).__name__}: {e}".splitlines()[0][:200]
        raise TornadoError(f"{last}: not a readable checkpoint ({reason}); delete it, or resume=false to start "
                           "over") from None
    if stored is not None and stored != ident:
        diff = sorted(k for k in set(stored) | set(ident) if stored.get(k) != ident.get(k))
        shown = ", ".join(f"{k} {stored.get(k)!r} there, {ident.get(k)!r} here" for k in diff[:3])
        more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
        raise TornadoError(f"{last}: a checkpoint of other settings ({shown}{more}); use another "
                           "hydra.run.dir, or resume=false to start over")
    if done > epochs:
        raise TornadoError(f"{last}: {counted(done, 'epoch')} done, more than epochs={epochs}; use epochs={done} or "
                           "more to go on, another hydra.run.dir, or resume=false to start over")
    return str(last), done, kept if isinstance(kept, dict) else None


def log_aside(csv_log: Path, done: int) -> Path | None:
    """Moves the earlier session's CSV log aside (Lightning's CSVLogger would delete it), named by the epochs it
    holds; returns where it went."""
    if not csv_log.exists():
        return None
    aside = csv_log.with_name(f"metrics.epochs-{_logged_epochs(csv_log, done)}.csv")
    os.replace(csv_log, aside)
    return aside


def logs_aside(out: Path) -> Path | None:
    """`resume=false` in a folder that holds a run: its CSV and TensorBoard logs (which the new run's would join)
    go to out/.replaced/<time>/; returns where."""
    old = [out / name for name in ("csv", "tb") if (out / name).exists()]
    if not old:
        return None
    aside = out / ".replaced" / dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    aside.mkdir(parents=True)
    for path in old:
        os.replace(path, aside / path.name)
    log.info("resume=false: the earlier run's logs moved to %s", shown_path(aside))
    return aside


def _logged_epochs(csv_log: Path, done: int) -> str:
    """'first-last' of the epochs (from 1) a CSV log holds (a log moved aside at an earlier resume holds the ones
    before)."""
    import csv

    try:
        with open(csv_log, newline="") as f:
            epochs = sorted({int(float(r["epoch"])) for r in csv.DictReader(f) if r.get("epoch")})
    except (OSError, ValueError, csv.Error):  # a log edited or cut short: named by the checkpoint instead
        epochs = []
    return f"{epochs[0] + 1}-{epochs[-1] + 1}" if epochs else f"1-{done}"


def _versions() -> dict:
    import h5py
    import hydra as hydra_pkg
    import torchmetrics

    return {"tornado": tornado.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "pytorch_lightning": pl.__version__, "torchmetrics": torchmetrics.__version__,
            "hydra": hydra_pkg.__version__, "numpy": np.__version__, "h5py": h5py.__version__}


def _device_names(accelerator: str, devices: int) -> list[str]:
    if accelerator == "gpu":
        return [torch.cuda.get_device_name(i) for i in range(devices)]
    return [platform.processor() or platform.machine() or "cpu"] * devices


def _rank() -> int:
    return int(pl.utilities.rank_zero_only.rank)


def _clean(obj):
    """NaN/inf -> None so result.json stays valid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def _resume_hint(out: Path) -> str:
    """How to go on from this run's last checkpoint: its command again, in this same folder."""
    sweep = os.environ.get("TORNADO_SWEEP_DIR")
    if sweep:  # a job of a sweep: the sweep's command resumes it (and skips the jobs already done)
        return f"run the sweep's command again with {override_text('hydra.sweep.dir', shown_path(sweep))} to resume"
    given = HydraConfig.initialized() and any(o.startswith("hydra.run.dir=")
                                              for o in typed_overrides(HydraConfig.get()))
    if given:
        return "run the same command again to resume"
    return (f"run the same command with {override_text('hydra.run.dir', shown_path(out))} to resume (each run has a "
            "new folder)")


def _history(module: StormModule, clock: _Clock, skill: _EpochSkill | None) -> list[dict]:
    """The epochs saved (all of an ok run's), each with its time and validation score."""
    times = dict(enumerate(clock.saved["epoch_s"]))
    out = [{**h, "epoch_s": times[h["epoch"]]} for h in module.history if h["epoch"] in times]
    if skill is not None:
        for h in out:
            h["val_roc_auc"] = skill.scores.get(h["epoch"])
    return out


def _progress(cfg: DictConfig, t_start: float, accelerator: str, devices: int, fast: dict, dm: StormDataModule,
              module: StormModule, clock: _Clock, skill: _EpochSkill | None) -> dict:
    """What a run that has trained, or tried to, knows of itself: batch, devices, data, and the history and times
    of the epochs saved. The same for a finished run and one that failed or was stopped midway."""
    history = _history(module, clock, skill)
    wall_s, wait_s = clock.saved["wall_s"], clock.saved["data_wait_s"]
    # counted per epoch by the module; a checkpoint from before those counts: a whole epoch per epoch
    samples = sum(h.get("samples", dm.samples_per_epoch) for h in history)
    per_dev = dm.per_device_batch
    return {
        "times": {"total_s": time.perf_counter() - t_start + clock.before["run_s"], "wall_s": wall_s,
                  "epoch_s": clock.saved["epoch_s"], "data_wait_s": wait_s, "compute_s": max(0.0, wall_s - wait_s),
                  "epoch_scoring_s": clock.saved["epoch_scoring_s"]},
        "samples_per_s": samples / wall_s if wall_s > 0 else None,
        "batch": {"global": cfg.batch_size, "per_device": per_dev, "devices": devices,
                  "effective_global": per_dev * devices},
        "devices": {"accelerator": accelerator, "count": devices, "names": _device_names(accelerator, devices)},
        "fast": {**fast, "resident": dm.is_resident},
        "history": history,
        "data": {**{k: dm.meta[k] for k in ("n_train", "n_train_originals", "n_val", "n_test", "n_dropped")},
                 "samples_per_epoch": dm.samples_per_epoch},
        "resumed_after_epochs": clock.restored,
    }


def train(cfg: DictConfig, output_dir: str | os.PathLike | None = None) -> dict:
    """One training run; returns the result record (also written to <output_dir>/result.json)."""
    t_start = time.perf_counter()
    if output_dir is None:
        if not HydraConfig.initialized():
            raise TornadoError("train(cfg) needs output_dir= outside a Hydra run")
        output_dir = HydraConfig.get().runtime.output_dir
    out = Path(output_dir).resolve()
    rank = _rank()
    # as typed: `trainer.max_epochs=${epochs}` is recorded so, not resolved (against Hydra's own settings)
    overrides = OmegaConf.to_container(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    try:
        task = records.task_container(cfg)  # resolved: the record below is made of it
    except OmegaConfBaseException:
        check_complete(cfg)  # what is missing or does not resolve (`~epochs`), in one line
        raise
    result: dict = {
        "status": "running", "error": None, "config_hash": records.config_hash(task), "overrides": overrides,
        "hparams": records.flatten(task), "output_dir": str(out), "host": socket.gethostname(),
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "versions": _versions(),
    }
    last = out / "checkpoints" / "last.ckpt"
    saver = fitting = None
    lock = _hold(out) if rank == 0 else None  # refused before anything is written
    # a single run that fails before it trains (refused settings, data or checkpoint) leaves the folder's
    # result.json as it was; a sweep's job records the failure (its launcher reads it)
    before = (out / "result.json").read_bytes() if (out / "result.json").is_file() else None
    try:
        validate(cfg)
        if cfg.data.get("source") is not None:  # missing data said as such, before a checkpoint is compared with it
            find_files(cfg.data.source, key="data.source")
        ident = identity(task)
        ckpt, done, kept = resume_path(last, ident, cfg.epochs) if cfg.resume else (None, 0, None)
        earlier = records.read_result(out) if ckpt else None  # the record of the run this checkpoint is of
        if earlier and isinstance(earlier.get("started"), str):
            result["started"] = earlier["started"]  # a resumed run started with its first session
        if rank == 0:
            records.write_json(out / "result.json", result)
        accelerator, devices = resolve_devices(cfg)
        fast = fast_switches(cfg, accelerator, devices)
        if fast["resident"] == "auto" and (kept or {}).get("resident") is False:
            fast["resident"] = False  # the batch order follows it: the earlier sessions' choice (resident data are
            # held again only where they still fit, else streamed, with a warning that the numbers will differ)
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        if fast["keep_memory"] or accelerator == "cpu":
            keep_memory(fast["keep_memory"])
        if accelerator == "gpu":  # cuDNN times its kernels for each new shape once and keeps the fastest
            torch.backends.cudnn.benchmark = fast["cudnn_benchmark"]
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        path = prepared(cfg)
        stop_if_signalled()
        dm = make_datamodule(cfg, fast, path)
        module = make_module(cfg, fast, dm)
        if cfg.get("patience") is not None and dm.meta["n_val"] == 0:
            raise TornadoError(f"patience={cfg.patience}: needs a validation split to watch "
                               "(data.split.val_fraction > 0)")
        saver = _LastCheckpoint(last, ident, lambda: numerics(accelerator, devices, fast, dm),
                                kept if done < cfg.epochs else None)
        saver.epochs_saved = done  # a resumed run's checkpoint holds the earlier sessions' epochs already
        skill = (_EpochSkill(*load_split(path, "val"), patience=cfg.get("patience"))
                 if cfg.score_epochs and dm.meta["n_val"] > 0 else None)
        # before the earlier logs are moved: a trainer or logger setting Lightning refuses leaves them where they are
        trainer, clock = make_trainer(cfg, out, accelerator, devices, dm, [saver] + ([skill] if skill else []))
        csv_aside = log_aside(out / "csv" / "metrics.csv", done) if ckpt and rank == 0 else None
        if not cfg.resume and rank == 0:
            logs_aside(out)
        last.parent.mkdir(parents=True, exist_ok=True)
        if rank == 0:  # a killed session's half-written checkpoint; this one holds the folder's lock
            for stale in last.parent.glob(f".{last.name}.*.tmp"):
                stale.unlink(missing_ok=True)
        if rank == 0:
            save_config(cfg, out)
        fitting = (accelerator, devices, fast, dm, module, clock, skill)
        clock.run_start, clock.fit_start = t_start, time.perf_counter()
        with on_sigterm(signal.SIG_DFL):  # Lightning's own stops at the next step (it would call ours too)
            trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
        if not trainer.is_global_zero:
            return result
        if csv_aside and csv_aside.exists() and not csv_aside.with_name("metrics.csv").exists():
            os.replace(csv_aside, csv_aside.with_name("metrics.csv"))  # nothing trained: the log stays as it was
        best = keep_best(module, skill, last.with_name("best.ckpt"))
        trained = len(module.history)
        if ckpt and trained == done:
            log.info("nothing left to train: %s trained in an earlier session (%s); scoring again",
                     counted(done, "epoch"), shown_path(last))
        if skill is not None and skill.stopped and best is not None:
            log.info("stopped early after epoch %d of %d: validation ROC AUC has not improved for %s; scoring "
                     "epoch %d's weights (%s)", trained, cfg.epochs, counted(trained - best, "epoch"), best,
                     shown_path(last.with_name("best.ckpt")))
        t_test = time.perf_counter()
        # the weights scored are those the last epoch's validation scoring saw (not an earlier best epoch's)
        last = (skill.last if skill and skill.last and skill.last[0] == module.history[-1]["epoch"]
                and best in (None, trained) else None)
        metrics, evaluation, prob, label = score(module, path, dm.meta, (skill.x, skill.y) if skill else None,
                                                 last[1:] if last else None)
        test_s = time.perf_counter() - t_test
        npz = io.BytesIO()
        np.savez_compressed(npz, prob=prob.astype(np.float32), label=label)
        records.write_atomic(out / "test_predictions.npz", npz.getvalue())
        known = _progress(cfg, t_start, *fitting)
        result.update({
            "status": "ok", "prepared": str(path), **known,
            "times": {**known["times"], "test_s": test_s},
            "metrics": metrics,
            "evaluation": evaluation,
            "early_stop": None if skill is None or skill.patience is None else {
                "patience": skill.patience, "stopped": skill.stopped, "epochs_trained": trained,
                "best_epoch": skill.best_epoch(), "scored_epoch": best},
        })
        per_dev = known["batch"]["per_device"]
        if per_dev * devices != cfg.batch_size:
            log.warning("batch_size=%d does not divide over %s: %d per device, %d in all",
                        cfg.batch_size, counted(devices, "device"), per_dev, per_dev * devices)
    except BaseException as e:  # recorded, then re-raised: a sweep sees the failure in result.json
        result["status"] = "failed"
        result["error"] = f"{type(e).__name__}: {e}".splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, (KeyboardInterrupt, Terminated)):  # before training (data being prepared)
            result["error"] = f"interrupted ({'SIGTERM' if isinstance(e, Terminated) else 'Ctrl-C'})"
        if fitting is not None:  # it trained, or tried: what it kept (no test scores)
            result.update({"prepared": str(path), **_progress(cfg, t_start, *fitting)})
        if saver is not None and saver.interrupted:  # Lightning turns these into SystemExit: say what happened
            then = (f"{counted(saver.epochs_saved, 'epoch')} saved in {shown_path(last)}: {_resume_hint(out)}"
                    if saver.epochs_saved else "no epoch finished: run the same command again to start over")
            result["error"] = f"interrupted ({saver.interrupted})"
            raise TornadoError(f"interrupted by {saver.interrupted}; {then}",
                               code=143 if saver.interrupted == "SIGTERM" else 130) from None
        raise
    finally:
        if rank == 0 and fitting is None and result["status"] == "failed" and not os.environ.get("TORNADO_SWEEP_DIR"):
            if before is None:
                (out / "result.json").unlink(missing_ok=True)
            else:
                records.write_atomic(out / "result.json", before)
        elif rank == 0:
            result["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            records.write_json(out / "result.json", _clean(result))
            sweep = os.environ.get("TORNADO_SWEEP_DIR")
            if sweep and result["status"] != "running":
                _refresh_sweep(sweep)
        if lock is not None:
            lock.close()
    return result


def save_config(cfg: DictConfig, out: Path) -> None:
    """Hydra's record of the run in <out>/.hydra (config, hydra and overrides .yaml), written here once the run is
    taken rather than by Hydra before it starts (conf/train.yaml sets hydra.output_subdir to null): a run refused
    in an existing folder leaves that folder's record as it was. A hydra.output_subdir the command sets is Hydra's."""
    if not HydraConfig.initialized() or HydraConfig.get().output_subdir is not None:
        return
    task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    hc = HydraConfig.instance().cfg
    for name, node in (("config", task), ("hydra", hc), ("overrides", hc.hydra.overrides.task)):
        records.write_atomic(out / ".hydra" / f"{name}.yaml", OmegaConf.to_yaml(node))


def _hold(out: Path) -> contextlib.ExitStack:
    """An exclusive lock on the run's folder while this process trains in it: two processes in one folder (a
    sweep's job left running by a killed launcher, and the sweep run again) would mix checkpoints, logs and
    times. Held until the returned stack is closed; the folder's .lock names the holder's pid."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        return records.hold(out / ".lock")
    except records.HeldElsewhere as e:
        who = f" (pid {e.pid})" if e.pid else ""
        raise TornadoError(f"{shown_path(out)}: in use by another training process{who}; wait for it to end, or stop "
                           "it, and run again", code=IN_USE) from None


def _refresh_sweep(sweep_dir: str) -> None:
    try:
        from tornado.collect import collect

        collect(sweep_dir)
    except Exception as e:  # the launcher collects again at the end; never fail a finished job for this
        log.warning("could not refresh %s/results.csv: %s", sweep_dir, e)


def make_datamodule(cfg: DictConfig, fast: dict, path) -> StormDataModule:
    """The data module of this config (fitted once, it keeps its resident set across fits)."""
    return StormDataModule(path, cfg.batch_size, cfg.data_multiplier, cfg.augmentation,
                           OmegaConf.to_container(cfg.augment), cfg.seed, fast["resident"], fast["storage"],
                           channels_last=fast["channels_last"])


def base_rates(meta: dict) -> tuple[float | None, float | None]:
    """(the positive rate of the training set as trained, with balance copies; the training originals')."""
    if meta["positives_train"] < 0:
        return None, None
    return (meta["positives_train"] / meta["n_train"],
            meta["positives_train_originals"] / meta["n_train_originals"])


def make_module(cfg: DictConfig, fast: dict, dm: StormDataModule) -> StormModule:
    trained, climatology = base_rates(dm.meta)
    weight = float(cfg.model.get("pos_weight", 1.0))
    if trained is not None and weight != 1.0:  # a weighted positive counts as `weight` of them: odds x weight
        odds = weight * trained / (1 - trained) if trained < 1 else math.inf
        trained = odds / (1 + odds) if math.isfinite(odds) else 1.0
    shifted = trained is not None and (dm.meta["n_train"] > dm.meta["n_train_originals"] or weight != 1.0)
    return StormModule(pool3=cfg.model.pool3, dropout=cfg.model.dropout, lr=cfg.lr,
                       scaler_mean=dm.meta["mean"].tolist(), scaler_std=dm.meta["std"].tolist(),
                       channels_last=fast["channels_last"], bf16=fast["bf16"], compile=fast["compile"],
                       cuda_graph=fast["cuda_graph"], trained_rate=trained if shifted else None,
                       climatology=climatology if shifted else None, pos_weight=weight,
                       label=OmegaConf.to_container(cfg.data.label) if cfg.data.get("label") is not None else None)


class _StepBar(TQDMProgressBar):
    """Counts batches (optimiser steps), not the blocks of batches Lightning is handed on one device."""

    def __init__(self, dm: StormDataModule):
        super().__init__(refresh_rate=max(1, dm.steps_per_epoch() // 50))
        self.dm, self.steps = dm, 0

    @property
    def total_train_batches(self):
        return self.dm.steps_per_epoch() if self.dm.blocks() else super().total_train_batches

    def on_train_epoch_start(self, trainer, *args) -> None:
        self.steps = 0
        super().on_train_epoch_start(trainer, *args)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        before, y = self.steps, batch[1]
        self.steps += y.shape[0] if y.ndim == 2 else 1
        bar, r = self.train_progress_bar, self.refresh_rate
        if self.is_enabled and not bar.disable and (self.steps // r > before // r or self.steps == bar.total):
            bar.n = self.steps
            bar.refresh()
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_exception(self, trainer, pl_module, exception) -> None:
        bar = getattr(self, "_train_progress_bar", None)
        if bar is not None:
            bar.close()  # ends its line: the error that follows starts on its own


def make_trainer(cfg: DictConfig, out: Path, accelerator: str, devices: int, dm: StormDataModule,
                 extra_callbacks: list[pl.Callback] | None = None):
    """The Trainer `train` uses (loggers, checkpoints, epoch clock) and its `_Clock`."""
    from pytorch_lightning.plugins.environments import SLURMEnvironment

    clock = _Clock(dm, next((c for c in extra_callbacks or [] if isinstance(c, _EpochSkill)), None))
    callbacks: list[pl.Callback] = [clock, *(extra_callbacks or [])]
    if cfg.model.get("dropout", 0.0) > 0:  # the one draw from torch's global generator
        callbacks.append(_EpochSeed(cfg.seed))
    interactive = sys.stdout.isatty()  # where Lightning draws its bar
    if interactive:
        callbacks.append(_StepBar(dm))
    strategy = cfg.trainer.strategy
    if strategy == "auto" and devices > 1:
        strategy = "ddp"
    # one plugin, not a list: Hydra 1.3.2 hands a list on as a ListConfig, which Lightning 2.4 takes for a plugin
    plugins = SLURMEnvironment(auto_requeue=False) if SLURMEnvironment.detect() else None
    try:  # trainer.* and logger.* go to Lightning as they are: what it refuses is a setting, said in one line
        loggers = [instantiate(c, save_dir=str(out)) for c in (cfg.logger or {}).values()]
        for name, made in zip(cfg.logger or {}, loggers):
            _made(cfg, f"logger.{name}", made, pl.loggers.Logger)
        trainer = instantiate(cfg.trainer, accelerator=accelerator, devices=devices, strategy=strategy,
                              logger=loggers or False, callbacks=callbacks, enable_progress_bar=interactive,
                              default_root_dir=str(out), plugins=plugins, use_distributed_sampler=False,
                              enable_checkpointing=any(isinstance(c, Checkpoint) for c in callbacks))
    except InstantiationException as e:
        key = re.search(r"full_key: (\S+)", str(e))
        lines = [ln.strip() for ln in str(e.__cause__ or e).splitlines() if ln.strip()]
        why = (" ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":")  # "Error loading 'x':"
               else lines[0] if lines else type(e.__cause__ or e).__name__)
        raise TornadoError(f"{key.group(1) if key else 'trainer'}: {why}") from None
    _made(cfg, "trainer", trainer, pl.Trainer)
    return trainer, clock


def _made(cfg: DictConfig, key: str, obj, kind: type) -> None:
    """Refuses what a `_target_` made that is not a `kind` (`trainer._target_=builtins.dict` makes a dict quietly)."""
    if not isinstance(obj, kind):
        raise TornadoError(f"{key}._target_={OmegaConf.select(cfg, key + '._target_')}: makes a {type(obj).__name__}, "
                           f"not a Lightning {kind.__name__}")


def score(module: StormModule, path, meta: dict, val_split: tuple[torch.Tensor, np.ndarray] | None = None,
          val_scored: tuple[np.ndarray, float] | None = None) -> tuple[dict, dict, np.ndarray, np.ndarray]:
    """Test metrics (`val_*`: the same on the validation split), how they were made, and the test forecasts.
    `val_scored`: the network's probabilities on `val_split` and their ROC AUC, from its last epoch's scoring.

    The CSI/POD/FAR threshold is the one that maximises CSI on the validation split, applied to the test
    set; `*_best` are at the test set's own best threshold (optimistic). With balance copies or weighted
    positives the model learnt a higher base rate than nature's, so its probabilities are moved back to the
    training originals' base rate (`StormModule.calibrated`) before anything is scored.
    """
    trained, climatology = base_rates(meta)

    def forecasts(split: str) -> tuple[np.ndarray, np.ndarray]:
        if split == "val" and val_split is not None:  # loaded already for the per-epoch scores
            x, label = val_split
            prob = val_scored[0] if val_scored is not None else probabilities(module.net, x.to(module.device))
        else:
            prob, label = evaluate(module.net, path, module.device, split)
        return module.calibrated(prob), label

    prob, label = forecasts("test")
    threshold, val = None, {}
    if meta["n_val"] > 0:
        vprob, vlabel = forecasts("val")
        if 0 < vlabel.sum() < len(vlabel):
            threshold = best_csi_threshold(vprob, vlabel)[0]
        # the ROC AUC of the forecasts as scored after the last epoch, where no prior shift moved them
        auc = val_scored[1] if val_scored is not None and np.array_equal(vprob, val_scored[0]) else None
        val = {f"val_{k}": v for k, v in forecast_scores(vprob, vlabel, climatology=climatology, auc=auc).items()
               if f"val_{k}" in VAL_SCORES}
    metrics = {**forecast_scores(prob, label, climatology=climatology, threshold=threshold),
               "train_base_rate": trained, **val}
    h = module.hparams
    evaluation = {"threshold_from": "validation" if threshold is not None else None,
                  "prior_shift": None if h.get("trained_rate") is None else
                  {"trained_rate": h.trained_rate, "climatology": h.climatology}}
    return metrics, evaluation, prob, label


def evaluate(net: torch.nn.Module, path, device, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Probabilities on the untouched test (or validation) set, in float32."""
    x, y = load_split(path, split, device)
    return probabilities(net, x), y


@torch.no_grad()
def probabilities(net: torch.nn.Module, x: torch.Tensor, batch: int = 8192) -> np.ndarray:
    """The network's probabilities for standardised inputs `x`, in float32 and eval mode."""
    was_training = net.training
    net.eval()
    probs = [net.predict_proba(x[i:i + batch].contiguous()).float().cpu() for i in range(0, len(x), batch)]
    net.train(was_training)
    return torch.cat(probs).numpy() if probs else np.zeros(0, np.float32)
