"""Tables, plots and a self-contained report.html from a sweep dir.

python -m tornado.report SWEEP_DIR [rows=batch_size] [cols=data_multiplier] [group=epochs] [value=wall_s]
                                   [agg=mean] [metric=roc_auc] [target=0.93] [paper=auto] [out=DIR]
"""
from __future__ import annotations

import base64
import html
import importlib.util
import io
import json
import math
import sys
import textwrap
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tornado.cli import parse_kv
from tornado.errors import TornadoError, run_cli
from tornado.records import flatten, read_result, write_atomic, write_json

META = ["job", "status", "error", "output_dir", "config_hash", "overrides", "started", "finished", "host"]
METRICS = ["n", "positives", "accuracy", "roc_auc", "average_precision", "csi_050", "pod_050", "far_050",
           "best_threshold", "csi_best", "pod_best", "far_best", "brier", "bss", "climatology"]
TIMES = ["total_s", "wall_s", "data_wait_s", "compute_s", "test_s"]
RUN_INFO = ["samples_per_s", "batch_global", "batch_per_device", "devices", "accelerator"]
NOT_HPARAMS = set(META + METRICS + TIMES + RUN_INFO)
LOWER_IS_BETTER = {"brier", "far_050", "far_best", "total_s", "wall_s", "data_wait_s", "compute_s", "test_s"}
TEXT_COLUMNS = ["job", "status", "error", "output_dir", "paper", "accelerator"]
AGGS = ("mean", "median", "min", "max")
MAX_SECTIONS = 8   # beyond this many combinations of other varying settings, average them instead
MAX_PANELS = 12
DEFAULTS = {"sweep_dir": None, "rows": "batch_size", "cols": "data_multiplier", "group": "epochs", "value": "wall_s",
            "agg": "mean", "metric": "roc_auc", "target": 0.93, "paper": "auto", "out": None}

# The paper's tables: the measure they hold, the columns a job is matched on, and how our value scales to theirs.
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


# ----------------------------------------------------------------------------------------------------- loading
@dataclass
class Sweep:
    dir: Path
    df: pd.DataFrame                 # one row per job, results.csv columns
    running: list[str]               # jobs whose result.json says "running"
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> pd.DataFrame:
        return ok_rows(self.df)

    def job_dir(self, job: str) -> Path:
        row = self.df.loc[self.df["job"].astype(str) == str(job)]
        if len(row) and isinstance(row["output_dir"].iloc[0], str) and Path(row["output_dir"].iloc[0]).is_dir():
            return Path(row["output_dir"].iloc[0])
        return self.dir / str(job)


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    if "status" not in df.columns:
        return df
    return df.loc[df["status"].astype(str) == "ok"]


def _row_from_result(job: str, run_dir: Path, r: dict) -> dict:
    """One results.csv row from a result.json, by the flattening rule in docs/design.md."""
    row: dict[str, Any] = {"job": job, "status": r.get("status"), "error": r.get("error"),
                           "output_dir": r.get("output_dir") or str(run_dir)}
    row.update(flatten(r.get("hparams") or {}))
    row.update(r.get("metrics") or {})
    row.update({k: v for k, v in (r.get("times") or {}).items() if k != "epoch_s"})
    batch, devices = r.get("batch") or {}, r.get("devices") or {}
    row.update(samples_per_s=r.get("samples_per_s"), batch_global=batch.get("global"),
               batch_per_device=batch.get("per_device"), devices=devices.get("count"),
               accelerator=devices.get("accelerator"))
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
    if not sweep.is_dir():
        raise TornadoError(f"sweep dir: {sweep}: not a directory")
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
        if any(listed.get(job) != r.get("status") for job, r in results.items()):
            notes.append("results.csv was older than the job dirs' result.json files; rebuilt from those.")
            df = None
    if df is None:
        if not results:
            raise TornadoError(f"sweep dir: {sweep}: no results.csv and no */result.json")
        df = _collect(sweep, results)
    df = _normalise(df)
    if "status" not in df.columns:
        df["status"] = "ok"
    running = sorted(set(running) | set(df.loc[df["status"] == "running", "job"].astype(str)))
    return Sweep(sweep, df.reset_index(drop=True), running, notes)


def _collect(sweep: Path, results: dict[str, dict]) -> pd.DataFrame:
    if importlib.util.find_spec("tornado.collect") is not None:
        from tornado.collect import collect
        try:
            return collect(sweep)
        except OSError:  # a sweep dir we may not write to: read it without refreshing results.csv
            pass
    return pd.DataFrame([_row_from_result(job, sweep / job, r) for job, r in results.items()])


def load_history(sweep: Sweep, job: str) -> pd.DataFrame | None:
    r = read_result(sweep.job_dir(job))
    hist = (r or {}).get("history") or []
    h = pd.DataFrame(hist)
    if h.empty or "train_acc" not in h.columns:
        return None
    h = h.apply(pd.to_numeric, errors="coerce")
    if "epoch" not in h.columns:
        h["epoch"] = np.arange(len(h))
    return h.sort_values("epoch").reset_index(drop=True)


def hparam_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c not in NOT_HPARAMS and not c.startswith(("versions.", "times.", "metrics."))]


def is_repeat(col: str) -> bool:
    """Columns whose values are repeats of one configuration (averaged with their spread shown)."""
    return col in ("seed", "repeat") or col.endswith(".seed")


# ----------------------------------------------------------------------------------------------------- pivots
def _sort_key(v: Any) -> tuple:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return (2, 0.0, "")
    if isinstance(v, (bool, np.bool_)):
        return (1, 0.0, str(v))
    try:
        return (0, float(v), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(v))


def _sorted_unique(s: pd.Series) -> list:
    return sorted(pd.unique(s), key=_sort_key)


def _cells(df: pd.DataFrame, keys: list[str]):
    return df.groupby(keys, dropna=False, sort=False)


def _numeric(df: pd.DataFrame, col: str) -> pd.Series:
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
    ok = ok.assign(_v=_numeric(ok, value)).dropna(subset=["_v"])
    row_labels, col_labels = _sorted_unique(ok[rows]), _sorted_unique(ok[cols])
    groups = _sorted_unique(ok[group]) if group else [None]
    out: dict[Any, pd.DataFrame] = {}
    for g in groups:
        sub = ok if group is None else ok.loc[_same(ok[group], g)]
        stats = {"value": {}, "std": {}, "n": {}}
        for (r, c), cell in _cells(sub, [rows, cols]):
            v = cell["_v"]
            stats["value"][(r, c)] = getattr(v, agg)()
            stats["std"][(r, c)] = v.std(ddof=1) if len(v) > 1 else np.nan
            stats["n"][(r, c)] = len(v)
        frames = {k: _frame(d, row_labels, col_labels, rows, cols) for k, d in stats.items()}
        table = frames["value"]
        table.attrs["std"] = frames["std"]
        table.attrs["n"] = frames["n"].fillna(0).astype(int)
        out[g] = table
    return out


def _same(s: pd.Series, v: Any) -> pd.Series:
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
        if _sort_key(k[0]) == _sort_key(r) and _sort_key(k[1]) == _sort_key(c):
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


def _auto_table(row: pd.Series, value: str) -> str | None:
    section = str(row.get("paper", "") or "")
    accel = str(row.get("accelerator", "") or "").lower()
    gpus = pd.to_numeric(pd.Series([row.get("gpus")]), errors="coerce").iloc[0]
    cpu = accel == "cpu" or (accel in ("", "nan", "none") and gpus == 0)
    batch = pd.to_numeric(pd.Series([row.get("batch_size")]), errors="coerce").iloc[0]
    if value == "wall_s":
        if section == "6.1.1":
            return "table2" if cpu else "table3"
        if section == "6.1.2":
            return "table4" if cpu else "table5"
        if section == "6.1.3":
            return {32768: "table6", 128: "table7"}.get(batch)
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
        measure, keys, _, _ = PAPER_TABLES[name]
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
    return out


# ------------------------------------------------------------------------------------------------ table sets
@dataclass
class SubTable:
    group_value: Any
    value: pd.DataFrame
    std: pd.DataFrame
    n: pd.DataFrame
    paper: pd.DataFrame          # the paper's figure, as printed (NaN where none)
    ratio: pd.DataFrame          # ours / paper (ours scaled to the paper's unit)


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
    ok = ok.loc[_numeric(ok, value).notna()]
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
    sections = []
    combos = ok[extra].drop_duplicates() if extra else pd.DataFrame(index=[0])
    combos = sorted((tuple(r) for r in combos.itertuples(index=False)), key=lambda t: [_sort_key(v) for v in t])
    for combo in combos:
        mask = pd.Series(True, index=ok.index)
        for c, v in zip(extra, combo):
            mask &= _same(ok[c], v)
        part = ok.loc[mask]
        ours = pivot(part, rows, cols, group, value, agg)
        papers = pivot(part.assign(_p=part["_paper"]), rows, cols, group, "_p", "mean")
        paper_std = {g: t.attrs["std"] for g, t in papers.items()}
        scales = pivot(part.assign(_s=part["_scale"]), rows, cols, group, "_s", "mean")
        subs = []
        for g, t in ours.items():
            p = papers.get(g, t * np.nan).reindex_like(t)
            # A cell whose jobs match different paper figures has no single figure to compare with.
            p = p.where(paper_std.get(g, p * np.nan).reindex_like(t).fillna(0) == 0)
            s = scales.get(g, t * np.nan).reindex_like(t)
            subs.append(SubTable(g, t, t.attrs["std"], t.attrs["n"], p, t * s / p))
        sections.append(Section(dict(zip(extra, combo)), subs))
    def names(f: pd.DataFrame) -> list[str]:
        return sorted(set(f["paper_table"].dropna()), key=lambda s: int(s[5:]))

    used = names(figs.dropna(subset=["paper"]))
    return TableSet(rows, cols, group, value, agg, sections, repeats, averaged, used,
                    [t for t in names(figs) if t not in used])


# ---------------------------------------------------------------------------------------------- formatting
def _num(x: float, digits: int = 4) -> str:
    if x is None or not np.isfinite(x):
        return "–"
    if abs(x) >= 10 ** digits:
        return f"{x:.0f}"
    return f"{x:.{digits}g}"


def _label(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


def _fixed_title(fixed: dict, group: str | None, g: Any) -> str:
    parts = [f"{k} = {_label(v)}" for k, v in fixed.items()]
    if group:
        parts.append(f"{group} = {_label(g)}")
    return ", ".join(parts)


def _cell_parts(st: SubTable, r: Any, c: Any, unit: str = "") -> tuple[str, str, str]:
    """(our value, spread, paper comparison) as text; `unit` follows the paper's figure (% for accuracy)."""
    v, sd, n = st.value.loc[r, c], st.std.loc[r, c], int(st.n.loc[r, c])
    if not np.isfinite(v):
        return "–", "", ""
    spread = f"± {_num(sd, 2)} (n={n})" if n > 1 else ""
    p, ratio = st.paper.loc[r, c], st.ratio.loc[r, c]
    comp = f"paper {_num(p)}{unit} · {_num(ratio, 3)}×" if np.isfinite(p) else ""
    return _num(v), spread, comp


def _unit(ts: TableSet) -> str:
    return "%" if ts.value == "accuracy" else ""


def _headline(ts: TableSet) -> str:
    by = f", by {ts.group}" if ts.group else ""
    return f"{ts.value} ({ts.agg}): {ts.rows} × {ts.cols}{by}"


def _notes(ts: TableSet) -> list[str]:
    notes = []
    if ts.repeats:
        notes.append(f"Repeats averaged: {', '.join(ts.repeats)} (cells show {ts.agg} ± sample std, n jobs).")
    if ts.averaged:
        notes.append(f"Also averaged over (too many combinations for separate tables): {', '.join(ts.averaged)}.")
    if ts.paper_tables:
        names = "; ".join(PAPER_TABLES[t][3] for t in ts.paper_tables)
        notes.append(f"Compared with the paper's {names}: each cell shows the paper's figure and ours/paper.")
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
            lines.append(f"| {ts.rows} \\ {ts.cols} | " + " | ".join(_label(c) for c in cols) + " |")
            lines.append("|---:|" + "---:|" * len(cols))
            for r in st.value.index:
                cells = [" ".join(p for p in (v, s) if p) + (f" · {cmp}" if cmp else "")
                         for v, s, cmp in (_cell_parts(st, r, c, _unit(ts)) for c in cols)]
                lines.append(f"| {_label(r)} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def to_long_csv(ts: TableSet) -> str:
    """Tidy CSV: one line per cell."""
    recs = []
    for sec in ts.sections:
        for st in sec.subtables:
            for r in st.value.index:
                for c in st.value.columns:
                    if not np.isfinite(st.value.loc[r, c]):
                        continue
                    rec = dict(sec.fixed)
                    if ts.group:
                        rec[ts.group] = st.group_value
                    rec.update({ts.rows: r, ts.cols: c, f"{ts.value}_{ts.agg}": st.value.loc[r, c],
                                f"{ts.value}_std": st.std.loc[r, c], "n": int(st.n.loc[r, c]),
                                "paper": st.paper.loc[r, c], "ratio": st.ratio.loc[r, c]})
                    recs.append(rec)
    cols = list(next((s.fixed for s in ts.sections), {})) + ([ts.group] if ts.group else []) + [
        ts.rows, ts.cols, f"{ts.value}_{ts.agg}", f"{ts.value}_std", "n", "paper", "ratio"]
    return pd.DataFrame(recs, columns=cols).to_csv(index=False)


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


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
            cap += ", " + ", ".join(f"{_tex(k)} = {_tex(_label(v))}" for k, v in sec.fixed.items())
        if ts.repeats:
            cap += f"; mean $\\pm$ std over {_tex(', '.join(ts.repeats))}"
        if has_paper:
            cap += "; in brackets the paper's figure and ours/paper"
        out += ["\\begin{table}[htbp]", "\\centering", f"\\caption{{{cap}.}}",
                f"\\begin{{tabular}}{{l{'r' * ncol}}}", "\\toprule"]
        for i, st in enumerate(sec.subtables):
            if i:
                out.append("\\midrule")
            head = _tex(f"{_label(st.group_value)} {ts.group}") if ts.group else ""
            out.append(f"{head} & \\multicolumn{{{ncol}}}{{c}}{{{_tex(ts.cols)}}} \\\\")
            out.append(f"\\cmidrule(lr){{2-{ncol + 1}}}")
            out.append(f"{_tex(ts.rows)} & " + " & ".join(_tex(_label(c)) for c in st.value.columns) + " \\\\")
            out.append("\\midrule")
            for r in st.value.index:
                cells = []
                for c in st.value.columns:
                    v, sd, n = st.value.loc[r, c], st.std.loc[r, c], st.n.loc[r, c]
                    cell = _num(v) if np.isfinite(v) else "--"
                    if np.isfinite(v) and n > 1 and np.isfinite(sd):
                        cell += f" $\\pm$ {_num(sd, 2)}"
                    if np.isfinite(st.paper.loc[r, c]):
                        cell += f" ({_num(st.paper.loc[r, c])}; {_num(st.ratio.loc[r, c], 3)})"
                    cells.append(cell)
                out.append(f"{_tex(_label(r))} & " + " & ".join(cells) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(out) + "\n"


def to_html_tables(ts: TableSet) -> str:
    e = html.escape
    parts = [f"<h3>{e(_headline(ts))}</h3>"]
    parts += [f'<p class="note">{e(n)}</p>' for n in _notes(ts)]
    if not ts.sections or all(st.value.empty for s in ts.sections for st in s.subtables):
        return "\n".join(parts + [f'<p class="empty">No successful job reports {e(ts.value)}: '
                                  "nothing to tabulate.</p>"])
    parts.append('<div class="tables">')
    for sec in ts.sections:
        for st in sec.subtables:
            vals = st.value.to_numpy(float)
            lo, hi = (np.nanmin(vals), np.nanmax(vals)) if np.isfinite(vals).any() else (0.0, 0.0)
            title = _fixed_title(sec.fixed, ts.group, st.group_value) or "all jobs"
            rows = [f"<caption>{e(title)}</caption>",
                    f'<thead><tr><th class="corner">{e(ts.rows)} \\ {e(ts.cols)}</th>'
                    + "".join(f"<th>{e(_label(c))}</th>" for c in st.value.columns) + "</tr></thead><tbody>"]
            for r in st.value.index:
                tds = []
                for c in st.value.columns:
                    v, sd, cmp = _cell_parts(st, r, c, _unit(ts))
                    x = st.value.loc[r, c]
                    shade = 0.0 if hi <= lo or not np.isfinite(x) else (x - lo) / (hi - lo)
                    style = f' style="background:rgba(37,99,235,{0.04 + 0.22 * shade:.3f})"' if np.isfinite(x) else ""
                    inner = f'<span class="v">{e(v)}</span>'
                    inner += f'<span class="sd">{e(sd)}</span>' if sd else ""
                    inner += f'<span class="pp">{e(cmp)}</span>' if cmp else ""
                    tds.append(f"<td{style}>{inner}</td>")
                rows.append(f"<tr><th>{e(_label(r))}</th>{''.join(tds)}</tr>")
            parts.append('<table class="pivot">' + "".join(rows) + "</tbody></table>")
    parts.append("</div>")
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------------- analysis
def _direction(metric: str) -> int:
    return -1 if metric in LOWER_IS_BETTER else 1


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


def best_by_metric(ok: pd.DataFrame, metric: str, top: int = 5) -> list[dict]:
    vals = _numeric(ok, metric)
    ranked = ok.assign(_m=vals * _direction(metric)).dropna(subset=["_m"])
    ranked = ranked.sort_values(["_m", "job"], ascending=[False, True]).head(top)
    cols = varying_hparams(ok)
    return [{"job": str(r["job"]), metric: _plain(r[metric]), "wall_s": _plain(r.get("wall_s")),
             "config": _config(r, cols)} for _, r in ranked.iterrows()]


def time_to_accuracy(sweep: Sweep, target: float, histories: dict[str, pd.DataFrame]) -> list[dict]:
    """Jobs whose training accuracy reaches `target`, fastest first: summed epoch times up to that epoch."""
    ok, cols, out = sweep.ok, varying_hparams(sweep.ok), []
    for _, r in ok.iterrows():
        h = histories.get(str(r["job"]))
        if h is None or "epoch_s" not in h.columns:
            continue
        reached = np.flatnonzero(h["train_acc"].to_numpy(float) >= target)
        if reached.size == 0:
            continue
        i = int(reached[0])
        if h["epoch_s"].iloc[: i + 1].isna().any():
            continue
        out.append({"job": str(r["job"]), "seconds": float(h["epoch_s"].iloc[: i + 1].sum()),
                    "epochs": i + 1, "train_acc": float(h["train_acc"].iloc[i]), "config": _config(r, cols)})
    return sorted(out, key=lambda d: (d["seconds"], d["job"]))


def time_to_skill(ok: pd.DataFrame, metric: str, tolerance: float = 0.01) -> dict | None:
    """The fastest job (wall_s) whose test `metric` is within `tolerance` (relative) of the best."""
    m, wall = _numeric(ok, metric), _numeric(ok, "wall_s")
    good = ok.assign(_m=m, _w=wall).dropna(subset=["_m", "_w"])
    if good.empty:
        return None
    best = good["_m"].max() if _direction(metric) > 0 else good["_m"].min()
    near = good["_m"] >= best - tolerance * abs(best) if _direction(metric) > 0 else \
        good["_m"] <= best + tolerance * abs(best)
    r = good.loc[near].sort_values(["_w", "job"]).iloc[0]
    return {"job": str(r["job"]), metric: _plain(r[metric]), "best": _plain(best), "wall_s": _plain(r["wall_s"]),
            "tolerance": tolerance, "config": _config(r, varying_hparams(ok))}


# ----------------------------------------------------------------------------------------------------- plots
def _fig(n_panels: int = 1):
    from matplotlib.figure import Figure
    ncols = min(3, max(1, n_panels))
    nrows = math.ceil(max(1, n_panels) / ncols)
    size = (6.4, 4.2) if n_panels == 1 else (4.6 * ncols, 3.4 * nrows)
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:max(1, n_panels)]


def _render(fig) -> dict[str, bytes]:
    import matplotlib
    out = {}
    with matplotlib.rc_context({"svg.hashsalt": "tornado", "svg.fonttype": "none"}):
        for fmt, meta in (("png", {"Software": None}), ("svg", {"Date": None})):
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, dpi=110, metadata=meta)
            out[fmt] = buf.getvalue()
            fig.set_layout_engine("none")  # keep the layout found for the first format
    return out


def _colors(n: int):
    from matplotlib import colormaps
    cmap = colormaps["viridis"]
    return [cmap(0.85 * i / max(1, n - 1)) for i in range(n)]


def _mean_curve(jobs: list[str], histories: dict[str, pd.DataFrame]) -> tuple[np.ndarray, np.ndarray]:
    """Average of the longest histories among `jobs` (repeats of one configuration)."""
    hs = [histories[j] for j in jobs if j in histories]
    longest = max(len(h) for h in hs)
    hs = [h for h in hs if len(h) == longest]
    acc = np.mean([h["train_acc"].to_numpy(float) for h in hs], axis=0)
    return np.arange(1, longest + 1), acc


def _gpus(g: float) -> str:
    return "CPU" if g == 0 else f"{int(g)} GPU{'' if g == 1 else 's'}"


def _device_col(ok: pd.DataFrame) -> str:
    return "gpus" if "gpus" in ok.columns and _numeric(ok, "gpus").notna().all() else "devices"


def curve_figures(ok: pd.DataFrame, histories: dict[str, pd.DataFrame], rows: str) -> dict[str, tuple]:
    """Training-accuracy figures as in the paper's Figures 6-8, else one curve per job coloured by `rows`.

    Returns name -> (title, [(panel title, [(label, x, y)])]).
    """
    ok = ok.loc[ok["job"].astype(str).isin(histories)]
    if ok.empty:
        return {}
    ok = ok.assign(_b=_numeric(ok, "batch_size"), _g=_numeric(ok, _device_col(ok)))
    vary_b = ok["_b"].nunique() > 1
    vary_g = ok["_g"].nunique() > 1
    figs: dict[str, tuple] = {}

    def panels(panel_col, curve_col, label):
        out = []
        for pv in sorted(ok[panel_col].dropna().unique()):
            sub = ok.loc[ok[panel_col] == pv]
            keys = sorted(sub[curve_col].dropna().unique())
            if len(keys) < 2:
                continue
            curves = [(label(k, sub.loc[sub[curve_col] == k]),
                       *_mean_curve(list(sub.loc[sub[curve_col] == k, "job"].astype(str)), histories))
                      for k in keys]
            out.append((pv, curves))
        return out[:MAX_PANELS]

    if vary_g and ok["_b"].notna().any():
        p = panels("_b", "_g", lambda g, s: _gpus(g))
        if p:
            figs["train_acc_by_gpus"] = ("Training accuracy by GPU count at fixed batch size (cf. paper Fig. 6)",
                                         [(f"batch size {int(b)}", c) for b, c in p])
    if vary_b and ok["_g"].notna().any():
        p = panels("_g", "_b", lambda b, s: f"batch {int(b)}")
        if p:
            figs["train_acc_by_batch"] = ("Training accuracy by batch size at fixed GPU count (cf. paper Fig. 7)",
                                          [(_gpus(g), c) for g, c in p])
    if vary_b and vary_g:
        r = ok.assign(_r=ok["_b"] / ok["_g"].where(ok["_g"] > 0), _k=ok["_b"] * 1000 + ok["_g"])
        ok_r = r.dropna(subset=["_r"])
        out = []
        for rv in sorted(ok_r["_r"].unique()):
            sub = ok_r.loc[ok_r["_r"] == rv]
            keys = sorted(sub["_k"].unique())
            if len(keys) < 2:
                continue
            curves = []
            for k in keys:
                s = sub.loc[sub["_k"] == k]
                curves.append((f"batch {int(s['_b'].iloc[0])}, {_gpus(s['_g'].iloc[0])}",
                               *_mean_curve(list(s["job"].astype(str)), histories)))
            out.append((f"batch / GPUs = {_label(rv)}", curves))
        if out:
            figs["train_acc_by_ratio"] = ("Training accuracy with batch size / GPU count held constant "
                                          "(cf. paper Fig. 8)", out[:MAX_PANELS])
    if not figs:
        by = ok.assign(_o=ok[rows].map(_sort_key) if rows in ok.columns else 0).sort_values(["_o", "job"])
        curves = [(f"{rows} = {_label(row[rows] if rows in ok.columns else None)}",
                   *_mean_curve([str(row["job"])], histories)) for _, row in by.iterrows()]
        figs["train_acc"] = (f"Training accuracy per job, coloured by {rows}", [("", curves)])
        return figs
    mixed = [c for c in varying_hparams(ok) if c not in ("batch_size", "gpus", "epochs")]
    if mixed:  # say what the curves average over; the longest runs of each curve are the ones drawn
        figs = {k: (title, p, f"{title}. Each curve averages the longest runs that differ only in: "
                              f"{', '.join(mixed)}.") for k, (title, p) in figs.items()}
    return figs


def plot_curves(spec: tuple) -> dict[str, bytes]:
    from matplotlib.ticker import MaxNLocator
    title, panels = spec[0], spec[1]
    fig, axes = _fig(len(panels))
    for ax, (ptitle, curves) in zip(axes, panels):
        labels = list(dict.fromkeys(c[0] for c in curves))
        colors = dict(zip(labels, _colors(len(labels))))
        seen = set()
        for label, x, y in curves:
            ax.plot(x, y, color=colors[label], lw=1.4, label=None if label in seen else label)
            seen.add(label)
        ax.set_title(ptitle, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("training accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(textwrap.fill(title, 60 if len(panels) == 1 else 120), fontsize=11)
    return _render(fig)


def plot_wall_vs_batch(ok: pd.DataFrame, group: str | None) -> dict[str, bytes] | None:
    """Wall time against batch size, one line per data multiplier (panels by `group` when it varies too)."""
    ok = ok.assign(_b=_numeric(ok, "batch_size"), _w=_numeric(ok, "wall_s")).dropna(subset=["_b", "_w"])
    if ok["_b"].nunique() < 2:
        return None
    def varies(c):
        return c and c != "batch_size" and c in ok.columns and ok[c].nunique(dropna=False) > 1

    line = next((c for c in ("data_multiplier", group) if varies(c)), None)
    panel = next((c for c in (group, "epochs") if varies(c) and c != line), None)
    pvals = _sorted_unique(ok[panel])[:MAX_PANELS] if panel else [None]
    fig, axes = _fig(len(pvals))
    for ax, pv in zip(axes, pvals):
        sub = ok if panel is None else ok.loc[_same(ok[panel], pv)]
        lvals = _sorted_unique(sub[line]) if line else [None]
        for color, lv in zip(_colors(len(lvals)), lvals):
            s = sub if line is None else sub.loc[_same(sub[line], lv)]
            g = s.groupby("_b")["_w"]
            m, sd = g.mean(), g.std(ddof=1)
            ax.errorbar(m.index, m.to_numpy(), yerr=sd.fillna(0).to_numpy(), marker="o", ms=4, lw=1.4, capsize=2,
                        color=color, label=f"{line} = {_label(lv)}" if line else "all jobs")
        ax.set_xscale("log", base=2)
        ax.minorticks_off()
        ax.set_xticks(sorted(sub["_b"].unique()), [_label(b) for b in sorted(sub["_b"].unique())], fontsize=7)
        ax.set_title(f"{panel} = {_label(pv)}" if panel else "", fontsize=10)
        ax.set_xlabel("batch size")
        ax.set_ylabel("wall time (s)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Wall time against batch size", fontsize=11)
    return _render(fig)


def roc_points(prob: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """False and true positive rates at every distinct threshold (from (0, 0)), and the area under them."""
    order = np.argsort(-prob, kind="stable")
    p, y = prob[order], label[order].astype(float)
    last = np.r_[np.flatnonzero(np.diff(p)), len(p) - 1]   # ties share one threshold
    tpr = np.r_[0.0, np.cumsum(y)[last] / y.sum()]
    fpr = np.r_[0.0, np.cumsum(1 - y)[last] / (1 - y).sum()]
    return fpr, tpr, float(np.trapezoid(tpr, fpr))


def reliability_points(prob: np.ndarray, label: np.ndarray, bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Mean forecast and observed frequency in each non-empty bin of equal width on [0, 1]."""
    idx = np.clip((prob * bins).astype(int), 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    keep = count > 0
    mean_p = np.bincount(idx, weights=prob, minlength=bins)[keep] / count[keep]
    frac = np.bincount(idx, weights=label.astype(float), minlength=bins)[keep] / count[keep]
    return mean_p, frac


def plot_roc_reliability(prob: np.ndarray, label: np.ndarray, job: str) -> dict[str, dict[str, bytes]]:
    out = {}
    fpr, tpr, auc = roc_points(prob, label)
    fig, (ax,) = _fig(1)
    ax.plot(fpr, tpr, lw=1.6, color="#2563eb", label=f"AUC = {auc:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC curve: job {job}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    out["roc"] = _render(fig)
    mean_p, frac = reliability_points(prob, label)
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6.4, 5.4), layout="constrained")
    ax, hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect")
    ax.axhline(label.mean(), ls=":", color="#b45309", lw=1, label=f"climatology {label.mean():.3f}")
    ax.plot(mean_p, frac, marker="o", color="#2563eb", lw=1.6, label="forecast")
    ax.set(ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1), title=f"Reliability diagram: job {job}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    hist.hist(prob, bins=20, range=(0, 1), color="#94a3b8", log=True)
    hist.set(xlabel="forecast probability", ylabel="forecasts")
    hist.grid(alpha=0.3)
    out["reliability"] = _render(fig)
    return out


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
.note{color:#475569;font-size:13px;margin:4px 0}.empty{color:#b91c1c;font-weight:600}
.tables{display:flex;flex-wrap:wrap;gap:18px;overflow-x:auto}
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
code,.err{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12px}
.err{white-space:pre-wrap;color:#991b1b}
"""


def _epochs(n: int) -> str:
    return f"{n} epoch{'' if n == 1 else 's'}"


def _cfg_text(cfg: dict) -> str:
    return ", ".join(f"{k}={_label(v)}" for k, v in cfg.items()) or "(no varying settings)"


def render_html(sweep: Sweep, ts: TableSet, summary: dict, images: dict[str, tuple[str, bytes]],
                metric: str, target: float) -> str:
    e = html.escape
    df, ok = sweep.df, sweep.ok
    failed = _problems(df)
    counts = (f'<div class="chips"><span>{len(df)} jobs</span><span class="okc">{len(ok)} ok</span>'
              f'<span class="bad">{len(failed)} failed</span><span class="run">{len(sweep.running)} running</span>'
              "</div>")
    body = [f"<h1>Sweep report: {e(sweep.dir.name)}</h1>", f'<p class="sub">{e(str(sweep.dir.resolve()))}</p>',
            counts]
    if sweep.running:
        body.append(f'<div class="partial" id="partial">Partial report: the sweep is still running '
                    f'({len(sweep.running)} job{"s" if len(sweep.running) != 1 else ""} unfinished). '
                    "Tables and plots cover the finished jobs only.</div>")
    if ok.empty:
        body.append('<p class="empty">No job finished successfully: there are no tables or plots. '
                    "The failed jobs and their errors are listed below.</p>")
    body.append('<nav><a href="#best">Best configurations</a><a href="#tables">Tables</a>'
                '<a href="#plots">Plots</a><a href="#failed">Failed jobs</a></nav>')
    body += ['<h2 id="best">Best configurations</h2>', '<div class="cards">']
    best = summary["best_by_metric"]
    card = f"<h3>Best by {e(metric)}</h3>"
    if best:
        card += "".join(f"<p><b>{e(_num(b[metric]))}</b> · job {e(b['job'])} · wall {e(_num(b['wall_s']))} s<br>"
                        f"<code>{e(_cfg_text(b['config']))}</code></p>" for b in best[:3])
    else:
        card += f"<p>No successful job reports {e(metric)}.</p>"
    body.append(f'<div class="card">{card}</div>')
    tta = summary["time_to_accuracy"]
    card = f"<h3>Fastest to {e(_num(target))} training accuracy</h3>"
    if tta:
        card += "".join(f"<p><b>{e(_num(t['seconds']))} s</b> ({_epochs(t['epochs'])}) · job {e(t['job'])}<br>"
                        f"<code>{e(_cfg_text(t['config']))}</code></p>" for t in tta[:3])
    else:
        card += "<p>No job reached it (or no per-epoch history was found).</p>"
    body.append(f'<div class="card">{card}</div>')
    tts = summary["time_to_skill"]
    card = f"<h3>Fastest within 1% of the best {e(metric)}</h3>"
    if tts:
        card += (f"<p><b>{e(_num(tts['wall_s']))} s</b> · {e(metric)} {e(_num(tts[metric]))} "
                 f"(best {e(_num(tts['best']))}) · job {e(tts['job'])}<br>"
                 f"<code>{e(_cfg_text(tts['config']))}</code></p>")
    else:
        card += "<p>No successful job has both a wall time and this metric.</p>"
    body += [f'<div class="card">{card}</div>', "</div>"]
    body += ['<h2 id="tables">Tables</h2>', to_html_tables(ts)]
    body.append('<h2 id="plots">Plots</h2>')
    if images:
        for name, (caption, png) in images.items():
            b64 = base64.b64encode(png).decode()
            body.append(f'<figure><img alt="{e(name)}" src="data:image/png;base64,{b64}">'
                        f"<figcaption>{e(caption)}</figcaption></figure>")
    else:
        body.append('<p class="note">No plots: no successful job with the data they need.</p>')
    body += [f"<p class=\"note\">{e(n)}</p>" for n in summary["notes"]]
    body.append('<h2 id="failed">Failed jobs</h2>')
    if len(failed):
        rows = "".join(f"<tr><td>{e(str(r['job']))}</td><td>{e(str(r['status']))}</td>"
                       f"<td class=\"err\">{e(_text(r.get('error')))}</td></tr>" for _, r in failed.iterrows())
        body.append('<table class="list"><thead><tr><th>job</th><th>status</th><th>error</th></tr></thead>'
                    f"<tbody>{rows}</tbody></table>")
    else:
        body.append('<p class="note">None.</p>')
    if sweep.running:
        body.append(f'<p class="note">Still running: {e(", ".join(sweep.running))}</p>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>Sweep report: {e(sweep.dir.name)}</title><style>{CSS}</style></head>"
            f"<body><main>\n" + "\n".join(body) + "\n</main></body></html>\n")


# ------------------------------------------------------------------------------------------------- building
def _problems(df: pd.DataFrame) -> pd.DataFrame:
    """Jobs that neither finished well nor are still running (failed, unreadable result.json, ...)."""
    return df.loc[~df["status"].astype(str).isin(["ok", "running"])]


def _text(v: Any) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def _check_column(df: pd.DataFrame, key: str, col: str, known: bool = False) -> None:
    if col not in df.columns and not (known and col in METRICS + TIMES + RUN_INFO):
        raise TornadoError(f"{key}={col}: no such column in results.csv")


def build_report(sweep_dir: str | Path, rows: str = "batch_size", cols: str = "data_multiplier",
                 group: str | None = "epochs", value: str = "wall_s", agg: str = "mean", metric: str = "roc_auc",
                 target: float = 0.93, paper: str = "auto", out: str | Path | None = None) -> dict[str, Path]:
    """Write tables, plots, summary.json and report.html; return {file name: path} of what was written."""
    group = None if group in (None, "none") else group
    if agg not in AGGS:
        raise TornadoError(f"agg={agg}: must be one of {', '.join(AGGS)}")
    if not 0 < float(target) <= 1:
        raise TornadoError(f"target={target}: must be a training accuracy in (0, 1]")
    if paper not in ("auto", "none") and paper not in PAPER_TABLES:
        raise TornadoError(f"paper={paper}: must be auto, none or one of {', '.join(PAPER_TABLES)}")
    if paper in PAPER_TABLES and PAPER_TABLES[paper][0] != value:
        raise TornadoError(f"paper={paper}: that table holds {PAPER_TABLES[paper][0]}, not {value}")
    if len({rows, cols, group} - {None}) != len([c for c in (rows, cols, group) if c]):
        raise TornadoError(f"rows={rows} cols={cols} group={group}: must be different columns")
    sweep = load_sweep(sweep_dir)
    df = sweep.df
    for key, col in (("rows", rows), ("cols", cols), ("group", group)):
        if col:
            _check_column(df, key, col)
    _check_column(df, "value", value, known=True)
    _check_column(df, "metric", metric, known=True)
    if value in df.columns and df[value].notna().any() and not pd.api.types.is_numeric_dtype(df[value]):
        raise TornadoError(f"value={value}: not a numeric column")

    report_dir = Path(out) if out else sweep.dir / "report"
    html_path = report_dir / "report.html" if out else sweep.dir / "report.html"
    written: dict[str, Path] = {}

    def put(name: str, data: bytes | str) -> None:
        write_atomic(report_dir / name, data)
        written[name] = report_dir / name

    ok = sweep.ok
    ts = build_tables(df, rows, cols, group, value, agg, paper)
    notes = list(sweep.notes)
    histories = {str(j): h for j in ok["job"] if (h := load_history(sweep, str(j))) is not None}

    images: dict[str, tuple[str, bytes]] = {}
    plots: dict[str, dict[str, bytes]] = {}
    for name, spec in curve_figures(ok, histories, rows).items():
        plots[name] = plot_curves(spec)
        images[name] = (spec[-1] if len(spec) > 2 else spec[0], plots[name]["png"])
    if not histories and len(ok):
        notes.append("No per-epoch history in the jobs' result.json: no training-accuracy curves.")
    wall = plot_wall_vs_batch(ok, group)
    if wall:
        plots["wall_vs_batch"] = wall
        images["wall_vs_batch"] = ("Wall time (training) against batch size; error bars: std over jobs", wall["png"])
    best = best_by_metric(ok, metric)
    best_pred = None
    for b in best_by_metric(ok, metric, top=len(ok)):
        npz = sweep.job_dir(b["job"]) / "test_predictions.npz"
        if npz.is_file():
            with np.load(npz) as z:
                best_pred = (b["job"], np.asarray(z["prob"], float), np.asarray(z["label"], int))
            break
    if best_pred and len(np.unique(best_pred[2])) == 2:
        job, prob, label = best_pred
        for name, data in plot_roc_reliability(prob, label, job).items():
            plots[name] = data
            cap = {"roc": f"ROC curve on the test set of the best job by {metric} ({job})",
                   "reliability": f"Reliability diagram of the best job by {metric} ({job}); below: how many "
                                  "forecasts fall in each bin"}
            images[name] = (cap[name], data["png"])
    elif len(ok):
        notes.append("No test_predictions.npz with both classes for the best job: no ROC or reliability plot.")
    for name in ("train_acc", "train_acc_by_gpus", "train_acc_by_batch", "train_acc_by_ratio", "wall_vs_batch",
                 "roc", "reliability"):
        for fmt in ("png", "svg"):
            if name in plots:
                put(f"{name}.{fmt}", plots[name][fmt])
            else:
                (report_dir / f"{name}.{fmt}").unlink(missing_ok=True)  # stale from an earlier report

    summary = {
        "sweep_dir": str(sweep.dir.resolve()), "partial": bool(sweep.running), "running": sweep.running,
        "jobs": len(df), "ok": len(ok), "failed": len(_problems(df)),
        "failed_jobs": [{"job": str(r["job"]), "status": str(r["status"]), "error": _text(r.get("error")) or None}
                        for _, r in _problems(df).iterrows()],
        "table": {"rows": rows, "cols": cols, "group": group, "value": value, "agg": agg,
                  "repeats": ts.repeats, "averaged": ts.averaged, "paper_tables": ts.paper_tables,
                  "sections": [{k: _plain(v) for k, v in s.fixed.items()} for s in ts.sections]},
        "metric": metric, "target": float(target),
        "best_by_metric": best, "time_to_accuracy": time_to_accuracy(sweep, float(target), histories)[:5],
        "time_to_skill": time_to_skill(ok, metric), "notes": notes,
    }
    md = to_markdown(ts)
    put("table.md", md)
    put("table.csv", to_long_csv(ts))
    put("table.tex", to_latex(ts))
    write_json(report_dir / "summary.json", summary)
    written["summary.json"] = report_dir / "summary.json"
    write_atomic(html_path, render_html(sweep, ts, summary, images, metric, float(target)))
    written["report.html"] = html_path
    return written


def summary_text(summary: dict) -> str:
    lines = []
    if summary["partial"]:
        lines.append(f"PARTIAL: {len(summary['running'])} job(s) still running")
    lines.append(f"jobs: {summary['jobs']} ({summary['ok']} ok, {summary['failed']} failed)")
    m = summary["metric"]
    if summary["best_by_metric"]:
        b = summary["best_by_metric"][0]
        lines.append(f"best by {m}: job {b['job']} ({m} {_num(b[m])}): {_cfg_text(b['config'])}")
    if summary["time_to_accuracy"]:
        t = summary["time_to_accuracy"][0]
        lines.append(f"fastest to training accuracy {_num(summary['target'])}: job {t['job']} "
                     f"({_num(t['seconds'])} s, {_epochs(t['epochs'])}): {_cfg_text(t['config'])}")
    for f in summary["failed_jobs"]:
        lines.append(f"{f['status']}: job {f['job']}: {f['error']}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------- CLI
USAGE = ("usage: python -m tornado.report SWEEP_DIR [rows=batch_size] [cols=data_multiplier] [group=epochs|none] "
         "[value=wall_s] [agg=mean|median|min|max] [metric=roc_auc] [target=0.93] [paper=auto|none|table2..table9] "
         "[out=DIR]")


def main(argv: list[str] | None = None) -> dict[str, Path]:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        return {}

    def work() -> dict[str, Path]:
        o = parse_kv(argv, DEFAULTS, positional=("sweep_dir",))
        sweep_dir = o.pop("sweep_dir")
        if not sweep_dir:
            raise TornadoError("SWEEP_DIR: missing; " + USAGE.removeprefix("usage: "))
        written = build_report(sweep_dir, **o)
        print(written["table.md"].read_text())
        print(summary_text(json.loads(written["summary.json"].read_text())))
        print(f"report: {written['report.html']}")
        return written

    return run_cli(work)


if __name__ == "__main__":
    main()
