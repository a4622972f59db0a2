"""What runs on a SLURM node: one task of a job (one training rank), as a child process in the task's environment."""
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import submitit

STOP_GRACE_S = 60.0  # a child told to stop (SIGTERM) gets this long to record what it saved, within SLURM's warning


def _preempt_signal() -> signal.Signals:
    return signal.Signals["SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")]


def _ignore_preempt_signal() -> None:
    # submitit's handler in the parent owns the warning signal (checkpoint + requeue); the child trains on
    # until the requeue stops it, and the requeued job resumes from checkpoints/last.ckpt.
    signal.signal(_preempt_signal(), signal.SIG_IGN)


class TrainTask(submitit.helpers.Checkpointable):
    """`python <args>` (e.g. `-m tornado.train ... hydra.run.dir=JOB_DIR`) with the task's SLURM variables.

    Each of the job's tasks runs one, so Lightning's SLURMEnvironment takes each rank from
    SLURM_PROCID / SLURM_NTASKS. On preemption or timeout submitit requeues this same call.
    Returns the child's exit code.
    """

    def __init__(self, args: List[str], job_dir: str, env: Dict[str, str]) -> None:
        self.args, self.job_dir, self.env = list(args), job_dir, dict(env)

    def __call__(self) -> int:
        rank = int(os.environ.get("SLURM_PROCID", "0"))
        log = Path(self.job_dir) / ("stdout.log" if rank == 0 else f"stdout_rank{rank}.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            child = subprocess.Popen([sys.executable, *self.args], env={**os.environ, **self.env}, stdout=out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     preexec_fn=_ignore_preempt_signal)
            try:
                return child.wait()
            except BaseException:  # submitit's handler ends the task (requeued, or timed out for good)
                child.terminate()  # the run stops as on scancel: its result.json keeps the epochs it saved
                try:
                    child.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
                raise
