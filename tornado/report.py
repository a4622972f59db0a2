"""Tables, plots and a self-contained report.html from a sweep dir: reads the sweep, finds its best and fastest
jobs and writes the files (tornado.tables builds the tables, tornado.plots draws the figures).

python -m tornado.report SWEEP_DIR [rows=batch_size] [cols=data_multiplier] [group=epochs] [value=wall_s]
                                   [agg=mean] [metric=auto] [target=0.93] [paper=auto] [pages=3] [out=DIR]
A single run's folder (result.json at its top) is read as a sweep of one job and gets a page of its own
(tornado.runpage).
"""
from __future__ import annotations

import hashlib
import html
import importlib.metadata
import importlib.util
import json
import math
import os
import sys
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tornado.cli import closest, counted, folder_fault, parse_kv, shown_path
from tornado.collect import result_row, section
from tornado.errors import TornadoError, run_cli
from tornado.metrics import LOWER_IS_BETTER as METRICS_LOWER
from tornado.metrics import SCORES as TEST_SCORES
from tornado.metrics import RELIABILITY_BINS, delong_against, roc_auc_se
from tornado import runpage
from tornado.plots import (curve_figures, learning_panels, plot_curves, plot_learning_curves, plot_roc_comparison,
                           plot_skill_vs_time, plot_verification, plot_wall_vs_batch, roc_points, wall_layout)
from tornado.records import SWEEP_LOCK, held_by, load_result, read_result, write_atomic, write_json
from tornado.tables import (AGGS, METRICS, PAPER_TABLES, RUN_INFO, SCALING, SKILL_S, TIMES, TableSet, build_tables,
                            is_repeat, label_text, number_text, numeric_column, ok_rows, to_html_tables, to_latex,
                            settings_text, to_long_csv, to_markdown, varying_hparams)

LOWER_IS_BETTER = METRICS_LOWER | {"total_s", "wall_s", "data_wait_s", "compute_s", "test_s"}
TEXT_COLUMNS = ["job", "status", "error", "output_dir", "paper", "accelerator"]
DEFAULTS = {"rows": "batch_size", "cols": "data_multiplier", "group": "epochs", "value": "wall_s",
            "agg": "mean", "metric": "auto", "target": 0.93, "skill": "auto", "paper": "auto", "pages": "3",
            "out": None}


# ----------------------------------------------------------------------------------------------------- loading
@dataclass
class Sweep:
    dir: Path
    df: pd.DataFrame                 # one row per job, results.csv columns
    running: list[str]               # jobs whose result.json says "running"
    notes: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # jobs of an unfinished launch not started yet
    single: bool = False             # a single run's folder (its own result.json), not a sweep
    parts: list[Path] = field(default_factory=list)  # several sweeps read as one (load_sweeps): their folders

    @property
    def name(self) -> str:
        return " + ".join(p.name for p in self.parts) if self.parts else self.dir.name

    @property
    def partial(self) -> bool:
        return bool(self.running or self.waiting)

    @property
    def ok(self) -> pd.DataFrame:
        return ok_rows(self.df)

    def job_dir(self, job: str) -> Path:
        """The job's folder under the sweep's, else where results.csv says it ran (several sweeps read as one)."""
        if (self.dir / str(job) / "result.json").is_file():  # a sweep copied or moved: not the folder it ran in
            return self.dir / str(job)
        row = self.df.loc[self.df["job"].astype(str) == str(job)]
        out = row["output_dir"].iloc[0] if len(row) and "output_dir" in row.columns else None
        if isinstance(out, str) and Path(out).is_dir():
            return Path(out)
        return self.dir / str(job)


def _row_from_result(job: str, run_dir: Path, r: dict) -> dict:
    """One results.csv row from a result.json (collect's rule), pointing at `run_dir` where it names none."""
    row = result_row(job, r)
    row["output_dir"] = row["output_dir"] or str(run_dir)
    return row


def _normalise(df: pd.DataFrame) -> pd.DataFrame:
    """Numbers stored as text become numbers; the `paper` section stays text ("6.2", not 6.2)."""
    df = df.copy()
    for c in df.columns:
        if c in TEXT_COLUMNS:
            df[c] = df[c].map(lambda v: v if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
            df[c] = df[c].astype(object)
        elif not pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]):
            num = pd.to_numeric(df[c], errors="coerce")
            if num.notna().sum() == df[c].notna().sum():
                df[c] = num
            else:
                df[c] = df[c].astype(object)
    return df


def load_sweep(sweep_dir: str | Path) -> Sweep:
    """results.csv (rebuilt from the job dirs' result.json files when missing or out of date)."""
    sweep = Path(sweep_dir)
    _check_folder(sweep)
    results = {p.parent.name: read_result(p.parent) for p in sorted(sweep.glob("*/result.json"))}
    results = {job: r for job, r in results.items() if isinstance(r, dict)}
    running = sorted(job for job, r in results.items() if r.get("status") == "running")
    notes: list[str] = []
    csv = sweep / "results.csv"
    df = None
    if csv.is_file():
        try:
            df = pd.read_csv(csv, dtype={c: str for c in TEXT_COLUMNS})
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise TornadoError(f"results.csv: {csv}: unreadable ({e})") from None
        if "job" not in df.columns:
            raise TornadoError(f"results.csv: {csv}: no 'job' column")
        listed = dict(zip(df["job"].astype(str), df.get("status", pd.Series(["ok"] * len(df))).astype(str)))
        written = csv.stat().st_mtime  # a job run again by hand (hydra.run.dir=SWEEP/<job>) refreshes no results.csv
        if any(listed.get(job) != r.get("status") for job, r in results.items()) or any(
                (sweep / job / "result.json").stat().st_mtime > written for job in results):
            notes.append("results.csv was older than the job dirs' result.json files; rebuilt from those.")
            df = None
    one = None
    if df is None and not results and (sweep / "result.json").exists():
        try:
            one = load_result(sweep / "result.json")
        except (OSError, ValueError) as e:  # a run's record that cannot be read, named as such (not "no result.json")
            raise TornadoError(str(e)) from None
    if one is not None:  # a single run's folder: a sweep of one job, the folder itself
        df = pd.DataFrame([{**_row_from_result(sweep.name, sweep, one), "output_dir": str(sweep)}])
    if df is None:
        if not results:
            raise TornadoError(f"folder {sweep}: no results.csv, no */result.json and no result.json")
        df = _collect(sweep, results)
    df = _normalise(df)
    if "status" not in df.columns:
        df["status"] = "ok"
    running = set(running) | set(df.loc[df["status"] == "running", "job"].astype(str))
    waiting = _waiting(sweep, set(results), notes)
    # started but not yet far enough to write result.json (its output log is there): running
    starting = {j for j in waiting if (sweep / j / "stdout.log").exists()}
    return Sweep(sweep, df.reset_index(drop=True), sorted(running | starting), notes,
                 [j for j in waiting if j not in starting], single=one is not None)


def load_sweeps(sweep_dirs: list[str | Path]) -> Sweep:
    """Several sweeps (or runs) read as one: jobs named SWEEP/JOB, with a `sweep` column (the folder's name) to
    tabulate by, e.g. a preaugmented and a live sweep side by side (cols=sweep, or cols=augmentation)."""
    if len(sweep_dirs) == 1:
        return load_sweep(sweep_dirs[0])
    parts, frames, running, waiting, notes = [load_sweep(d) for d in sweep_dirs], [], [], [], []
    names = [p.dir.resolve().name for p in parts]
    if len(set(names)) < len(names):
        raise TornadoError(f"folders {', '.join(map(str, sweep_dirs))}: two share a name; the jobs are told "
                           "apart by it")
    for name, part in zip(names, parts):
        df = part.df.copy()
        df["output_dir"] = [str(part.job_dir(str(j))) for j in df["job"]]
        df["job"] = [f"{name}/{j}" for j in df["job"]]
        df.insert(1, "sweep", name)
        frames.append(df)
        running += [f"{name}/{j}" for j in part.running]
        waiting += [f"{name}/{j}" for j in part.waiting]
        notes += [f"{name}: {n}" for n in part.notes]
    return Sweep(parts[0].dir, pd.concat(frames, ignore_index=True), running, notes, waiting,
                 parts=[p.dir for p in parts])


def _waiting(sweep: Path, started: set[str], notes: list[str]) -> list[str]:
    """Jobs of a launch still in progress (launcher.json's `state`) that have no result yet. A local launch whose
    launcher is gone (killed outright: its sweep lock is free) has none waiting, and `notes` says so."""
    try:
        plan = json.loads((sweep / "launcher.json").read_text())
        jobs = [str(j["dir"]) for j in plan["jobs"]] if plan.get("state") == "running" else []
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if jobs and plan.get("launcher") == "local" and held_by(sweep / SWEEP_LOCK) is None:
        notes.append("The last launch was cut short (its launcher ended without finishing it); run the sweep's "
                     "command again to run the jobs it left.")
        return []
    return [j for j in jobs if j not in started]


def _collect(sweep: Path, results: dict[str, dict]) -> pd.DataFrame:
    if importlib.util.find_spec("tornado.collect") is not None:
        from tornado.collect import collect
        try:
            return collect(sweep)
        except OSError:  # a sweep dir we may not write to: read it without refreshing results.csv
            pass
    return pd.DataFrame([_row_from_result(job, sweep / job, r) for job, r in results.items()])


def load_history(sweep: Sweep, job: str) -> pd.DataFrame | None:
    h = pd.DataFrame(runpage.epochs_of(read_result(sweep.job_dir(job)) or {}))
    if h.empty or "train_acc" not in h.columns:
        return None
    for c in h.columns:  # pd.to_numeric leaves a numeric column as it is: only text is worth converting
        if not pd.api.types.is_numeric_dtype(h[c]):
            h[c] = pd.to_numeric(h[c], errors="coerce")
    if "epoch" not in h.columns:
        h["epoch"] = np.arange(len(h))
    if h["epoch"].is_monotonic_increasing and h["epoch"].is_unique:  # as written: in order
        return h
    return h.sort_values("epoch").reset_index(drop=True)


# ------------------------------------------------------------------------------------------------- analysis
# the skill scores' no-skill levels: at or below it, a score shows no skill. ROC AUC: chance; Brier skill score:
# climatology; average precision and CSI: the base rate of the cases scored (what a ranking at random scores in
# average precision, and the highest CSI any forecast without skill reaches, that of always saying yes)
NO_SKILL = {"roc_auc": 0.5, "bss": 0.0}
BASE_RATE_SKILL = {"average_precision", "csi", "csi_050", "csi_best"}
SKILL_SCORES = set(NO_SKILL) | BASE_RATE_SKILL


def no_skill(ok: pd.DataFrame, metric: str) -> tuple[pd.Series, str] | None:
    """Each job's no-skill level of `metric` (a skill score, on the test set or `val_` the validation split)
    and its name; None for other metrics."""
    name = metric.removeprefix("val_")
    if name in NO_SKILL:
        return pd.Series(NO_SKILL[name], index=ok.index), "chance" if name == "roc_auc" else "climatology"
    if name in BASE_RATE_SKILL:
        scored = metric[:-len(name)]  # "val_" or ""
        return numeric_column(ok, f"{scored}positives") / numeric_column(ok, f"{scored}n"), "the base rate"
    return None


def _direction(metric: str) -> int:
    return -1 if metric in LOWER_IS_BETTER else 1


def _varying(ok: pd.DataFrame, varying: list[str] | None) -> list[str]:
    """`varying` as given (a report works it out once, for all its analyses), else `varying_hparams(ok)`."""
    return varying_hparams(ok) if varying is None else varying


def _config(row: pd.Series, cols: list[str]) -> dict:
    return {c: _plain(row[c]) for c in cols}


def _plain(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return None if not np.isfinite(v) else (int(v) if float(v).is_integer() else float(v))
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def configurations(ok: pd.DataFrame, rows: pd.DataFrame,
                   varying: list[str] | None = None) -> tuple[list[str], list[pd.DataFrame] | None]:
    """The settings that make a configuration (those that vary, less repeats such as seeds), and `rows` (some
    of `ok`'s) split by configuration; None in place of the split when no configuration is repeated. `varying`:
    `varying_hparams(ok)`, where the caller has it."""
    cols = _varying(ok, varying)
    keys = [c for c in cols if not is_repeat(c)]
    if len(keys) == len(cols) or rows.empty:
        return cols, None
    return keys, [g for _, g in (rows.groupby(keys, dropna=False, sort=False) if keys else [(None, rows)])]


def best_by_metric(ok: pd.DataFrame, metric: str, top: int = 5, varying: list[str] | None = None) -> list[dict]:
    """The best configurations by `metric`. Repeats of one configuration (seeds) are ranked by their mean,
    shown with their spread and count; `job` is then the configuration's best repeat."""
    ranked = ok.assign(_m=numeric_column(ok, metric) * _direction(metric),
                       _w=numeric_column(ok, "wall_s")).dropna(subset=["_m"])
    keys, groups = configurations(ok, ranked, varying)
    if groups is None:  # no repeats: jobs are configurations
        ranked = ranked.sort_values(["_m", "job"], ascending=[False, True]).head(top)
        return [{"job": str(r["job"]), metric: _plain(r[metric]), "wall_s": _plain(r.get("wall_s")),
                 "config": _config(r, keys)} for _, r in ranked.iterrows()]
    out = []
    for g in groups:
        g = g.sort_values(["_m", "job"], ascending=[False, True])
        m = numeric_column(g, metric)
        out.append({"job": str(g["job"].iloc[0]), metric: _plain(m.mean()), "std": _plain(m.std(ddof=1)),
                    "n": len(g), "wall_s": _plain(g["_w"].mean()), "config": _config(g.iloc[0], keys),
                    "jobs": [str(j) for j in g["job"]]})
    return sorted(out, key=lambda d: (-_direction(metric) * d[metric], d["job"]))[:top]


PAIRED_ALPHA = 0.05  # paired_p_values: a difference with p below it is told apart from noise
JOB_SCORES = ("roc_auc", "roc_auc_se", "wall_s", "samples_per_s", "average_precision", "csi", "bss", "reliability",
              "val_roc_auc", "val_best_epoch")


def jobs_table(ok: pd.DataFrame, metric: str, p_values: dict[str, float] | None = None) -> pd.DataFrame:
    """Every successful job, best by `metric` first: its varying settings and its main scores; `p_values`
    (job: `paired_p_values`' p against the first job) as `roc_auc_p`, after the ROC AUC's standard error."""
    return _jobs_shown(_jobs_ranked(ok, metric, varying_hparams(ok)), p_values)


def _jobs_ranked(ok: pd.DataFrame, metric: str, varying: list[str]) -> pd.DataFrame:
    """`jobs_table` before its p-values and with every column."""
    scores = [c for c in dict.fromkeys([metric, *JOB_SCORES]) if c in ok.columns and c != "job"]
    table = ok[["job", *[c for c in varying if c not in scores], *scores]].copy()
    table["_m"] = numeric_column(ok, metric) * _direction(metric) if metric in ok.columns else 0.0
    return table.sort_values(["_m", "job"], ascending=[False, True], na_position="last").drop(columns="_m")


def _jobs_shown(table: pd.DataFrame, p_values: dict[str, float] | None) -> pd.DataFrame:
    if p_values:
        table = table.copy()
        at = table.columns.get_loc("roc_auc_se") + 1 if "roc_auc_se" in table.columns else len(table.columns)
        table.insert(at, "roc_auc_p", [p_values.get(str(j), math.nan) for j in table["job"]])
    return table.loc[:, [c == "job" or table[c].notna().any() for c in table.columns]]  # none empty throughout


def test_forecasts(sweep: Sweep, jobs: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """job: (probabilities, labels) on the test set, from its test_predictions.npz, for the jobs that have one."""
    out = {}
    for job in jobs:
        npz = sweep.job_dir(job) / "test_predictions.npz"
        if npz.is_file():
            with np.load(npz) as z:
                out[job] = (np.asarray(z["prob"], float), np.asarray(z["label"], int))
    return out


def paired_p_values(forecasts: dict[str, tuple[np.ndarray, np.ndarray]], jobs: list[str]) -> dict[str, float]:
    """For each job after the first (`jobs`, best first), DeLong's p-value for the difference between its test
    ROC AUC and the first job's (`forecasts`: `test_forecasts`): paired, the same cases scored by both. Jobs
    whose test labels differ from the first's (another test set: other data settings) are left out."""
    if not jobs or jobs[0] not in forecasts:
        return {}
    first, label = forecasts[jobs[0]]
    if not 0 < label.sum() < len(label):
        return {}
    others = {job: prob for job, (prob, other) in forecasts.items() if job != jobs[0] and np.array_equal(other, label)}
    return {job: d[2] for job, d in zip(others, delong_against(first, list(others.values()), label))}


def _time_to(sweep: Sweep, histories: dict[str, pd.DataFrame], column: str, target: float,
             varying: list[str]) -> list[dict]:
    """Jobs whose per-epoch `column` reaches `target`, soonest first: summed epoch times up to that epoch."""
    ok, out = sweep.ok, []
    for _, r in ok.iterrows():
        h = histories.get(str(r["job"]))
        if h is None or "epoch_s" not in h.columns or column not in h.columns:
            continue
        reached = np.flatnonzero(h[column].to_numpy(float) >= target)
        if reached.size == 0:
            continue
        i = int(reached[0])
        if h["epoch_s"].iloc[: i + 1].isna().any():
            continue
        out.append({"job": str(r["job"]), "seconds": float(h["epoch_s"].iloc[: i + 1].sum()),
                    "epochs": i + 1, column: float(h[column].iloc[i]), "config": _config(r, varying)})
    return sorted(out, key=lambda d: (d["seconds"], d["job"]))


def by_configuration(ok: pd.DataFrame, reached: list[dict], varying: list[str] | None = None) -> list[dict]:
    """`reached` (jobs that reached a target, from `_time_to`) ranked by configuration when the jobs hold
    repeats (seeds): a configuration's seconds are the mean over its repeats that reached the target, with
    their spread; those that every repeat reached come first, so one lucky seed does not win. `job` is the
    configuration's soonest repeat, `jobs` all of them (those that reached it first). Without repeats,
    `reached` as it is."""
    keys, groups = configurations(ok, ok, varying)
    if groups is None or not reached:
        return reached
    by_job, out = {t["job"]: t for t in reached}, []
    for g in groups:
        jobs = [str(j) for j in g["job"]]
        hit = [by_job[j] for j in sorted(set(jobs) & set(by_job), key=lambda j: (by_job[j]["seconds"], j))]
        if not hit:
            continue
        seconds, epochs = [t["seconds"] for t in hit], [t["epochs"] for t in hit]
        out.append({"job": hit[0]["job"], "seconds": float(np.mean(seconds)),
                    "std": float(np.std(seconds, ddof=1)) if len(hit) > 1 else None,
                    "n": len(jobs), "reached": len(hit), "epochs": max(epochs), "epochs_min": min(epochs),
                    "config": _config(g.iloc[0], keys),
                    "jobs": [t["job"] for t in hit] + [j for j in jobs if j not in by_job]})
    return sorted(out, key=lambda d: (d["reached"] < d["n"], d["seconds"], d["job"]))


def time_to_accuracy(sweep: Sweep, target: float, histories: dict[str, pd.DataFrame],
                     varying: list[str] | None = None) -> list[dict]:
    """Jobs whose training accuracy reaches `target`, fastest first (the paper's question)."""
    return _time_to(sweep, histories, "train_acc", target, _varying(sweep.ok, varying))


def skill_curves(histories: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The histories that hold a validation ROC AUC per epoch (runs with `score_epochs`) and epoch times."""
    return {j: h for j, h in histories.items()
            if {"val_roc_auc", "epoch_s"} <= set(h.columns) and h["val_roc_auc"].notna().any()}


def soonest_to_skill(sweep: Sweep, curves: dict[str, pd.DataFrame], skill: float | None = None,
                     varying: list[str] | None = None) -> dict | None:
    """Which configuration reaches skill soonest: training seconds until a job's validation ROC AUC, scored
    after every epoch, first reaches the target: `skill`, or else the best any job (any configuration, on
    average over its repeats: `_best_skill`) reached at any epoch less one standard error of it (Hanley and
    McNeil's, from the validation split's positives and negatives: the one-standard-error rule; differences
    smaller than that are noise). A target at or below chance (0.5) is no skill: then no job is listed.
    `curves`: the jobs' histories with those scores (`skill_curves`)."""
    if not curves:
        return None
    varying = _varying(sweep.ok, varying)
    best_job, best, repeats = _best_skill(sweep.ok, curves, varying)
    row = sweep.ok.loc[sweep.ok["job"].astype(str) == best_job]
    pos = numeric_column(row, "val_positives").iloc[0] if len(row) else math.nan
    neg = numeric_column(row, "val_n").iloc[0] - pos if len(row) else math.nan
    se = roc_auc_se(best, int(pos), int(neg)) if np.isfinite(pos) and np.isfinite(neg) else math.nan
    target = float(skill) if skill is not None else best - (se if np.isfinite(se) else 0.01 * best)
    jobs = _time_to(sweep, curves, "val_roc_auc", target, varying) if target > 0.5 else []
    return {"metric": "val_roc_auc", "best": best, "best_job": best_job, "best_repeats": repeats,
            "se": None if math.isnan(se) else se, "target": target,
            "target_from": "skill" if skill is not None else "best less one standard error", "chance": 0.5,
            "jobs": jobs}


def _best_skill(ok: pd.DataFrame, curves: dict[str, pd.DataFrame], varying: list[str]) -> tuple[str, float, int]:
    """(job, best, repeats): the highest validation ROC AUC after any epoch, of a job or, where the jobs repeat
    configurations (seeds), of a configuration's mean over its repeats epoch by epoch (one lucky seed does not
    set the target), with that configuration's first job and how many repeats the mean is of."""
    _, groups = configurations(ok, ok, varying)
    if groups is None:
        job, h = max(curves.items(), key=lambda kv: float(kv[1]["val_roc_auc"].max()))
        return job, float(h["val_roc_auc"].max()), 1
    best = ("", -math.inf, 0)
    for g in groups:
        jobs = [str(j) for j in g["job"] if str(j) in curves]
        if jobs:
            mean = pd.concat([curves[j]["val_roc_auc"].reset_index(drop=True) for j in jobs], axis=1).mean(axis=1)
            if float(mean.max()) > best[1]:
                best = (jobs[0], float(mean.max()), len(jobs))
    return best


def scaling(ok: pd.DataFrame, varying: list[str] | None = None) -> pd.DataFrame:
    """Per job, how its wall time compares with the same settings on fewer devices: `speedup` = the mean wall
    time of those settings (repeats averaged) on the fewest devices the sweep ran them on, over this job's;
    `scaling_efficiency` = speedup / (its devices / those devices): 1 is perfect scaling. NaN where the
    settings ran on one device count only."""
    out = pd.DataFrame(np.nan, index=ok.index, columns=SCALING)
    frame = ok.assign(_d=numeric_column(ok, "devices"), _w=numeric_column(ok, "wall_s")).dropna(subset=["_d", "_w"])
    keys = [c for c in _varying(ok, varying) if not is_repeat(c) and c not in ("gpus", "trainer.devices")]
    for _, g in (frame.groupby(keys, dropna=False, sort=False) if keys else [(None, frame)]):
        if g["_d"].nunique() < 2:
            continue
        fewest = g["_d"].min()
        speedup = g.loc[g["_d"] == fewest, "_w"].mean() / g["_w"]
        out.loc[g.index, "speedup"] = speedup
        out.loc[g.index, "scaling_efficiency"] = speedup / (g["_d"] / fewest)
    return out


def constant_forecast_accuracy(ok: pd.DataFrame) -> float | None:
    """The highest training accuracy a constant forecast reaches on the jobs' training sets (as trained)."""
    rate = numeric_column(ok, "train_base_rate")
    if not rate.notna().any():
        rate = numeric_column(ok, "climatology")
    rate = rate.dropna()
    return None if rate.empty else float(np.maximum(rate, 1 - rate).max())


def no_validation_split(ok: pd.DataFrame) -> bool:
    """Whether the jobs are known to have no validation split: `data.split.val_fraction` 0 (or a validation
    split of no cases), or test scores without validation ones. Jobs without scores (failed ones) tell nothing."""
    fraction = numeric_column(ok, "data.split.val_fraction").dropna()
    if len(fraction):
        return bool((fraction == 0).all())
    val_n = numeric_column(ok, "val_n").dropna()
    if len(val_n):
        return bool((val_n == 0).all())
    scored = ok.loc[numeric_column(ok, "roc_auc").notna() | numeric_column(ok, "accuracy").notna()]
    return len(scored) > 0 and not any(numeric_column(scored, c).notna().any() for c in ("val_roc_auc", "val_n"))


def _constant_note(constant: float, target: float, single: bool, sts: dict | None, tts: dict | None,
                   metric: str) -> str:
    """The note that a constant "no" forecast already reaches the training-accuracy target; on a sweep, it names
    the cards that show skill instead, or says none does."""
    if single:
        return (f"A constant forecast (never a tornado) scores {number_text(constant)} training accuracy on this "
                "run's training set: its training accuracy says little of skill. The ROC AUC does (0.5 is chance).")
    head = (f"A constant forecast (never a tornado) scores {number_text(constant)} training accuracy on these "
            f"training sets, at or above target={number_text(target)}: reaching the target says nothing of skill "
            "here.")
    skill_card = metric.removeprefix("val_") in SKILL_SCORES
    cards = ([] if not sts or not sts["jobs"] else ['"soonest to skill"']) + (
        ['"fastest within 1% of the best"'] if skill_card and tts and tts["job"] is not None else [])
    none = (sts and sts["target"] <= sts["chance"]) or (tts and tts["job"] is None)
    if len(cards) == 2:
        return f"{head} The skill cards ({', '.join(cards)}) do."
    if cards:
        return f"{head} The {cards[0]} card does."
    if none:
        return f"{head} Nor does any job show skill: the skill cards find no job above the no-skill level."
    return head


def _auc_se(ok: pd.DataFrame, metric: str) -> pd.Series:
    """Each job's Hanley and McNeil standard error of its ROC AUC `metric`, from the cases it was scored on
    (validation's for `val_roc_auc`); 0 where they are unknown."""
    scored = metric[:-len("roc_auc")]
    auc, pos, n = (numeric_column(ok, c) for c in (metric, f"{scored}positives", f"{scored}n"))
    se = [roc_auc_se(a, int(p), int(k - p)) if np.isfinite([a, p, k]).all() else 0.0 for a, p, k in zip(auc, pos, n)]
    return pd.Series(se, index=ok.index).fillna(0.0)


def time_to_skill(ok: pd.DataFrame, metric: str, tolerance: float = 0.01,
                  varying: list[str] | None = None) -> dict | None:
    """The fastest job (wall_s) whose `metric` is within `tolerance` (relative) of the best. Where the jobs
    repeat configurations (seeds), the fastest configuration by its repeats' means: `n` and `jobs` say which."""
    m, wall = numeric_column(ok, metric), numeric_column(ok, "wall_s")
    level, level_name = no_skill(ok, metric) or (pd.Series(-math.inf, index=ok.index), None)
    # a ROC AUC within one standard error of chance is no skill, as for the soonest-to-skill card
    se = _auc_se(ok, metric) if metric.removeprefix("val_") == "roc_auc" else pd.Series(0.0, index=ok.index)
    good = ok.assign(_m=m, _w=wall, _ns=level.fillna(-math.inf), _se=se).dropna(subset=["_m", "_w"])
    if good.empty:
        return None
    keys, groups = configurations(ok, good, varying)
    if groups is not None:  # one row per configuration: its fastest repeat's, with the repeats' means
        rows = []
        for g in (g.sort_values(["_w", "job"]) for g in groups):
            rows.append(g.iloc[0].to_dict() | {"_m": g["_m"].mean(), "_w": g["_w"].mean(), "_ns": g["_ns"].mean(),
                                               "_se": g["_se"].mean(), "n": len(g),
                                               "jobs": [str(j) for j in g["job"]]})
        good = pd.DataFrame(rows)
    top = good.loc[good["_m"].idxmax() if _direction(metric) > 0 else good["_m"].idxmin()]
    best = top["_m"]
    se = top["_se"]
    if best - se <= top["_ns"]:  # the best job has no skill
        return {"job": None, metric: None, "best": _plain(best), "wall_s": None, "tolerance": tolerance,
                "config": {}, "no_skill": _plain(top["_ns"]),
                "no_skill_name": level_name + (f", within one standard error ({se:.2g})" if se else "")}
    near = good["_m"] >= best - tolerance * abs(best) if _direction(metric) > 0 else \
        good["_m"] <= best + tolerance * abs(best)
    r = good.loc[near].sort_values(["_w", "job"]).iloc[0]
    out = {"job": str(r["job"]), metric: _plain(r["_m"]), "best": _plain(best), "wall_s": _plain(r["_w"]),
           "tolerance": tolerance, "config": _config(r, keys)}
    return out | ({"n": int(r["n"]), "jobs": r["jobs"]} if groups is not None else {})


# ------------------------------------------------------------------------------------------------------ html
CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Liberation Sans",sans-serif;color:#1f2937;
background:#f8fafc;margin:0}
main{max-width:1180px;margin:0 auto;padding:24px 28px 64px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:36px 0 12px;padding-bottom:6px;
border-bottom:2px solid #e2e8f0}h3{font-size:16px;margin:20px 0 8px}
.sub{color:#64748b;margin:0 0 12px;word-break:break-all}
.chips span{display:inline-block;background:#e2e8f0;border-radius:999px;padding:2px 12px;margin:0 6px 6px 0;
font-size:13px}.chips .okc{background:#dcfce7}.chips .bad{background:#fee2e2}.chips .run{background:#fef3c7}
.partial{background:#fef3c7;border:1px solid #f59e0b;border-radius:8px;padding:10px 14px;margin:14px 0;
font-weight:600}
nav a{margin-right:14px;color:#2563eb;text-decoration:none}
.note{color:#475569;font-size:13px;margin:4px 0}.warn{color:#9a3412;font-size:13px}.empty{color:#b91c1c;font-weight:600}
.tables{display:flex;flex-wrap:wrap;gap:18px;overflow-x:auto}.wide{overflow-x:auto}
table{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px rgba(0,0,0,.06);font-size:13px}
caption{caption-side:top;text-align:left;font-weight:600;padding:4px 2px}
th,td{border:1px solid #e2e8f0;padding:5px 9px;vertical-align:top}
th{background:#f1f5f9;text-align:right}th.corner{text-align:left;color:#475569;font-weight:500}
td{text-align:right;font-variant-numeric:tabular-nums}
td span{display:block}.v{font-weight:600}.sd{color:#475569;font-size:11px}.pp{color:#9a3412;font-size:11px}
table.list td{text-align:left}table.list th{text-align:left}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));gap:14px}
.card{background:#fff;border:1px solid #e2e8f0;border-radius:10px;padding:12px 16px}
.card h3{margin-top:0}.card p{margin:4px 0}
figure{background:#fff;border:1px solid #e2e8f0;border-radius:10px;padding:12px;margin:0 0 18px}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}figcaption{color:#475569;font-size:13px}
figure.panels{overflow-x:auto}figure.panels img{min-width:900px}
code,.err{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12px}
.err{white-space:pre-wrap;color:#991b1b}
.long{max-height:80vh;overflow:auto}.long thead th{position:sticky;top:0}
@media print{body{background:#fff}nav{display:none}.long{max-height:none}.wide,.tables{overflow:visible}
figure.panels img{min-width:0}
.long thead th{position:static}figure,.card,tr{break-inside:avoid}h2,h3{break-after:avoid}}
"""
LONG_LIST = 25  # a list of more jobs scrolls in a box of its own, its header kept in view



def _list_html(head: str, rows: str, count: int) -> str:
    """A table of jobs (`head`: its header cells, `rows`: its rows, `count` of them) in a box as wide as the page."""
    return (f'<div class="wide{" long" if count > LONG_LIST else ""}"><table class="list"><thead><tr>{head}</tr>'
            f"</thead><tbody>{rows}</tbody></table></div>")


def _epochs(n: int) -> str:
    return f"{n} epoch{'' if n == 1 else 's'}"


def _cfg_text(cfg: dict) -> str:
    return settings_text(cfg) or "(no varying settings)"


def _reached_html(t: dict) -> str:
    seconds, spread, detail, who = map(html.escape, _reached_text(t))
    return f"<p><b>{seconds}</b>{spread} ({detail}) · {who}<br><code>{html.escape(_cfg_text(t['config']))}</code></p>"


def _best_cards(summary: dict, metric: str, target: float) -> list[str]:
    """The cards of the sweep's best configurations: by `metric`, fastest to `target` training accuracy, soonest
    to skill, fastest within 1% of the best."""
    e = html.escape
    body = ['<h2 id="best">Best configurations</h2>', '<div class="cards">']
    best = summary["best_by_metric"]
    card = f"<h3>Best by {e(metric)}</h3>"
    if best:
        card += "".join(f"<p><b>{e(number_text(b[metric]))}</b>{e(_repeats_text(b))} · {e(_jobs_text(b))} · "
                        f"wall {e(number_text(b['wall_s']))} s<br>"
                        f"<code>{e(_cfg_text(b['config']))}</code></p>" for b in best[:3])
    else:
        card += f"<p>No successful job reports {e(metric)}.</p>"
    if summary.get("paired_roc_auc"):
        card += f'<p class="note">{e(_paired_text(summary["paired_roc_auc"]))}</p>'
    body.append(f'<div class="card">{card}</div>')
    tta = summary["time_to_accuracy"]
    card = f"<h3>Fastest to {e(number_text(target))} training accuracy</h3>"
    if summary.get("constant_forecast_accuracy") is not None and summary["constant_forecast_accuracy"] >= target:
        card += (f'<p class="warn">A constant "no" forecast already scores '
                 f'{e(number_text(summary["constant_forecast_accuracy"]))}: this says nothing of skill.</p>')
    if tta:
        card += "".join(_reached_html(t) for t in tta[:3])
    else:
        card += "<p>No job reached it (or no per-epoch history was found).</p>"
    body.append(f'<div class="card">{card}</div>')
    sts = summary["soonest_to_skill"]
    if sts:
        card = (f"<h3>Soonest to skill: validation ROC AUC ≥ {e(number_text(sts['target']))}</h3>"
                f"<p class=\"note\">{e(_skill_target_text(sts))}; summed epoch times up to that epoch</p>")
        card += "".join(_reached_html(t) for t in sts["jobs"][:3])
        if sts["jobs"] and sts.get("reached"):
            card += f'<p class="note">{e(_reached_count_text(sts))}</p>'
        if sts["target"] <= sts["chance"]:
            card += (f"<p class=\"warn\">No skill: the target is not above chance ({sts['chance']}); no job is "
                     "listed.</p>")
        elif not sts["jobs"]:
            card += "<p>No job reached it.</p>"
        body.append(f'<div class="card">{card}</div>')
    tts = summary["time_to_skill"]
    card = f"<h3>Fastest within 1% of the best {e(metric)}</h3>"
    if tts and tts["job"] is None:
        card += (f'<p class="warn">No skill: the best {e(metric)}, {e(number_text(tts["best"]))}, is not above '
                 f'{e(number_text(tts["no_skill"]))} ({e(tts.get("no_skill_name") or "no skill")}).</p>')
    elif tts:
        card += ('<p class="note">wall time of the whole training run</p>'
                 f"<p><b>{e(number_text(tts['wall_s']))} s</b>{e(_repeats_text(tts, spread=False))} · "
                 f"{e(metric)} {e(number_text(tts[metric]))} (best {e(number_text(tts['best']))}) · "
                 f"{e(_jobs_text(tts))}<br>"
                 f"<code>{e(_cfg_text(tts['config']))}</code></p>")
    else:
        card += "<p>No successful job has both a wall time and this metric.</p>"
    body += [f'<div class="card">{card}</div>', "</div>"]
    return body


def render_html(sweep: Sweep, ts: TableSet, summary: dict, images: dict[str, tuple[str, str, bytes]],
                metric: str, target: float, links: dict[str, str] | None = None,
                jobs: pd.DataFrame | None = None) -> str:
    """The sweep's page; `links`: {job: the address of its own page, relative to this one}; `jobs`: its Jobs
    table (`jobs_table`), made from the summary where not given."""
    e = html.escape
    df, ok = sweep.df, sweep.ok
    failed = _problems(df)
    counts = (f'<div class="chips"><span>{counted(len(df), "job")}</span><span class="okc">{len(ok)} ok</span>'
              f'<span class="bad">{len(failed)} failed</span><span class="run">{len(sweep.running)} running</span>'
              + (f'<span class="run">{len(sweep.waiting)} not started</span>' if sweep.waiting else "") + "</div>")
    title = f"{'Sweeps' if sweep.parts else 'Sweep'} report: {sweep.name}"  # a single run: runpage.render
    where = ", ".join(str(p.resolve()) for p in sweep.parts or [sweep.dir])
    body = [f"<h1>{e(title)}</h1>", f'<p class="sub">{e(where)}</p>', counts]
    if sweep.partial:
        body.append(f'<div class="partial" id="partial">Partial report: the sweep is still running '
                    f"({_unfinished_text(sweep)}). Tables and plots cover the finished jobs only.</div>")
    if ok.empty:
        body.append('<p class="empty">No job finished successfully: there are no tables or plots. '
                    "The failed jobs and their errors are listed below.</p>")
    body.append("<nav>" + ("" if ok.empty else '<a href="#best">Best configurations</a><a href="#tables">Tables</a>'
                                                '<a href="#plots">Plots</a>')
                + '<a href="#jobs">Jobs</a><a href="#failed">Failed jobs</a></nav>')
    if not ok.empty:  # else the banner says there is nothing to rank, tabulate or plot
        body += _best_cards(summary, metric, target)
        body += ['<h2 id="tables">Tables</h2>', to_html_tables(ts), '<h2 id="plots">Plots</h2>']
        body += [runpage.figure(alt, caption, png) for caption, alt, png in images.values()]
        if not images:
            body.append('<p class="note">No plots: no successful job with the data they need.</p>')
    body += [f"<p class=\"note\">{e(n)}</p>" for n in summary["notes"]]
    body.append('<h2 id="jobs">Jobs</h2>')
    if ok.empty:
        body.append('<p class="note">No job finished successfully.</p>')
    else:
        paired = summary.get("paired_roc_auc")
        jobs = jobs_table(ok, metric, paired["p"] if paired else None) if jobs is None else jobs
        # a long column name may break after its underscores, so that the table fits a narrow screen or paper
        head = "".join(f"<th>{e(c).replace('_', '_<wbr>')}</th>" for c in jobs.columns)
        links = links or {}
        rows = "".join("<tr>" + "".join(f'<td><a href="{e(links[v])}">{e(v)}</a></td>' if c == "job" and v in links
                                        else f"<td>{e(_cell(v))}</td>" for c, v in zip(jobs.columns, r)) + "</tr>"
                       for r in jobs.astype({"job": str}).itertuples(index=False))
        own = (f"A linked job opens its own page ({len(links)} of {len(jobs)}; <code>pages=N</code> writes the best "
               "N, <code>pages=all</code> every one)." if links else
               "<code>pages=N</code> writes the best N jobs' own pages, linked here.")
        body.append(f'<p class="note">Every successful job, best by {e(metric)} first; results.csv holds every '
                    f"figure. {own}"
                    + (f" roc_auc_p: DeLong's p-value for the difference between the job's test ROC AUC "
                                  f"and job {e(paired['reference'])}'s (the first), scored on the same cases: below "
                                  f"{paired['alpha']}, told apart beyond the test cases' sampling noise (not beyond "
                                  "the spread between seeds); above, within that noise." if paired else "")
                    + "</p>" + _list_html(head, rows, len(jobs)))
    body.append('<h2 id="failed">Failed jobs</h2>')
    if len(failed):
        rows = "".join(f"<tr><td>{e(f['job'])}</td><td><code>{e(_cfg_text(f['config']))}</code></td>"
                       f"<td>{e(f['status'])}</td><td class=\"err\">{e(_text(f['error']))}</td></tr>"
                       for f in summary["failed_jobs"])
        body.append(_list_html("<th>job</th><th>settings</th><th>status</th><th>error</th>", rows, len(failed)))
    else:
        body.append('<p class="note">No job failed.</p>')
    if sweep.running:
        body.append(f'<p class="note">Still running: {e(", ".join(sweep.running))}</p>')
    if sweep.waiting:
        body.append(f'<p class="note">Not started yet: {e(", ".join(sweep.waiting))}</p>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{e(title)}</title><style>{CSS}</style></head>"
            f"<body><main>\n" + "\n".join(body) + "\n</main></body></html>\n")


# ------------------------------------------------------------------------------------------------- building
def _repeats_text(b: dict, spread: bool = True) -> str:
    """' ± spread (mean of n repeats)' for a configuration ranked over its repeats, else nothing."""
    if b.get("n", 1) < 2:
        return ""
    return (f" ± {number_text(b['std'], 2)}" if spread else "") + f" (mean of {b['n']} repeats)"


def _jobs_text(b: dict) -> str:
    return f"jobs {', '.join(b['jobs'])}" if len(b.get("jobs", [])) > 1 else f"job {b['job']}"


def _reached_text(t: dict) -> tuple[str, str, str, str]:
    """A `by_configuration` entry as (seconds, spread, detail, who): ("3 s", "", "2 epochs", "job 4") for one job,
    ("3.5 s", " ± 0.71", "mean of 2 repeats, 2–3 epochs", "jobs 4, 9") for a configuration's repeats."""
    if "n" not in t:
        return f"{number_text(t['seconds'])} s", "", _epochs(t["epochs"]), _jobs_text(t)
    spread = f" ± {number_text(t['std'], 2)}" if t["std"] is not None else ""
    lo, hi = t["epochs_min"], t["epochs"]
    epochs = _epochs(hi) if lo == hi else f"{lo}–{hi} epochs"
    how = (f"mean of {t['n']} repeats" if t["reached"] == t["n"] else
           f"{t['reached']} of {t['n']} repeats reached it, their mean")
    return f"{number_text(t['seconds'])} s", spread, f"{how}, {epochs}", _jobs_text(t)


def _learning_alt(history: pd.DataFrame, who: str, scored: int | None) -> str:
    """The learning curves' alt text: whose, over how many epochs, which curves, the scored epoch."""
    names = [title for title, _ in learning_panels(history)]
    shown = ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else "".join(names)
    return (f"Learning curves of {who} over {_epochs(len(history))}" + (f": {shown} against epoch" if names else "")
            + (f"; epoch {scored}, whose weights were scored, marked" if scored is not None else ""))


def _some(names: list[str], most: int) -> str:
    """The first `most` of `names` (which may hold commas), and how many more there are."""
    return "; ".join(names[:most]) + (f"; {len(names) - most} more" if len(names) > most else "")


def _curves_alt(spec: tuple) -> str:
    """A training-accuracy figure's alt text (`curve_figures`' spec): its title, then each panel's curves."""
    title, panels = spec[0], spec[1]
    parts = [f"{'Panel ' + ptitle if ptitle else 'Curves'}: {_some(list(dict.fromkeys(c[0] for c in curves)), 6)}."
             for ptitle, curves in panels[:4]]
    more = f" {counted(len(panels) - 4, 'more panel')}." if len(panels) > 4 else ""
    return f"{title}: training accuracy against epoch. " + " ".join(parts) + more


def _skill_alt(shown: list[str], sts: dict) -> str:
    reached = (f"job {sts['jobs'][0]['job']} reaches it soonest" if sts["jobs"] else "no job reaches it")
    return (f"Validation ROC AUC after each epoch against training seconds for {counted(len(shown), 'job')} "
            f"({', '.join(shown)}), with the skill target {number_text(sts['target'])} as a dashed line: {reached}")


def _wall_alt(ok: pd.DataFrame, group: str | None) -> str:
    ok, line, panel = wall_layout(ok, group)
    sizes = sorted(ok["_b"].unique())
    return (f"Wall time against batch size ({label_text(sizes[0])} to {label_text(sizes[-1])}) for "
            f"{counted(len(ok), 'job')}" + (f", one line per {line}" if line else "")
            + (f", one panel per {panel}" if panel else ""))


def _verification_alts(prob: np.ndarray, label: np.ndarray, who: str, cut: float | None) -> dict[str, str]:
    """The alt texts of `plot_verification`'s diagrams of `who`'s test forecasts."""
    cases = f"on the test set ({len(label):,} cases, {int(label.sum()):,} tornadic)"
    chosen = cut is not None and math.isfinite(cut)
    return {"roc": f"ROC curve of {who} {cases}: true positive rate against false positive rate, AUC "
                   f"{_auc_text((prob, label))}",
            "reliability": f"Reliability diagram of {who} {cases}: observed tornado frequency against forecast "
                           f"probability in {RELIABILITY_BINS} bins, with how many forecasts fall in each bin",
            "performance": f"Performance diagram of {who} {cases}: probability of detection against success ratio "
                           "at every threshold" + (f", the threshold {number_text(cut, 3)} chosen on validation "
                                                   "marked" if chosen else "")}


def _reached_count_text(sts: dict) -> str:
    r = sts["reached"]
    return f"{r['n']} of {counted(r['of'], r['what'])} reached it within their epochs"


def _skill_target_text(sts: dict) -> str:
    who = ("any job" if sts.get("best_repeats", 1) == 1 else
           f"a configuration on average over its {sts['best_repeats']} repeats")
    if sts["target_from"] == "skill":
        return f"the target given (skill=); the best {who} reached after any epoch: {number_text(sts['best'])}"
    se = f"one standard error, {number_text(sts['se'])}" if sts["se"] is not None else "1% (no standard error)"
    return f"the best {who} reached after any epoch, {number_text(sts['best'])}, less {se}"


def _unfinished_text(sweep: Sweep) -> str:
    waiting = f", {len(sweep.waiting)} not started" if sweep.waiting else ""
    return f"jobs: {len(sweep.running)} running{waiting}"


def _problems(df: pd.DataFrame) -> pd.DataFrame:
    """Jobs that neither finished well nor are still running (failed, unreadable result.json, ...)."""
    return df.loc[~df["status"].astype(str).isin(["ok", "running"])]


def _cell(v: Any) -> str:
    return number_text(float(v)) if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) else _text(v)


def _text(v: Any) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def _check_folder(d: Path) -> None:
    if not d.is_dir():
        raise TornadoError(f"{d}: {'not a folder' if d.exists() else 'no such folder'} (a sweep's or a run's)")


def _check_column(df: pd.DataFrame, key: str, col: str, known: bool = False) -> None:
    names = [str(c) for c in df.columns] + (METRICS + TIMES + RUN_INFO + [SKILL_S] + SCALING if known else [])
    if col not in names:
        close = closest(col, names)
        hint = f" (did you mean {close}?)" if close else ""
        raise TornadoError(f"{key}={col}: no such column in results.csv{hint}")


def build_report(sweep_dir: str | Path | list, rows: str = "batch_size", cols: str = "data_multiplier",
                 group: str | None = "epochs", value: str = "wall_s", agg: str = "mean", metric: str = "auto",
                 target: float = 0.93, skill: float | str = "auto", paper: str = "auto", pages: str | int = 3,
                 out: str | Path | None = None, up: str | Path | None = None,
                 drawn: dict[str, dict[str, bytes]] | None = None, stamp: str | None = None) -> dict[str, Path]:
    """Write tables, plots, summary.json and report.html; return {file name: path} of what was written.
    `sweep_dir`: a sweep's (or run's) folder, or a list of them read as one (`load_sweeps`; needs `out`).
    `pages`: how many jobs, best first, get their own page written too (`job_pages`; all, none or a number).
    `up`: the sweep's page a run's page links back to; `drawn`: a run's ROC curve, reliability and performance
    diagrams as its sweep's report drew them (`plot_verification`), used rather than drawn again; `stamp`: the
    digest of a run page's inputs (`_page_inputs`), kept in the page."""
    dirs = list(sweep_dir) if isinstance(sweep_dir, (list, tuple)) else [sweep_dir]
    for d in dirs:
        _check_folder(Path(d))
    if len(dirs) > 1 and not out:
        raise TornadoError(f"{len(dirs)} sweeps: out=DIR says where their report goes")
    group = None if group in (None, "none") else group
    if agg not in AGGS:
        raise TornadoError(f"agg={agg}: must be one of {', '.join(AGGS)}")
    if not 0 < float(target) <= 1:
        raise TornadoError(f"target={target}: must be a training accuracy in (0, 1]")
    try:
        skill = None if skill in ("auto", None) else float(skill)
    except ValueError:
        raise TornadoError(f"skill={skill}: must be auto or a validation ROC AUC in (0.5, 1]") from None
    if skill is not None and not 0.5 < skill <= 1:
        raise TornadoError(f"skill={skill}: must be auto or a validation ROC AUC in (0.5, 1]")
    if paper not in ("auto", "none") and paper not in PAPER_TABLES:
        raise TornadoError(f"paper={paper}: must be auto, none or one of {', '.join(PAPER_TABLES)}")
    if paper in PAPER_TABLES and value in SCALING and "gpus" not in PAPER_TABLES[paper][1]:
        raise TornadoError(f"paper={paper}: value={value} compares with a table by GPU count (table6, table7)")
    if paper in PAPER_TABLES and PAPER_TABLES[paper][0] != value and value not in SCALING:
        raise TornadoError(f"paper={paper}: that table holds {PAPER_TABLES[paper][0]}, not {value}")
    if str(pages) not in ("all", "none") and not str(pages).isdigit():
        raise TornadoError(f"pages={pages}: must be all, none or how many jobs (best first) get their own page")
    if len({rows, cols, group} - {None}) != len([c for c in (rows, cols, group) if c]):
        raise TornadoError(f"rows={rows} cols={cols} group={group}: must be different columns")
    sweep = load_sweeps(dirs)
    df = sweep.df
    tabulate = not sweep.single  # a run's own page has no tables: rows, cols, group and value shape nothing
    for key, col in (("rows", rows), ("cols", cols), ("group", group), ("value", value)):
        if col and tabulate:
            _check_column(df, key, col, known=key == "value")
    if metric == "auto":  # choose on the validation split where the jobs have one: never rank on the test set
        metric = "val_roc_auc" if numeric_column(sweep.ok, "val_roc_auc").notna().any() else "roc_auc"
    _check_column(df, "metric", metric, known=True)
    if tabulate and value in df.columns and df[value].notna().any() and not pd.api.types.is_numeric_dtype(df[value]):
        raise TornadoError(f"value={value}: not a numeric column")

    report_dir = Path(out) if out else sweep.dir / "report"
    html_path = report_dir / "report.html" if out else sweep.dir / "report.html"
    for folder in dict.fromkeys([html_path.parent, report_dir]):
        writable(folder, "" if out else "; out=DIR writes it elsewhere")
    written: dict[str, Path] = {}

    def put(name: str, data: bytes | str) -> None:
        write_atomic(report_dir / name, data)
        written[name] = report_dir / name

    varying = varying_hparams(sweep.ok)  # the settings that tell the successful jobs apart, for every analysis
    # The paper's layout where nothing of it varies (a search over lr): tables by the settings that do vary.
    own = [c for c in varying if not is_repeat(c)]
    relaid = (tabulate and bool(own) and (rows, cols, group) == (DEFAULTS["rows"], DEFAULTS["cols"], DEFAULTS["group"])
              and not {rows, cols, group} & set(varying))
    if relaid:
        rows, cols = own[0], own[1] if len(own) > 1 else cols
    histories = {str(j): h for j in sweep.ok["job"] if (h := load_history(sweep, str(j))) is not None}
    curves = skill_curves(histories)
    sts = soonest_to_skill(sweep, curves, skill, varying)
    if sts:  # a column for the tables (value=skill_s): inf ("never") where a job with scores never reached it
        seconds = {t["job"]: t["seconds"] for t in sts["jobs"]}
        df[SKILL_S] = [seconds.get(str(j), math.inf if str(j) in curves else math.nan) for j in df["job"]]
        ranked = by_configuration(sweep.ok, sts["jobs"], varying)
        _, groups = configurations(sweep.ok, sweep.ok.loc[sweep.ok["job"].astype(str).isin(curves)], varying)
        sts["reached"] = {"n": len(ranked), "of": len(groups) if groups is not None else len(curves),
                          "what": "configuration" if groups is not None else "job"}
        sts["jobs"] = ranked[:5]
    for name, column in scaling(sweep.ok, varying).items():  # columns for the tables (value=speedup)
        df[name] = column
    ok = sweep.ok
    ts = build_tables(df, rows, cols, group, value, agg, paper) if tabulate else None
    run = read_result(sweep.dir) if sweep.single else None
    tts = time_to_skill(ok, metric, varying=varying)
    notes = list(sweep.notes)
    if relaid:
        notes.append(f"Tables by {rows}" + (f" and {cols}" if cols != DEFAULTS["cols"] else "") + ": the paper's "
                     f"layout ({DEFAULTS['rows']} × {DEFAULTS['cols']}, by {DEFAULTS['group']}) does not vary in "
                     "this sweep; rows=, cols= and group= choose another.")
    if tabulate and len(ok) and value in SCALING and df[value].isna().all():
        notes.append(f"value={value}: no settings ran on more than one device count (gpus=1,2,4 in a sweep does).")
    if tabulate and len(ok) and value == SKILL_S and not sts:
        notes.append("value=skill_s: no job has a validation ROC AUC per epoch (runs with score_epochs=true and a "
                     "validation split record one).")
    constant = constant_forecast_accuracy(ok)
    if constant is not None and constant >= float(target):
        notes.append(_constant_note(constant, float(target), run is not None, sts, tts, metric))
    ranked = run is None and numeric_column(ok, metric).notna().any()  # a run's page ranks nothing
    if ranked and metric in TEST_SCORES and numeric_column(ok, "val_roc_auc").notna().any():
        notes.append(f"Best configurations are ranked by {metric}, a test-set score: an optimistic choice "
                     f"(metric=val_{metric} ranks them on the validation split).")
    elif ranked and metric in TEST_SCORES and no_validation_split(ok):
        notes.append(f"Best configurations are ranked by {metric}, a test-set score: an optimistic choice. The jobs "
                     "have no validation split (data.split.val_fraction=0, as in the paper's experiment files); "
                     "data.split.val_fraction=0.1 holds one out, for the ranking and the soonest-to-skill card.")
    elif ranked and metric in TEST_SCORES:
        notes.append(f"Best configurations are ranked by {metric}, a test-set score: an optimistic choice.")
    if run is None and {"epochs", "epochs_trained"} <= set(ok.columns):  # a run's page says so in its facts
        early = int((numeric_column(ok, "epochs_trained") < numeric_column(ok, "epochs")).sum())
        if early:
            notes.append(f"{early} of {len(ok)} jobs stopped early (patience): their times and scores are of the "
                         "epochs they trained (epochs_trained), not of `epochs`.")

    images: dict[str, tuple[str, str, bytes]] = {}  # name: (caption, alt text, PNG)
    plots: dict[str, dict[str, bytes]] = {}
    if run is not None and runpage.epochs_of(run):
        history, scored = pd.DataFrame(runpage.epochs_of(run)), section(run, "early_stop").get("scored_epoch")
        plots["learning_curves"] = plot_learning_curves(history, scored)
        images["learning_curves"] = ("Training loss and accuracy, and the validation ROC AUC, after each epoch",
                                     _learning_alt(history, f"run {sweep.name}", scored),
                                     plots["learning_curves"]["png"])
    for name, spec in (curve_figures(ok, histories, rows, varying) if run is None else {}).items():
        plots[name] = plot_curves(spec)
        images[name] = (spec[-1] if len(spec) > 2 else spec[0], _curves_alt(spec), plots[name]["png"])
    if not histories and len(ok):
        notes.append("No per-epoch history in its result.json: no learning curves." if run is not None else
                     "No per-epoch history in the jobs' result.json: no training-accuracy curves.")
    if sts and run is None:
        first = [j for t in sts["jobs"] for j in t.get("jobs", [t["job"]])]
        shown = (first + [j for j in curves if j not in first])[:12]  # the soonest, then the others
        by_job = ok.set_index(ok["job"].astype(str))
        plots["skill_vs_time"] = plot_skill_vs_time(
            [(f"{j}: {_cfg_text(_config(by_job.loc[j], varying))}"[:60], curves[j]["epoch_s"].cumsum().to_numpy(float),
              curves[j]["val_roc_auc"].to_numpy(float)) for j in shown], sts["target"])
        images["skill_vs_time"] = ("Validation ROC AUC after each epoch against training time (up to 12 jobs, the "
                                   "soonest to skill first); dashed: the skill target", _skill_alt(shown, sts),
                                   plots["skill_vs_time"]["png"])
    wall = plot_wall_vs_batch(ok, group) if run is None else None
    if wall:
        plots["wall_vs_batch"] = wall
        images["wall_vs_batch"] = ("Wall time (training) against batch size; error bars: std over jobs",
                                   _wall_alt(ok, group), wall["png"])
    ranked = best_by_metric(ok, metric, top=len(ok), varying=varying)
    jobs = _jobs_ranked(ok, metric, varying)
    order = [str(j) for j in jobs["job"]]
    forecasts = test_forecasts(sweep, order)
    p_values = paired_p_values(forecasts, order)
    jobs = _jobs_shown(jobs, p_values)
    paired = {"reference": order[0], "metric": metric, "alpha": PAIRED_ALPHA, "p": p_values,
              "within_noise": [j for j in order if p_values.get(j, 0.0) >= PAIRED_ALPHA],
              "repeats": configurations(ok, ok, varying)[1] is not None} if p_values else None
    if paired:  # the best jobs' ROC curves together: the first and up to four it is compared with
        shown = [order[0]] + [j for j in order if j in p_values][:4]
        legend = [f"job {j}: AUC {_auc_text(forecasts[j])}" + (f", p = {p_values[j]:.2g}" if j in p_values else "")
                  for j in shown]
        plots["roc_best"] = plot_roc_comparison([(text, *forecasts[j]) for text, j in zip(legend, shown)])
        images["roc_best"] = (f"ROC curves on the test set of the best jobs by {metric}; p: DeLong's paired test "
                              f"against job {order[0]}",
                              f"ROC curves, true positive rate against false positive rate on the same test cases, "
                              f"of the {len(shown)} best jobs by {metric}: {'; '.join(legend)}",
                              plots["roc_best"]["png"])
    best_pred = next(((b["job"], *forecasts[b["job"]]) for b in ranked if b["job"] in forecasts), None)
    diagrams: dict[str, dict[str, dict[str, bytes]]] = {}  # {job: its diagrams}, for its own page
    if best_pred and len(np.unique(best_pred[2])) == 2:
        job, prob, label = best_pred
        row = ok.loc[ok["job"].astype(str) == str(job)]
        cut = numeric_column(row, "threshold").iloc[0] if "threshold" in row.columns else None
        clim = numeric_column(row, "climatology").iloc[0] if "climatology" in row.columns else None
        who = f"run {sweep.name}" if run is not None else f"job {job}"
        diagrams[job] = drawn or plot_verification(prob, label, who, cut, None if pd.isna(clim) else clim)
        alts = _verification_alts(prob, label, who, cut)
        for name, data in diagrams[job].items():
            plots[name] = data
            of = "" if run is not None else f" of the best job by {metric} ({job})"
            cap = {"roc": f"ROC curve{of} on the test set",
                   "reliability": f"Reliability diagram{of} on the test set; error bars: 95% Wilson intervals of "
                                  "each bin's frequency; shaded: bins that add to the Brier skill score against "
                                  "climatology (the training base rate); below: how many forecasts fall in each "
                                  "bin",
                   "performance": f"Performance diagram{of} on the test set: probability of detection against "
                                  "success ratio at every threshold; shading: CSI; dashed: frequency bias"}
            images[name] = (cap[name], alts[name], data["png"])
    elif len(ok):
        notes.append(f"No test_predictions.npz with both classes{'' if run is not None else ' for the best job'}: "
                     "no ROC, reliability or performance diagram.")
    for name in ("learning_curves", "train_acc", "train_acc_by_gpus", "train_acc_by_batch", "train_acc_by_ratio",
                 "skill_vs_time", "wall_vs_batch", "roc_best", "roc", "reliability", "performance"):
        for fmt in ("png", "svg"):
            if name in plots:
                put(f"{name}.{fmt}", plots[name][fmt])
            else:
                (report_dir / f"{name}.{fmt}").unlink(missing_ok=True)  # stale from an earlier report

    pages_of = {} if run is not None else job_pages(sweep, order, pages, out, notes, html_path, diagrams,
                                                    {"target": float(target), "skill": skill or "auto"})
    summary = {
        "sweep_dir": str(sweep.dir.resolve()), "sweep_dirs": [str(p.resolve()) for p in sweep.parts or [sweep.dir]],
        "single": sweep.single, "partial": sweep.partial, "running": sweep.running, "waiting": sweep.waiting,
        "jobs": len(df), "ok": len(ok), "failed": len(_problems(df)),
        "failed_jobs": _failed_jobs(df),
        "table": {"rows": rows, "cols": cols, "group": group, "value": value, "agg": agg,
                  "repeats": ts.repeats, "averaged": ts.averaged, "paper_tables": ts.paper_tables,
                  "sections": [{k: _plain(v) for k, v in s.fixed.items()} for s in ts.sections]} if ts else None,
        "metric": metric, "target": float(target), "constant_forecast_accuracy": constant,
        "best_by_metric": ranked[:5],
        "time_to_accuracy": by_configuration(ok, time_to_accuracy(sweep, float(target), histories, varying),
                                             varying)[:5],
        "time_to_skill": tts, "soonest_to_skill": sts, "paired_roc_auc": paired,
        "notes": notes, "job_pages": {j: str(p.resolve()) for j, p in pages_of.items()},
    }
    for name, write in (("table.md", to_markdown), ("table.csv", to_long_csv), ("table.tex", to_latex)):
        if ts is not None:
            put(name, write(ts))
        else:
            (report_dir / name).unlink(missing_ok=True)  # stale from an earlier report
    write_json(report_dir / "summary.json", summary)
    written["summary.json"] = report_dir / "summary.json"
    page = (runpage.render(run, sweep.dir, images, notes, CSS, _href(up, html_path) if up else None, stamp)
            if run is not None else
            render_html(sweep, ts, summary, images, metric, float(target),
                        {j: _href(p, html_path) for j, p in pages_of.items()}, jobs))
    write_atomic(html_path, page)
    written["report.html"] = html_path
    return written


def _failed_jobs(df: pd.DataFrame) -> list[dict]:
    """The jobs that failed (`_problems`), each with its error and the settings that vary among all the jobs."""
    failed = _problems(df)
    varying = varying_hparams(df) if len(failed) else []
    return [{"job": str(r["job"]), "status": str(r["status"]), "error": _text(r.get("error")) or None,
             "config": _config(r, varying)} for _, r in failed.iterrows()]


def _href(target: str | Path, page: Path) -> str:
    """The address of `target` from the page `page`: relative, with a folder name's "?", "#" or "%" quoted."""
    return urllib.parse.quote(Path(os.path.relpath(target, page.parent)).as_posix())


def job_pages(sweep: Sweep, order: list[str], pages: str | int, out: str | Path | None, notes: list[str],
              up: Path, drawn: dict[str, dict[str, dict[str, bytes]]] | None = None,
              targets: dict[str, Any] | None = None) -> dict[str, Path]:
    """{job: its own report.html} (`tornado.report` on the job's folder, linked back to `up`, the sweep's page):
    written for the first `pages` jobs of `order` (all, none or a number), into the job's folder or, with `out`,
    OUT/<job>/, unless the page there was written from the same inputs (`_page_inputs`); any other job's page
    found there is kept where it is newer than the job's result.json (a job run again makes its page stale).
    `drawn`: {job: its diagrams} the sweep's report drew already; `targets`: the sweep's `target` and `skill`, which
    a page's summary is of too."""
    targets = targets or {}
    count = len(order) if str(pages) == "all" else 0 if str(pages) == "none" else int(pages)
    code = _code_digest() if count else ""
    found: dict[str, Path] = {}
    for i, job in enumerate(order):
        where = Path(out) / job if out else sweep.job_dir(job)
        page = where / "report.html"
        if i < count:
            given = (drawn or {}).get(job)
            inputs = _page_inputs(sweep.job_dir(job), page, up, given, f"{code}\0{sorted(targets.items())}")
            if inputs is not None and runpage.stamp_of(page) == inputs:  # it would be written the same again
                found[job] = page
                continue
            try:
                found[job] = build_report(sweep.job_dir(job), out=where if out else None, up=up, drawn=given,
                                          stamp=inputs, **targets)["report.html"]
            except TornadoError as e:
                notes.append(f"Job {job}: no page of its own ({e}).")
            continue
        result = sweep.job_dir(job) / "result.json"
        if page.is_file() and result.is_file() and page.stat().st_mtime >= result.stat().st_mtime:
            found[job] = page
    return found


def writable(folder: Path, hint: str = "") -> None:
    """Make `folder` where it is missing and write a file in it, or refuse in one line before any work (a read-only
    sweep folder of someone else's: `hint` says where else the report can go)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise TornadoError(f"{folder}: cannot write the report there ({folder_fault(folder, e)}){hint}") from None


PAGE_FILES = ("result.json", "test_predictions.npz", "results.csv", "launcher.json")  # what a run's report reads


def _code_digest() -> str:
    """A digest of the code that writes the pages: this package's modules and the plotting library's version."""
    digest = hashlib.sha256(importlib.metadata.version("matplotlib").encode())
    for module in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(module.name.encode() + hashlib.sha256(module.read_bytes()).digest())
    return digest.hexdigest()


def _page_inputs(run_dir: Path, page: Path, up: Path, drawn: dict[str, dict[str, bytes]] | None,
                 code: str) -> str | None:
    """A digest of everything a job's own `page` is made from: its run folder's files and where that folder is,
    the address of the sweep's page `up` it links to, the diagrams it is given (`drawn`) and the code (`code`:
    `_code_digest`). None where a file cannot be read: then the page is written again."""
    digest = hashlib.sha256("\0".join([code, str(run_dir.resolve()), _href(up, page)]).encode())
    try:
        for f in [run_dir / name for name in PAGE_FILES] + sorted(run_dir.glob("*/result.json")):
            digest.update(f"\0{f.relative_to(run_dir)}\0".encode()
                          + (hashlib.sha256(f.read_bytes()).digest() if f.is_file() else b"-"))
    except OSError:
        return None
    for name, formats in sorted((drawn or {}).items()):
        for fmt, data in sorted(formats.items()):
            digest.update(f"\0{name}.{fmt}\0".encode() + hashlib.sha256(data).digest())
    return digest.hexdigest()


def _auc_text(forecast: tuple[np.ndarray, np.ndarray]) -> str:
    return number_text(roc_points(*forecast)[2], 3)


def _paired_text(paired: dict) -> str:
    n, k = len(paired["p"]), len(paired["within_noise"])
    seeds = ("; seeds of one configuration can differ by more than that noise: compare configurations by their "
             "means over seeds" if paired.get("repeats") else "")
    return (f"test ROC AUC against job {paired['reference']} (the best by {paired['metric']}): {k} of "
            f"{counted(n, 'other job')} within the test cases' sampling noise (DeLong's paired test, "
            f"p ≥ {paired['alpha']}; roc_auc_p in the Jobs table){seeds}")


def _reached_line(t: dict) -> str:
    seconds, spread, detail, who = _reached_text(t)
    return f"{who} ({seconds}{spread}, {detail}): {_cfg_text(t['config'])}"


def summary_text(summary: dict) -> str:
    lines = []
    if summary["partial"]:
        lines.append(f"PARTIAL: {counted(len(summary['running']), 'job')} running, {len(summary['waiting'])} not "
                     "started")
    lines.append(f"jobs: {summary['jobs']} ({summary['ok']} ok, {summary['failed']} failed)")
    m = summary["metric"]
    if summary["best_by_metric"]:
        b = summary["best_by_metric"][0]
        repeats = f" ± {number_text(b['std'], 2)}, mean of {b['n']} repeats" if b.get("n", 1) > 1 else ""
        lines.append(f"best by {m}: {_jobs_text(b)} ({m} {number_text(b[m])}{repeats}): {_cfg_text(b['config'])}")
    if summary.get("paired_roc_auc"):
        lines.append(_paired_text(summary["paired_roc_auc"]))
    if summary["time_to_accuracy"]:
        lines.append(f"fastest to training accuracy {number_text(summary['target'])}: "
                     + _reached_line(summary["time_to_accuracy"][0]))
    sts = summary.get("soonest_to_skill")
    if sts and sts["jobs"]:
        count = f"; {_reached_count_text(sts)}" if sts.get("reached") else ""
        lines.append(f"soonest to skill (val_roc_auc {number_text(sts['target'])}): " + _reached_line(sts["jobs"][0])
                     + count)
    elif sts:
        lines.append(f"soonest to skill (val_roc_auc {number_text(sts['target'])}): "
                     + ("no skill, the target is not above chance" if sts["target"] <= sts["chance"] else
                        "no job reached it"))
    lines += [f"note: {n}" for n in summary["notes"]]
    for f in summary["failed_jobs"]:
        lines.append(f"{f['status']}: job {f['job']} ({_cfg_text(f['config'])}): {f['error']}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------- CLI
USAGE = ("usage: python -m tornado.report SWEEP_DIR [SWEEP_DIR ... (then out=DIR)] [rows=batch_size] "
         "[cols=data_multiplier] [group=epochs|none] [value=wall_s] [agg=mean|median|min|max] [metric=auto] "
         "[target=0.93] [skill=auto] [paper=auto|none|table2..table9] [pages=3|all|none] [out=DIR]")


def main(argv: list[str] | None = None) -> dict[str, Path]:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        return {}

    def work() -> dict[str, Path]:
        o = parse_kv([a for a in argv if "=" in a], DEFAULTS)
        dirs = [a for a in argv if "=" not in a]
        if not dirs:
            raise TornadoError("SWEEP_DIR: missing; " + USAGE.removeprefix("usage: "))
        written = build_report(dirs, **o)
        summary = json.loads(written["summary.json"].read_text())
        if summary["single"]:
            print(runpage.text(read_result(Path(summary["sweep_dir"]))))
        else:
            print(written["table.md"].read_text())
            print(summary_text(summary))
        if summary["job_pages"]:
            first, *more = summary["job_pages"].values()
            print(f"jobs' own pages, linked from the report's Jobs table: {shown_path(first)}"
                  + (f" and {len(more)} more" if more else ""))
        print(f"report: {written['report.html']}")
        return written

    return run_cli(work)


if __name__ == "__main__":
    main()
