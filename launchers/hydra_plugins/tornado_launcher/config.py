"""Launcher settings, registered in Hydra's ConfigStore as hydra/launcher=tornado_local and tornado_slurm."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class LocalLauncherConf:
    _target_: str = "hydra_plugins.tornado_launcher.local.TornadoLocalLauncher"
    # Python module each job runs as `python -m <module>`; null = the module that started the sweep.
    module: Optional[str] = None
    # Jobs running at once. null: the GPU count when jobs use GPUs, else max(1, cores // 4) CPU jobs.
    max_parallel: Optional[int] = None
    # Torch/OpenMP threads per CPU job (split across its processes); null = cores // max_parallel.
    threads_per_job: Optional[int] = None
    # GPU ids to schedule onto; null = every visible GPU (CUDA_VISIBLE_DEVICES, else all).
    devices: Optional[List[str]] = None
    # dynamic: workers take the next job as they free up (master-worker).
    # static: the grid is split up front over `workers` lists balanced by estimated cost.
    schedule: str = "dynamic"
    workers: Optional[int] = None  # static only; null = max_parallel
    # Cost model of the static split: epochs * data_multiplier * (1 + cost_batch_overhead / batch_size).
    cost_batch_overhead: float = 64.0
    # Fork each job from a worker that has already imported the heavy libraries (`preload`): still one
    # process per job running the code on disk, seconds faster to start. Off: a fresh `python -m` per job.
    warm: bool = False
    preload: List[str] = field(default_factory=lambda: ["torch", "pytorch_lightning", "torchmetrics", "h5py",
                                                        "pandas", "hydra"])
    progress: bool = True  # a refreshed progress line on a terminal
    # Ctrl-C / SIGTERM: seconds running jobs get to stop after the signal is passed on, before SIGKILL.
    stop_grace_s: float = 10.0


@dataclass
class SlurmLauncherConf:
    _target_: str = "hydra_plugins.tornado_launcher.slurm.TornadoSlurmLauncher"
    module: Optional[str] = None
    python: Optional[str] = None  # the Python on the compute nodes; null = this one (sys.executable)
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    time_min: int = 60  # per job; a job that times out is requeued and resumes from its last checkpoint
    cpus_per_task: int = 2  # each task is one training process (one rank)
    mem_gb: Optional[float] = 8  # per node; null = the cluster's default
    constraint: Optional[str] = None
    exclude: Optional[str] = None
    job_name: str = "tornado"
    array_parallelism: int = 256  # array tasks running at once
    max_num_timeout: int = 3  # requeues after timeout or preemption
    signal_delay_s: int = 90  # warning signal this long before the time limit
    additional_parameters: Dict[str, Any] = field(default_factory=dict)  # any other sbatch option
    setup: List[str] = field(default_factory=list)  # shell lines run before each job; a failing one ends it
    wait: bool = True  # false: submit, print the job ids and return
    poll_s: float = 5.0
    progress: bool = True


ConfigStore.instance().store(group="hydra/launcher", name="tornado_local", node=LocalLauncherConf, provider="tornado")
ConfigStore.instance().store(group="hydra/launcher", name="tornado_slurm", node=SlurmLauncherConf, provider="tornado")
