"""Tornado prediction from storm patches: data, training, sweeps and reports."""
import os
import sys

from omegaconf import OmegaConf

__version__ = "0.1.0"

# Output folders are named by time *and* process id, so two runs started in the same second never share one.
if not OmegaConf.has_resolver("tornado_pid"):
    OmegaConf.register_new_resolver("tornado_pid", lambda: str(os.getpid()), use_cache=True)

if sys.argv[:1] == ["-m"]:  # a command (`python -m tornado.X`) being started: Ctrl-C while it imports is one line too
    def _interrupted(kind, value, tb, _default=sys.excepthook):
        if issubclass(kind, KeyboardInterrupt):
            print("error: interrupted (Ctrl-C)", file=sys.stderr)
        else:
            _default(kind, value, tb)

    sys.excepthook = _interrupted
