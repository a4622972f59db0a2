"""Hydra launchers for tornado sweeps: `tornado_local` (this machine's GPUs and cores) and `tornado_slurm`."""
from .config import LocalLauncherConf, SlurmLauncherConf

__all__ = ["LocalLauncherConf", "SlurmLauncherConf"]
