"""Tornado prediction from storm patches: data, training, sweeps and reports."""
import os
import sys

__version__ = "0.1.0"

# The packages the commands import (pyproject.toml's dependencies, as imported): one missing is one line.
DEPENDENCIES = {"omegaconf", "hydra", "torch", "pytorch_lightning", "torchmetrics", "numpy",
                "pandas", "sklearn", "scipy", "h5py", "netCDF4", "xarray", "submitit", "tensorboard", "matplotlib",
                "tqdm"}

if sys.argv[:1] == ["-m"]:  # a command (`python -m tornado.X`) being started: Ctrl-C while it imports is one line too
    def _interrupted(kind, value, tb, _default=sys.excepthook):
        if issubclass(kind, KeyboardInterrupt):
            print("error: interrupted (Ctrl-C)", file=sys.stderr)
        elif issubclass(kind, ModuleNotFoundError) and (value.name or "").split(".")[0] in DEPENDENCIES:
            # e.g. `python -m tornado.report` after `make` without the venv activated: this Python lacks them
            print(f"error: {value.name}: not installed for {sys.executable}; use the Python `make` set up, "
                  f".venv/bin/python (or `source .venv/bin/activate` first)", file=sys.stderr)
        else:
            _default(kind, value, tb)

    sys.excepthook = _interrupted

from omegaconf import OmegaConf  # noqa: E402 (after the hook: a Python without it says so in one line)

# Output folders are named by time *and* process id, so two runs started in the same second never share one.
if not OmegaConf.has_resolver("tornado_pid"):
    OmegaConf.register_new_resolver("tornado_pid", lambda: str(os.getpid()), use_cache=True)
