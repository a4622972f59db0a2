"""Tornado prediction from storm patches: data, training, sweeps and reports."""
import os

from omegaconf import OmegaConf

__version__ = "0.1.0"

# Output folders are named by time *and* process id, so two runs started in the same second never share one.
if not OmegaConf.has_resolver("tornado_pid"):
    OmegaConf.register_new_resolver("tornado_pid", lambda: str(os.getpid()), use_cache=True)
