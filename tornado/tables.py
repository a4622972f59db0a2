"""Tables from a sweep's results.csv: which columns are settings, pivots of any figure over two of them, the
paper's figures beside ours, and the tables as Markdown, long CSV, LaTeX and HTML."""
from __future__ import annotations

import functools
import html
import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd

from tornado.cli import counted
from tornado.errors import TornadoError
from tornado.metrics import SCORES, VAL_SCORES

META = ["job", "status", "error", "output_dir", "config_hash", "overrides", "started", "finished", "host"]
METRICS = SCORES + ["train_base_rate"] + VAL_SCORES  # train_base_rate: positives in the training set as trained
TIMES = ["total_s", "wall_s", "data_wait_s", "compute_s", "test_s", "epoch_scoring_s"]
RUN_INFO = ["samples_per_s", "batch_global", "batch_per_device", "devices", "accelerator", "n_train",
            "samples_per_epoch", "epochs_trained", "val_best_epoch", "slowest_epoch_ratio"]
DISTURBED = 3.0  # a job whose slowest epoch took this many times its median one was slowed by something else
PAPER_N_TRAIN = 138_963  # the paper's training set (multiplier 1)
SKILL_S = "skill_s"  # made by the report: training seconds to its skill target (report.soonest_to_skill)
SCALING = ["speedup", "scaling_efficiency"]  # made by the report (report.scaling): more devices against fewer
NOT_HPARAMS = set(META + METRICS + TIMES + RUN_INFO + [SKILL_S] + SCALING)
AGGS = ("mean", "median", "min", "max")
MAX_SECTIONS = 8   # beyond this many combinations of other varying settings, average them instead

# The paper's tables: the measure they hold, the columns a job is matched on, and how our value scales to theirs.
PAPER_CPU = {"table2", "table4"}  # the paper's tables from CPUs; the others are from GPUs
PAPER_GPUS = {"table3": 4, "table5": 4, "table8": 2, "table9": 2}  # V100s per network (6, 7: by row)
PAPER_POSITIVES = 9_000 / 183_723  # "only around 9,000" of its storms are tornadic (the paper's introduction)
PAPER_TABLES = {
    "table2": ("wall_s", ("epochs", "batch_size", "data_multiplier"), 1.0, "Table 2 (2018 CPU, preaugmented)"),
    "table3": ("wall_s", ("epochs", "batch_size", "data_multiplier"), 1.0, "Table 3 (2018 GPU node, preaugmented)"),
    "table4": ("wall_s", ("epochs", "batch_size", "data_multiplier"), 1.0, "Table 4 (2018 CPU, live augmentation)"),
    "table5": ("wall_s", ("epochs", "batch_size", "data_multiplier"), 1.0,
               "Table 5 (2018 GPU node, live augmentation)"),
    "table6": ("wall_s", ("epochs", "batch_size", "data_multiplier", "gpus"), 1.0, "Table 6 (V100s, batch 32768)"),
    "table7": ("wall_s", ("epochs", "batch_size", "data_multiplier", "gpus"), 1.0, "Table 7 (V100s, batch 128)"),
    "table8": ("accuracy", ("epochs", "batch_size", "data_multiplier"), 100.0,
               "Table 8 (test accuracy %, 2 V100s)"),
    "table9": ("wall_s", ("epochs", "batch_size", "data_multiplier"), 1.0, "Table 9 (wall time, 2 V100s)"),
}


# ----------------------------------------------------------------------------------------------------- columns
def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    if "status" not in df.columns:
        return df
    return df.loc[df["status"].astype(str) == "ok"]


def hparam_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c not in NOT_HPARAMS and not c.startswith(("versions.", "times.", "metrics."))]


def is_repeat(col: str) -> bool:
    """Columns whose values are repeats of one configuration (averaged with their spread shown)."""
    return col in ("seed", "repeat") or col.endswith(".seed")


def _drop_copies(df: pd.DataFrame, cols: list[str]) -> list[str]:
    """`cols` less those that vary exactly as an earlier one does (e.g. trainer.max_epochs = epochs)."""
    kept: list[str] = []
    for c in cols:
        n = df[c].nunique(dropna=False)
        if not any(len(df[[k, c]].drop_duplicates()) == n == df[k].nunique(dropna=False) for k in kept):
            kept.append(c)
    return kept


def varying_hparams(ok: pd.DataFrame) -> list[str]:
    """Settings that differ between jobs, leaving out copies of another."""
    return _drop_copies(ok, [c for c in hparam_columns(ok) if ok[c].nunique(dropna=False) > 1])


# ----------------------------------------------------------------------------------------------------- pivots
def sort_key(v: Any) -> tuple:
    """Numbers by value, then text and booleans, then missing values."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return (2, 0.0, "")
    if isinstance(v, (bool, np.bool_)):
        return (1, 0.0, str(v))
    try:
        return (0, float(v), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(v))


def sorted_unique(s: pd.Series) -> list:
    return sorted(pd.unique(s), key=sort_key)


def _cells(df: pd.DataFrame, keys: list[str]):
    return df.groupby(keys, dropna=False, sort=False)


def numeric_column(df: pd.DataFrame, col: str) -> pd.Series:
    """`col` as floats: NaN where it is missing or not a number."""
    if col not in df.columns:
        return pd.Series(np.nan, index=df.index, dtype=float)
    return pd.to_numeric(df[col], errors="coerce").astype(float)


def pivot(df: pd.DataFrame, rows: str, cols: str, group: str | None = "none", value: str = "wall_s",
          agg: str = "mean") -> dict[Any, pd.DataFrame]:
    """`value` aggregated by `agg` in a rows x cols table for each value of `group` (key None when group is none).

    Only status == ok jobs count; every job in a cell is aggregated. Each table carries `attrs["std"]` (sample
    standard deviation, NaN for one job) and `attrs["n"]` (jobs in the cell) as tables of the same shape.
    """
    if agg not in AGGS:
        raise TornadoError(f"agg={agg}: must be one of {', '.join(AGGS)}")
    group = None if group in (None, "none") else group
    ok = ok_rows(df)
    for c in (rows, cols, group):
        if c is not None and c not in ok.columns:
            raise TornadoError(f"column {c}: not in results.csv")
    ok = ok.assign(_v=numeric_column(ok, value)).dropna(subset=["_v"])
    row_labels, col_labels = sorted_unique(ok[rows]), sorted_unique(ok[cols])
    groups = sorted_unique(ok[group]) if group else [None]
    out: dict[Any, pd.DataFrame] = {}
    for g in groups:
        sub = ok if group is None else ok.loc[matches(ok[group], g)]
        stats = {"value": {}, "std": {}, "n": {}}
        for (r, c), cell in _cells(sub, [rows, cols]):
            v = cell["_v"]
            stats["value"][(r, c)] = getattr(v, agg)()
            stats["std"][(r, c)] = v.std(ddof=1) if len(v) > 1 and np.isfinite(v).all() else np.nan  # inf: never
            stats["n"][(r, c)] = len(v)
        frames = {k: _frame(d, row_labels, col_labels, rows, cols) for k, d in stats.items()}
        table = frames["value"]
        table.attrs["std"] = frames["std"]
        table.attrs["n"] = frames["n"].fillna(0).astype(int)
        out[g] = table
    return out


def matches(s: pd.Series, v: Any) -> pd.Series:
    """`s == v`, where a missing `v` matches the missing values."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return s.isna()
    return s == v


def _frame(cells: dict, row_labels: list, col_labels: list, rows: str, cols: str) -> pd.DataFrame:
    data = [[cells.get(_match_key(cells, r, c), np.nan) for c in col_labels] for r in row_labels]
    f = pd.DataFrame(data, index=pd.Index(row_labels, name=rows), columns=pd.Index(col_labels, name=cols),
                     dtype=float)
    return f


def _match_key(cells: dict, r: Any, c: Any):
    if (r, c) in cells:
        return (r, c)
    for k in cells:  # NaN labels do not compare equal
        if sort_key(k[0]) == sort_key(r) and sort_key(k[1]) == sort_key(c):
            return k
    return None


# ------------------------------------------------------------------------------------------ paper comparison
def paper_tables() -> dict[str, pd.DataFrame]:
    """The paper's Tables 2-9 (package data in tornado/paper/): columns = match keys + `figure`."""
    base = resources.files("tornado").joinpath("paper")
    wall = pd.read_csv(base.joinpath("wall_time_batch_vs_multiplier.csv").open())
    gpus = pd.read_csv(base.joinpath("wall_time_gpu_count.csv").open())
    acc = pd.read_csv(base.joinpath("accuracy_and_time_batch_vs_epochs_2gpu.csv").open())
    out = {}
    for name, frame in list(wall.groupby("table")) + list(gpus.groupby("table")):
        out[name] = frame.rename(columns={"wall_s": "figure"})
    out["table8"] = acc.rename(columns={"test_accuracy_pct": "figure"})
    out["table9"] = acc.rename(columns={"wall_s": "figure"})
    return {k: v[list(PAPER_TABLES[k][1]) + ["figure"]].reset_index(drop=True) for k, v in out.items()}


@functools.cache
def _paper_best(table: str) -> float:
    """The highest figure of the paper's `table`, on our scale (read once: the notes are made per output)."""
    return float(paper_tables()[table]["figure"].max()) / PAPER_TABLES[table][2]


def _auto_table(row: pd.Series, value: str) -> str | None:
    section = str(row.get("paper", "") or "")
    if section not in ("6.1.1", "6.1.2", "6.1.3", "6.2"):
        return None
    accel = str(row.get("accelerator", "") or "").lower()
    gpus = pd.to_numeric(pd.Series([row.get("gpus")]), errors="coerce").iloc[0]
    cpu = accel == "cpu" or (accel in ("", "nan", "none") and gpus == 0)
    batch = pd.to_numeric(pd.Series([row.get("batch_size")]), errors="coerce").iloc[0]
    if section == "6.1.3" and value in ["wall_s", *SCALING]:  # the tables by GPU count
        return {32768: "table6", 128: "table7"}.get(batch)
    if value == "wall_s":
        if section == "6.1.1":
            return "table2" if cpu else "table3"
        if section == "6.1.2":
            return "table4" if cpu else "table5"
        if section == "6.2":
            return "table9"
    if value == "accuracy" and section == "6.2":
        return "table8"
    return None


def paper_figures(ok: pd.DataFrame, value: str, paper: str = "auto") -> pd.DataFrame:
    """Per job: which paper table it is compared with (`paper_table`) and the paper's figure there (`paper`)."""
    out = pd.DataFrame({"paper_table": pd.Series([None] * len(ok), index=ok.index, dtype=object),
                        "paper": np.nan}, index=ok.index)
    if paper == "none" or ok.empty:
        return out
    if paper == "auto":
        names = [_auto_table(r, value) for _, r in ok.iterrows()]
    else:
        names = [paper] * len(ok)
    tables = paper_tables()
    for i, name in zip(ok.index, names):
        if name is None:
            continue
        keys = PAPER_TABLES[name][1]
        t = tables[name]
        job = ok.loc[i]
        if "gpus" in keys and not np.isfinite(pd.to_numeric(pd.Series([job.get("gpus")]), errors="coerce").iloc[0]):
            job = job.copy()
            job["gpus"] = job.get("devices")
        want = pd.to_numeric(pd.Series([job.get(k) for k in keys]), errors="coerce").to_numpy(float)
        hit = t.loc[(t[list(keys)].to_numpy(float) == want).all(axis=1), "figure"]
        out.loc[i, "paper_table"] = name
        if len(hit) == 1:
            out.loc[i, "paper"] = float(hit.iloc[0])
        if value in SCALING:
            out.loc[i, "paper"] = _paper_scaling(t, keys, want, value)
    return out


def _paper_scaling(t: pd.DataFrame, keys: tuple, want: np.ndarray, value: str) -> float:
    """The paper's speedup (or scaling efficiency) for a job's cell of a table by GPU count: its wall time on
    the fewest GPUs the table has for those settings over the cell's."""
    gpu = list(keys).index("gpus")
    others = [k for j, k in enumerate(keys) if j != gpu]
    same = t.loc[(t[others].to_numpy(float) == np.delete(want, gpu)).all(axis=1)]
    cell = same.loc[same["gpus"] == want[gpu], "figure"]
    if same.empty or len(cell) != 1:
        return math.nan
    fewest = same["gpus"].min()
    speedup = float(same.loc[same["gpus"] == fewest, "figure"].mean() / cell.iloc[0])
    return speedup if value == "speedup" else speedup / (want[gpu] / fewest)


# ------------------------------------------------------------------------------------------------ table sets
@dataclass
class SubTable:
    group_value: Any
    value: pd.DataFrame
    std: pd.DataFrame
    n: pd.DataFrame
    paper: pd.DataFrame          # the paper's figure on our scale (its accuracy % as a fraction; NaN where none)
    ratio: pd.DataFrame          # ours / paper (NaN for accuracy, where a ratio would mislead)
    paper_table: pd.DataFrame | None = None  # the number of the paper's table that figure is from (NaN where none)


@dataclass
class Section:
    fixed: dict[str, Any]        # other settings that vary across the sweep, fixed in this section
    subtables: list[SubTable]


@dataclass
class TableSet:
    rows: str
    cols: str
    group: str | None
    value: str
    agg: str
    sections: list[Section]
    repeats: list[str]           # repeat columns (seeds) averaged, spread shown
    averaged: list[str]          # other varying settings averaged (too many combinations to split)
    paper_tables: list[str]      # the paper's tables that gave figures to compare with
    paper_unmatched: list[str] = field(default_factory=list)   # chosen, but no job has the paper's settings
    n_train: list[int] = field(default_factory=list)           # the jobs' training-set sizes (multiplier 1)
    accelerators: list[str] = field(default_factory=list)      # what the jobs ran on (cpu, gpu)
    constant: list[float] = field(default_factory=list)        # accuracy of a constant "no" on the jobs' cases
    left_out: list[str] = field(default_factory=list)          # jobs not in the tables: failed, running
    gpus: list[int] = field(default_factory=list)              # GPUs per job, of the jobs that ran on GPUs
    disturbed: dict[str, float] = field(default_factory=dict)  # job: slowest epoch / median, where >= DISTURBED
    one_step: list[int] = field(default_factory=list)          # batch sizes that hold a job's whole epoch


def _mixing(ok: pd.DataFrame, keys: list[str], candidates: list[str]) -> list[str]:
    """Candidates that take more than one value inside some cell of `keys` (i.e. are not derived from them)."""
    if ok.empty:
        return []
    g = _cells(ok, keys)
    return [c for c in candidates if (g[c].nunique(dropna=False) > 1).any()]


def build_tables(df: pd.DataFrame, rows: str, cols: str, group: str | None, value: str, agg: str = "mean",
                 paper: str = "auto") -> TableSet:
    """Pivots split by the other settings that vary (up to MAX_SECTIONS combinations; beyond, averaged)."""
    group = None if group in (None, "none") else group
    ok = ok_rows(df).copy()
    ok = ok.loc[numeric_column(ok, value).notna()]
    keys = [c for c in (rows, cols, group) if c]
    others = [c for c in hparam_columns(ok) if c not in keys]
    repeats = [c for c in others if is_repeat(c) and ok[c].nunique(dropna=False) > 1]
    extra = _drop_copies(ok, _mixing(ok, keys + repeats, [c for c in others if c not in repeats]))
    averaged: list[str] = []
    if extra and len(ok.drop_duplicates(extra)) > MAX_SECTIONS:
        averaged, extra = extra, []
    figs = paper_figures(ok, value, paper)
    scale = {k: v[2] for k, v in PAPER_TABLES.items()}
    ok["_paper"] = figs["paper"]
    ok["_scale"] = figs["paper_table"].map(lambda t: scale.get(t, np.nan))
    ok["_table"] = figs["paper_table"].where(figs["paper"].notna()).map(lambda t: float(t[5:]), na_action="ignore")
    sections = []
    combos = sorted((tuple(r) for r in ok[extra].drop_duplicates().itertuples(index=False)),
                    key=lambda t: [sort_key(v) for v in t]) if extra else [()]
    for combo in combos:
        mask = pd.Series(True, index=ok.index)
        for c, v in zip(extra, combo):
            mask &= matches(ok[c], v)
        part = ok.loc[mask]
        ours = pivot(part, rows, cols, group, value, agg)
        papers = pivot(part.assign(_p=part["_paper"]), rows, cols, group, "_p", "mean")
        paper_std = {g: t.attrs["std"] for g, t in papers.items()}
        scales = pivot(part.assign(_s=part["_scale"]), rows, cols, group, "_s", "mean")
        numbers = pivot(part.assign(_t=part["_table"]), rows, cols, group, "_t", "mean")
        subs = []
        for g, t in ours.items():
            p = papers.get(g, t * np.nan).reindex_like(t)
            # A cell whose jobs match different paper figures has no single figure to compare with.
            p = p.where(paper_std.get(g, p * np.nan).reindex_like(t).fillna(0) == 0)
            s = scales.get(g, t * np.nan).reindex_like(t)
            which = numbers.get(g, t * np.nan).reindex_like(t).where(p.notna())
            p = p / s  # on our scale (accuracy: a fraction)
            # no ratio for accuracy: on a 5%-positive problem it is mostly the base rate (see _paper_notes)
            subs.append(SubTable(g, t, t.attrs["std"], t.attrs["n"], p,
                                 t * np.nan if value == "accuracy" else t / p, which))
        sections.append(Section(dict(zip(extra, combo)), subs))
    def names(f: pd.DataFrame) -> list[str]:
        return sorted(set(f["paper_table"].dropna()), key=lambda s: int(s[5:]))

    used = names(figs.dropna(subset=["paper"]))
    sizes = sorted({int(n) for n in numeric_column(ok, "n_train").dropna()})
    accelerators = sorted({str(a) for a in ok.get("accelerator", pd.Series(dtype=object)).dropna()})
    on_gpus = ok.loc[ok.get("accelerator", pd.Series("", index=ok.index)).astype(str).str.lower() == "gpu"]
    gpus = sorted({int(d) for d in numeric_column(on_gpus, "devices").dropna()})
    whole = ok.loc[numeric_column(ok, "batch_size") >= numeric_column(ok, "samples_per_epoch")]
    one_step = sorted({int(b) for b in numeric_column(whole, "batch_size").dropna()})
    constant = []
    if value.removeprefix("val_") == "accuracy":
        scored = value[:-len("accuracy")]
        rate = numeric_column(ok, f"{scored}positives") / numeric_column(ok, f"{scored}n")
        constant = sorted({round(float(1 - r), 4) for r in rate.dropna()})
    left = df.loc[df.index.difference(ok_rows(df).index)] if "status" in df.columns else df.iloc[:0]
    left_out = [f"job {r.get('job', i)} ({settings_text({k: r.get(k) for k in keys})}) {r['status']}"
                for i, r in left.iterrows()]
    spread = numeric_column(ok, "slowest_epoch_ratio")
    disturbed = ({str(ok.at[i, "job"]) if "job" in ok.columns else str(i): float(spread[i])
                  for i in spread.index[spread >= DISTURBED]} if value.endswith("_s") or value in SCALING else {})
    return TableSet(rows, cols, group, value, agg, sections, repeats, averaged, used,
                    [t for t in names(figs) if t not in used], sizes, accelerators, constant, left_out, gpus,
                    disturbed, one_step)


# ---------------------------------------------------------------------------------------------- formatting
def number_text(x: float, digits: int = 4) -> str:
    """`digits` significant digits (all the integer digits of a larger number); a dash when missing."""
    if x is None or not np.isfinite(x):
        return "–"
    if abs(x) >= 10 ** digits:
        return f"{x:.0f}"
    return f"{x:.{digits}g}"


def label_text(v: Any) -> str:
    """A setting's value as a label: whole floats without ".0", a dash when missing."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


def settings_text(cfg: dict) -> str:
    """Settings as `key=value, ...`."""
    return ", ".join(f"{k}={label_text(v)}" for k, v in cfg.items())


def _fixed_title(fixed: dict, group: str | None, g: Any) -> str:
    parts = [f"{k} = {label_text(v)}" for k, v in fixed.items()]
    if group:
        parts.append(f"{group} = {label_text(g)}")
    return ", ".join(parts)


def _cell_parts(st: SubTable, r: Any, c: Any) -> tuple[str, str, str]:
    """(our value, spread, paper comparison) as text: the paper's figure on our scale, and ours/paper."""
    v, sd, n = st.value.loc[r, c], st.std.loc[r, c], int(st.n.loc[r, c])
    if np.isposinf(v):  # skill_s: the target never reached (by the cell's jobs: median; by any of them: mean)
        return "never", f"(n={n})" if n > 1 else "", ""
    if not np.isfinite(v):
        return "–", "", ""
    spread = f"± {number_text(sd, 2)} (n={n})" if n > 1 else ""
    p, ratio = st.paper.loc[r, c], st.ratio.loc[r, c]
    comp = ""
    if np.isfinite(p):
        comp = f"paper {number_text(p)}" + (f" · {number_text(ratio, 3)}×" if np.isfinite(ratio) else "")
    return number_text(v), spread, comp


def _headline(ts: TableSet) -> str:
    by = f", by {ts.group}" if ts.group else ""
    return f"{ts.value} ({ts.agg}): {ts.rows} × {ts.cols}{by}"


def _notes(ts: TableSet) -> list[str]:
    notes = []
    if ts.repeats:
        notes.append(f"Repeats averaged: {', '.join(ts.repeats)} (cells show {ts.agg} ± sample std, n jobs).")
    if ts.averaged:
        notes.append(f"Also averaged over (too many combinations for separate tables): {', '.join(ts.averaged)}.")
    if ts.constant:
        lo, hi = ts.constant[0], ts.constant[-1]
        at = number_text(lo) if lo == hi else f"{number_text(lo)} to {number_text(hi)}"
        notes.append(f"A constant \"no\" forecast (never a tornado) scores {at} accuracy on these cases (1 − their "
                     "base rate): a cell no higher shows no skill. ROC AUC and CSI tell skill apart.")
    notes += _paper_notes(ts)
    if ts.disturbed:
        jobs = sorted(ts.disturbed, key=sort_key)
        named = ", ".join(f"{j} ({ts.disturbed[j]:.0f}×)" for j in jobs[:10]) + (" and more" if len(jobs) > 10 else "")
        notes.append(f"Timing disturbed in {counted(len(jobs), 'job')}: {named}, an epoch took {DISTURBED:g}× or more "
                     "the job's median epoch (the first left out): something else used the machine then, so their "
                     "times overstate the work (slowest_epoch_ratio in results.csv).")
    if ts.one_step:
        notes.append(f"batch_size {', '.join(map(str, ts.one_step))}: the whole training set in one batch, one step "
                     "per epoch (a larger batch changes nothing more).")
    if ts.left_out:
        more = f"; and {len(ts.left_out) - 10} more" if len(ts.left_out) > 10 else ""
        notes.append(f"Not in these tables: {'; '.join(ts.left_out[:10])}{more}.")
    return notes


def _paper_notes(ts: TableSet) -> list[str]:
    """What the comparison with the paper's tables compares: which tables, and where the work or the hardware
    differs."""
    notes = []
    if ts.paper_tables:
        names = "; ".join(PAPER_TABLES[t][3] for t in ts.paper_tables)
        figure = (f"{ts.value.replace('_', ' ')} (worked out from its wall times by GPU count)"
                  if ts.value in SCALING else "figure")
        if ts.value == "accuracy":
            best = max(_paper_best(t) for t in ts.paper_tables)
            notes.append(f"Compared with the paper's {names}: each cell shows the paper's accuracy as a fraction, "
                         f"and no ratio. The paper counts about {PAPER_POSITIVES:.1%} of its storms tornadic, so a "
                         f"constant \"no\" would score about {1 - PAPER_POSITIVES:.3f} there, above every accuracy "
                         f"in that table (at most {best:.4f}): neither side's accuracy shows skill by itself.")
        else:
            notes.append(f"Compared with the paper's {names}: each cell shows the paper's {figure} and ours/paper.")
        if ts.n_train and ts.n_train != [PAPER_N_TRAIN] and ts.value.endswith("_s"):
            sizes = ", ".join(f"{n:,}" for n in ts.n_train)
            per = (f" Per training sample, ours/paper is {PAPER_N_TRAIN / ts.n_train[0]:.3g} times the ratio shown"
                   if len(ts.n_train) == 1 else "")
            if per and ts.n_train[0] < PAPER_N_TRAIN:
                per += ("; costs that do not grow with the data (the first epoch's warm-up, each epoch's start) "
                        "weigh more per sample on a smaller set, so that figure overstates ours.")
            elif per:
                per += "."
            notes.append(f"Our training set: {sizes} samples; the paper's: {PAPER_N_TRAIN:,}. A wall-time ratio "
                         f"compares unequal work unless they match.{per}")
        hardware = {"cpu" if t in PAPER_CPU else "gpu" for t in ts.paper_tables}
        if ts.accelerators and set(ts.accelerators) != hardware:
            theirs = " and ".join(sorted("CPUs" if h == "cpu" else "GPUs" for h in hardware))
            notes.append(f"Our jobs ran on {' and '.join(a.upper() + 's' for a in ts.accelerators)}; the paper's "
                         f"figures are from {theirs}.")
        theirs_gpus = {PAPER_GPUS[t] for t in ts.paper_tables if t in PAPER_GPUS}
        if ts.gpus and theirs_gpus and set(ts.gpus) != theirs_gpus:
            ours = " or ".join(map(str, ts.gpus))
            notes.append(f"Our GPU jobs used {ours} GPU{'' if ts.gpus == [1] else 's'} each; the paper's "
                         f"{' and '.join(map(str, sorted(theirs_gpus)))} V100s per network.")
    for t in ts.paper_unmatched:
        keys = ", ".join(PAPER_TABLES[t][1])
        notes.append(f"The paper's {PAPER_TABLES[t][3]} has no figure for these jobs' settings ({keys}).")
    return notes


def to_markdown(ts: TableSet) -> str:
    lines = [f"## {_headline(ts)}", ""]
    lines += [f"{n}" for n in _notes(ts)] + ([""] if _notes(ts) else [])
    if not ts.sections or all(st.value.empty for s in ts.sections for st in s.subtables):
        return "\n".join(lines + [f"No successful job reports {ts.value}: nothing to tabulate.", ""])
    for sec in ts.sections:
        for st in sec.subtables:
            title = _fixed_title(sec.fixed, ts.group, st.group_value)
            if title:
                lines += [f"### {title}", ""]
            cols = list(st.value.columns)
            lines.append(f"| {ts.rows} \\ {ts.cols} | " + " | ".join(label_text(c) for c in cols) + " |")
            lines.append("|---:|" + "---:|" * len(cols))
            for r in st.value.index:
                cells = [" ".join(p for p in (v, s) if p) + (f" · {cmp}" if cmp else "")
                         for v, s, cmp in (_cell_parts(st, r, c) for c in cols)]
                lines.append(f"| {label_text(r)} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def _table_name(st: SubTable, r: Any, c: Any) -> str | None:
    number = st.paper_table.loc[r, c] if st.paper_table is not None else np.nan
    return f"table{int(number)}" if np.isfinite(number) else None


def to_long_csv(ts: TableSet) -> str:
    """Tidy CSV: one line per cell."""
    recs = []
    for sec in ts.sections:
        for st in sec.subtables:
            for r in st.value.index:
                for c in st.value.columns:
                    if np.isnan(st.value.loc[r, c]):  # no job; inf (skill_s: never) stays
                        continue
                    rec = dict(sec.fixed)
                    if ts.group:
                        rec[ts.group] = st.group_value
                    rec.update({ts.rows: r, ts.cols: c, f"{ts.value}_{ts.agg}": st.value.loc[r, c],
                                f"{ts.value}_std": st.std.loc[r, c], "n": int(st.n.loc[r, c]),
                                "paper_table": _table_name(st, r, c),
                                "paper": st.paper.loc[r, c], "ratio": st.ratio.loc[r, c]})
                    recs.append(rec)
    cols = list(next((s.fixed for s in ts.sections), {})) + ([ts.group] if ts.group else []) + [
        ts.rows, ts.cols, f"{ts.value}_{ts.agg}", f"{ts.value}_std", "n", "paper_table", "paper", "ratio"]
    return pd.DataFrame(recs, columns=cols).to_csv(index=False)


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "−": "-", "×": r"$\times$",
        "±": r"$\pm$", "≥": r"$\geq$", "≤": r"$\leq$"}


def _tex(s: Any) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(s))


def to_latex(ts: TableSet) -> str:
    """The paper's layout: booktabs, sub-tables by group stacked in one tabular per section."""
    out = ["% needs \\usepackage{booktabs}"]
    has_paper = bool(ts.paper_tables)
    for sec in ts.sections:
        if not sec.subtables or sec.subtables[0].value.empty:
            continue
        ncol = len(sec.subtables[0].value.columns)
        cap = f"{_tex(ts.value)} ({ts.agg}) for {_tex(ts.rows)} versus {_tex(ts.cols)}"
        cap += f" grouped by {_tex(ts.group)}" if ts.group else ""
        if sec.fixed:
            cap += ", " + ", ".join(f"{_tex(k)} = {_tex(label_text(v))}" for k, v in sec.fixed.items())
        if ts.repeats:
            cap += f"; mean $\\pm$ std over {_tex(', '.join(ts.repeats))}"
        if has_paper:
            cap += "; in brackets the paper's figure" + ("" if ts.value == "accuracy" else " and ours/paper")
        cap += "".join(f". {_tex(n.rstrip('.'))}" for n in _notes(ts) if not n.startswith("Repeats averaged"))
        out += ["\\begin{table}[htbp]", "\\centering", f"\\caption{{{cap}.}}",
                f"\\begin{{tabular}}{{l{'r' * ncol}}}", "\\toprule"]
        for i, st in enumerate(sec.subtables):
            if i:
                out.append("\\midrule")
            head = _tex(f"{label_text(st.group_value)} {ts.group}") if ts.group else ""
            out.append(f"{head} & \\multicolumn{{{ncol}}}{{c}}{{{_tex(ts.cols)}}} \\\\")
            out.append(f"\\cmidrule(lr){{2-{ncol + 1}}}")
            out.append(f"{_tex(ts.rows)} & " + " & ".join(_tex(label_text(c)) for c in st.value.columns) + " \\\\")
            out.append("\\midrule")
            for r in st.value.index:
                cells = []
                for c in st.value.columns:
                    v, sd, n = st.value.loc[r, c], st.std.loc[r, c], st.n.loc[r, c]
                    cell = number_text(v) if np.isfinite(v) else "never" if np.isposinf(v) else "--"
                    if np.isfinite(v) and n > 1 and np.isfinite(sd):
                        cell += f" $\\pm$ {number_text(sd, 2)}"
                    if np.isfinite(st.paper.loc[r, c]):
                        ratio = st.ratio.loc[r, c]
                        cell += (f" ({number_text(st.paper.loc[r, c])}"
                                 + (f"; {number_text(ratio, 3)})" if np.isfinite(ratio) else ")"))
                    cells.append(cell)
                out.append(f"{_tex(label_text(r))} & " + " & ".join(cells) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(out) + "\n"


def to_html_tables(ts: TableSet) -> str:
    e = html.escape
    parts = [f"<h3>{e(_headline(ts))}</h3>"]
    parts += [f'<p class="note">{e(n)}</p>' for n in _notes(ts)]
    if not ts.sections or all(st.value.empty for s in ts.sections for st in s.subtables):
        return "\n".join(parts + [f'<p class="empty">No successful job reports {e(ts.value)}: '
                                  "nothing to tabulate.</p>"])
    slower = ", so slower" if ts.value.endswith("_s") else ""
    parts.append(f'<p class="note">Cell shading grows with {e(ts.value)} within each table (darker: larger{slower}).'
                 '</p><div class="tables">')
    for sec in ts.sections:
        for st in sec.subtables:
            vals = st.value.to_numpy(float)
            lo, hi = (np.nanmin(vals), np.nanmax(vals)) if np.isfinite(vals).any() else (0.0, 0.0)
            title = _fixed_title(sec.fixed, ts.group, st.group_value) or "all jobs"
            rows = [f"<caption>{e(title)}</caption>",
                    f'<thead><tr><th class="corner" scope="col">{e(ts.rows)} \\ {e(ts.cols)}</th>'
                    + "".join(f'<th scope="col">{e(label_text(c))}</th>' for c in st.value.columns)
                    + "</tr></thead><tbody>"]
            for r in st.value.index:
                tds = []
                for c in st.value.columns:
                    v, sd, cmp = _cell_parts(st, r, c)
                    x = st.value.loc[r, c]
                    shade = 0.0 if hi <= lo or not np.isfinite(x) else (x - lo) / (hi - lo)
                    style = f' style="background:rgba(37,99,235,{0.04 + 0.22 * shade:.3f})"' if np.isfinite(x) else ""
                    inner = f'<span class="v">{e(v)}</span>'
                    inner += f'<span class="sd">{e(sd)}</span>' if sd else ""
                    inner += f'<span class="pp">{e(cmp)}</span>' if cmp else ""
                    tds.append(f"<td{style}>{inner}</td>")
                rows.append(f'<tr><th scope="row">{e(label_text(r))}</th>{"".join(tds)}</tr>')
            parts.append('<table class="pivot">' + "".join(rows) + "</tbody></table>")
    parts.append("</div>")
    return "\n".join(parts)
