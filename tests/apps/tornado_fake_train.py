"""A stand-in for `python -m tornado.train`: same result.json contract, no training (tests of the launchers)."""
from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from tornado.records import config_hash, flatten, task_container, write_json

ENV_KEYS = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "TORNADO_SWEEP_DIR", "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID",
            "SLURM_ARRAY_TASK_ID", "SLURM_PROCID", "SLURM_NTASKS")


def _chosen(var: str, batch_size: int) -> bool:
    """Failure injection from the environment (not the config, so resuming composes the same hashes)."""
    return str(batch_size) in os.environ.get(var, "").split(",")


def _now() -> str:
    return dt.datetime.now().astimezone().isoformat()


@hydra.main(version_base=None, config_path="conf", config_name="fake")
def main(cfg: DictConfig) -> float:
    out = Path(HydraConfig.get().runtime.output_dir)
    rank = int(os.environ.get("SLURM_PROCID", 0))
    write_json(out / f"env_{rank}.json", {k: os.environ.get(k) for k in ENV_KEYS} | {"pid": os.getpid()})
    if rank:
        return 0.0
    rec = {"status": "running", "error": None, "config_hash": config_hash(cfg),
           "overrides": list(HydraConfig.get().overrides.task), "hparams": flatten(task_container(cfg)),
           "output_dir": str(out), "started": _now(), "host": socket.gethostname()}
    write_json(out / "result.json", rec)
    t0 = time.time()
    if cfg.counter:
        with open(cfg.counter, "a") as f:
            f.write(f"{out.name} {t0:.3f} {os.getpid()}\n")
    if cfg.hold:
        while not Path(cfg.hold).exists() and time.time() - t0 < cfg.hold_s:
            time.sleep(0.2)
    time.sleep(cfg.sleep_s * cfg.epochs * cfg.data_multiplier)
    if _chosen("FAKE_CRASH_BATCH", cfg.batch_size):
        os.kill(os.getpid(), signal.SIGKILL)
    fit = time.time() - t0
    rec.update(times={"total_s": fit, "wall_s": fit}, finished=_now())
    if _chosen("FAKE_FAIL_BATCH", cfg.batch_size):
        write_json(out / "result.json", rec | {"status": "failed", "error": "RuntimeError: fake failure"})
        raise RuntimeError("fake failure")
    write_json(out / "result.json", rec | {"status": "ok", "metrics": {"score": float(cfg.batch_size)}})
    if os.environ.get("TORNADO_SWEEP_DIR"):
        from tornado.collect import collect

        collect(os.environ["TORNADO_SWEEP_DIR"])
    return float(cfg.batch_size)


if __name__ == "__main__":
    main()
