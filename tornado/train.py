"""Train the paper's CNN once: `python -m tornado.train [key=value ...]` (`-m` sweeps, see launcher/).

`train(cfg)` is the plain function tests and benchmarks call; `main` is the thin Hydra wrapper that
returns the metric named by `optimize_metric` to sweepers. The settings' checks are settings.py's: a single
run's command line is checked there first, before Lightning loads. The run itself, with Lightning, is fit.py's:
a sweep's launcher (this module with `-m`) checks every job with `validate` and starts them, and never loads it.
"""
from __future__ import annotations

import sys

if __name__ == "__main__":  # a bad setting is refused before Lightning loads (3-5 s)
    import importlib

    from tornado.settings import refuse_early

    refuse_early(sys.argv[1:])
    if not any(a.startswith("-") for a in sys.argv[1:]):  # a run, not a sweep's launcher (`-m`) nor `--help`:
        importlib.import_module("tornado.fit")  # Lightning loads before Hydra makes the run's folder

import logging
import math
import os
import shlex
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from tornado.cli import (missing_folders, names_run_dir, python_command, remove_hydra_only_folder, run_hydra_app,
                         shown_path, typed_overrides)
from tornado.errors import die_with_parent, run_cli
from tornado.settings import CONF_DIR, validate

__all__ = ["main", "train", "validate"]  # validate: what a sweep's launcher checks each job with (jobs.py)

log = logging.getLogger("tornado.train")


def train(cfg: DictConfig, output_dir: str | os.PathLike | None = None) -> dict:
    """One training run; returns the result record (also written to <output_dir>/result.json). fit.py's, loaded
    here: importing this module does not load Lightning."""
    from tornado import fit

    return fit.train(cfg, output_dir)


def _headline(result: dict) -> str:
    m, t = result["metrics"], result["times"]
    where = shown_path(result["output_dir"])

    def f(v):
        return "n/a" if v is None else f"{v:.3f}"
    if result.get("evaluation", {}).get("threshold_from") == "validation":
        csi = f"CSI {f(m['csi'])} (threshold {f(m['threshold'])}, chosen on validation)"
    else:
        csi = f"CSI {f(m['csi_best'])} (threshold {f(m['best_threshold'])}, the test set's best: optimistic)"
    se = m.get("roc_auc_se")
    se = f" ± {se:.3f}" if isinstance(se, float) and math.isfinite(se) else ""  # one standard error
    return (f"accuracy {f(m['accuracy'])}  ROC AUC {f(m['roc_auc'])}{se}  AP {f(m['average_precision'])}  "
            f"{csi}  BSS {f(m['bss'])}\n"
            f"trained in {t['wall_s']:.1f} s ({result['samples_per_s']:.0f} samples/s{_sessions(result)}); "
            f"logs and result.json in {where}\n"
            f"its report (scores, curves, diagrams): {python_command()} -m tornado.report {shlex.quote(where)}")


def _sessions(result: dict) -> str:
    before, epochs = result.get("resumed_after_epochs") or 0, len(result.get("history") or [])
    if not before:
        return ""
    return ", all in an earlier session" if before == epochs else f", resumed after epoch {before}"


_NEW_RUN_DIRS: set[str] = set()  # new_run_dirs of this process's command line, taken before Hydra runs


def new_run_dirs(argv: list[str]) -> set[str]:
    """The folders Hydra makes for this run's folder (from `hydra.run.dir=` in `argv`, else the default's parent,
    outputs/runs) that do not exist yet: they and the folders above them that are missing."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    named = []
    for arg in argv:
        if names_run_dir(arg):
            try:
                named.append(OverridesParser.create().parse_override(arg).value())
            except HydraException:  # Hydra refuses it itself
                continue
    if not named:
        default = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "train.yaml").hydra.run)["dir"]  # unresolved
        named = [str(Path(default).parent)]
    return set().union(*(missing_folders(value) for value in named if isinstance(value, str)))


def drop_refused_run(out: Path, hc: DictConfig | None = None) -> bool:
    """Removes the folder of a single run refused or stopped before training where it was made for this run (the
    default folder, or one the command named that did not exist) and holds only Hydra's files (no record):
    a refused run leaves nothing. A sweep's job keeps its record (the launcher reads it). Returns whether it did."""
    from hydra.types import RunMode

    hc = hc or HydraConfig.get()
    if os.environ.get("TORNADO_SWEEP_DIR") or hc.mode != RunMode.RUN:
        return False
    if any(names_run_dir(o) for o in typed_overrides(hc)) and str(out) not in _NEW_RUN_DIRS:
        return False
    return remove_hydra_only_folder(out, hc, (".lock",), _NEW_RUN_DIRS)  # outputs/runs too, made for a first run


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    if os.environ.get("TORNADO_SWEEP_DIR"):  # a sweep's job: it ends with its launcher
        die_with_parent()
    try:
        result = run_cli(lambda: train(cfg))
    except SystemExit as e:
        if e.code in (2, 130, 143):  # refused (a setting, the data, a checkpoint it cannot continue), or stopped
            drop_refused_run(Path(HydraConfig.get().runtime.output_dir).resolve())
        raise
    if result.get("status") != "ok":
        return None
    print(_headline(result))
    value = result["metrics"].get(cfg.optimize_metric)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        log.warning("optimize_metric=%s: no value in this run's metrics%s", cfg.optimize_metric,
                    " (no validation split: data.split.val_fraction=0)" if cfg.optimize_metric.startswith("val_")
                    else "")
        return None
    return value


if __name__ == "__main__":
    _NEW_RUN_DIRS.update(new_run_dirs(sys.argv[1:]))
    run_hydra_app(main, CONF_DIR, "train", refused=drop_refused_run)
