"""The report's figures (matplotlib, no display needed), each as PNG and SVG bytes: training-accuracy curves
grouped as the paper's Figures 6-8, wall time against batch size, and the ROC curve, reliability diagram and
performance diagram."""
from __future__ import annotations

import io
import math
import textwrap

import numpy as np
import pandas as pd

from tornado.cli import counted
from tornado.metrics import RELIABILITY_BINS, contingency, counts_at_thresholds
from tornado.tables import label_text, matches, numeric_column, sort_key, sorted_unique, varying_hparams

_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # NumPy 2 renamed trapz (the name NumPy 1.x has)

MAX_PANELS = 12


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


def _mean_curve(jobs: list[str], histories: dict[str, pd.DataFrame]) -> tuple[np.ndarray, np.ndarray, int]:
    """Average of the longest histories among `jobs` (repeats of one configuration), and how many it averages."""
    hs = [histories[j] for j in jobs if j in histories]
    longest = max(len(h) for h in hs)
    hs = [h for h in hs if len(h) == longest]
    acc = np.mean([h["train_acc"].to_numpy(float) for h in hs], axis=0)
    return np.arange(1, longest + 1), acc, len(hs)


def _label_counts(panels: list[tuple], always: bool) -> list[tuple]:
    """Panels of (label, x, y, jobs averaged) curves as (label, x, y): where any curve of the figure averages
    several jobs, or `always`, each label says how many its curve averages (a failed job leaves a curve fewer)."""
    many = always or any(n > 1 for _, curves in panels for *_, n in curves)
    return [(title, [(f"{label} ({f'mean of {n} jobs' if n > 1 else '1 job'})" if many else label, x, y)
                     for label, x, y, n in curves]) for title, curves in panels]


def _plural(unit: str) -> str:
    return unit + ("es" if unit.endswith("s") else "s")


def _devices(g: float, unit: str = "GPU") -> str:
    return "CPU" if g == 0 else counted(int(g), unit, _plural(unit))


def _device_col(ok: pd.DataFrame) -> str:
    return "gpus" if "gpus" in ok.columns and numeric_column(ok, "gpus").notna().all() else "devices"


def _device_counts(ok: pd.DataFrame) -> tuple[pd.Series, str]:
    """(devices per job, what they are): GPUs, 0 for a job that ran on the CPU among them (`gpus=auto` on a
    machine without one, say); where every job ran on CPUs, their processes (DDP ranks)."""
    cpu = ok["accelerator"].astype(str) == "cpu" if "accelerator" in ok.columns else pd.Series(False, index=ok.index)
    if len(ok) and cpu.all() and "devices" in ok.columns:
        return numeric_column(ok, "devices"), "CPU process"
    return numeric_column(ok, _device_col(ok)).where(~cpu, 0.0), "GPU"


def curve_figures(ok: pd.DataFrame, histories: dict[str, pd.DataFrame], rows: str,
                  varying: list[str] | None = None) -> dict[str, tuple]:
    """Training-accuracy figures as in the paper's Figures 6-8, else one curve per job coloured by `rows`.
    `varying`: `varying_hparams(ok)`, where the caller has it.

    Returns name -> (title, [(panel title, [(label, x, y)])]).
    """
    ok = ok.loc[ok["job"].astype(str).isin(histories)]
    if ok.empty:
        return {}
    counts, unit = _device_counts(ok)
    ok = ok.assign(_b=numeric_column(ok, "batch_size"), _g=counts)
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
        p = panels("_b", "_g", lambda g, s: _devices(g, unit))
        if p:
            figs["train_acc_by_gpus"] = (f"Training accuracy by {unit} count at fixed batch size (cf. paper Fig. 6)",
                                         [(f"batch size {int(b)}", c) for b, c in p])
    if vary_b and ok["_g"].notna().any():
        p = panels("_g", "_b", lambda b, s: f"batch {int(b)}")
        if p:
            figs["train_acc_by_batch"] = (f"Training accuracy by batch size at fixed {unit} count (cf. paper Fig. 7)",
                                          [(_devices(g, unit), c) for g, c in p])
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
                curves.append((f"batch {int(s['_b'].iloc[0])}, {_devices(s['_g'].iloc[0], unit)}",
                               *_mean_curve(list(s["job"].astype(str)), histories)))
            out.append((f"batch / {_plural(unit)} = {label_text(rv)}", curves))
        if out:
            figs["train_acc_by_ratio"] = (f"Training accuracy with batch size / {unit} count held constant "
                                          "(cf. paper Fig. 8)", out[:MAX_PANELS])
    if not figs:
        by = ok.assign(_o=ok[rows].map(sort_key) if rows in ok.columns else 0).sort_values(["_o", "job"])
        curves = [(f"{rows} = {label_text(row[rows] if rows in ok.columns else None)}",
                   *_mean_curve([str(row["job"])], histories)[:2]) for _, row in by.iterrows()]
        figs["train_acc"] = (f"Training accuracy per job, coloured by {rows}", [("", curves)])
        return figs
    # of the settings that vary, those that still vary among the jobs with a history
    varying = varying_hparams(ok) if varying is None else [c for c in varying if ok[c].nunique(dropna=False) > 1]
    mixed = [c for c in varying if c not in ("batch_size", "gpus", "epochs")]
    figs = {k: (title, _label_counts(p, bool(mixed))) for k, (title, p) in figs.items()}
    if mixed:  # say what the curves average over; the longest runs of each curve are the ones drawn
        figs = {k: (title, p, f"{title}. Each curve averages the longest runs that differ only in: "
                              f"{', '.join(mixed)} (the legend says how many).") for k, (title, p) in figs.items()}
    return figs


def _epoch_axis(ax, epochs: list[float]) -> None:
    """Whole-number epoch ticks; a single epoch centred in a range one epoch wide, not in matplotlib's ±5%."""
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    finite = [float(e) for e in epochs if np.isfinite(e)]
    if finite and max(finite) - min(finite) < 1:
        ax.set_xlim(min(finite) - 0.5, max(finite) + 0.5)


def plot_curves(spec: tuple) -> dict[str, bytes]:
    title, panels = spec[0], spec[1]
    fig, axes = _fig(len(panels))
    for ax, (ptitle, curves) in zip(axes, panels):
        labels = list(dict.fromkeys(c[0] for c in curves))
        colors = dict(zip(labels, _colors(len(labels))))
        seen = set()
        for label, x, y in curves:
            ax.plot(x, y, color=colors[label], lw=1.4, label=None if label in seen else label,
                    marker="o" if len(x) <= 3 else None, ms=4)  # a 1-epoch run is one point
            seen.add(label)
        ax.set_title(ptitle, fontsize=10)
        ax.set_xlabel("epoch")
        _epoch_axis(ax, [e for _, x, _ in curves for e in x])
        ax.set_ylabel("training accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(textwrap.fill(title, 60 if len(panels) == 1 else 120), fontsize=11)
    return _render(fig)


def plot_skill_vs_time(curves: list[tuple[str, np.ndarray, np.ndarray]], target: float) -> dict[str, bytes]:
    """Validation ROC AUC after each epoch against training seconds, one line per job, and the target."""
    fig, axes = _fig(1)
    ax = axes[0]
    for color, (label, x, y) in zip(_colors(len(curves)), curves):
        ax.plot(x, y, color=color, lw=1.4, marker="o", ms=3, label=label)
    ax.axhline(target, color="0.35", ls="--", lw=1, label=f"skill target {target:.3f}")
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("validation ROC AUC")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6 if len(curves) > 8 else 7, loc="lower right")
    fig.suptitle("Validation skill against training time", fontsize=11)
    return _render(fig)


def learning_panels(history: pd.DataFrame) -> list[tuple[str, str]]:
    """The learning curves a run's history has: (title, column) of its loss, accuracy and validation ROC AUC."""
    return [(t, c) for t, c in (("training loss", "train_loss"), ("training accuracy", "train_acc"),
                                ("validation ROC AUC", "val_roc_auc"))
            if c in history.columns and history[c].notna().any()]


def plot_learning_curves(history: pd.DataFrame, scored_epoch: int | None = None) -> dict[str, bytes]:
    """One run's training loss and accuracy, and validation ROC AUC where scored, against epoch (from 1);
    `scored_epoch`: the epoch whose weights were scored (early stopping), marked."""
    epoch = history["epoch"].to_numpy(int) + 1 if "epoch" in history.columns else np.arange(1, len(history) + 1)
    panels = learning_panels(history)
    fig, axes = _fig(len(panels))
    for ax, (title, col) in zip(axes, panels):
        ax.plot(epoch, history[col].to_numpy(float), color="#2563eb", lw=1.6, marker="o", ms=3)
        if scored_epoch is not None:
            ax.axvline(scored_epoch, color="#b45309", ls=":", lw=1.2, label=f"scored: epoch {scored_epoch}")
            ax.legend(fontsize=7, loc="best")
        ax.set(title=title, xlabel="epoch")
        _epoch_axis(ax, [*epoch, *([scored_epoch] if scored_epoch is not None else [])])
        ax.grid(alpha=0.3)
    fig.suptitle("Learning curves", fontsize=11)
    return _render(fig)


def wall_layout(ok: pd.DataFrame, group: str | None) -> tuple[pd.DataFrame, str | None, str | None]:
    """What `plot_wall_vs_batch` draws: the jobs with a batch size and a wall time (as `_b`, `_w`), the setting
    with a line each (data multiplier, else `group`) and the one with a panel each (`group`, else epochs)."""
    ok = ok.assign(_b=numeric_column(ok, "batch_size"), _w=numeric_column(ok, "wall_s")).dropna(subset=["_b", "_w"])

    def varies(c):
        return c and c != "batch_size" and c in ok.columns and ok[c].nunique(dropna=False) > 1

    line = next((c for c in ("data_multiplier", group) if varies(c)), None)
    return ok, line, next((c for c in (group, "epochs") if varies(c) and c != line), None)


def plot_wall_vs_batch(ok: pd.DataFrame, group: str | None) -> dict[str, bytes] | None:
    """Wall time against batch size, one line per data multiplier (panels by `group` when it varies too)."""
    ok, line, panel = wall_layout(ok, group)
    if ok["_b"].nunique() < 2:
        return None
    pvals = sorted_unique(ok[panel])[:MAX_PANELS] if panel else [None]
    fig, axes = _fig(len(pvals))
    for ax, pv in zip(axes, pvals):
        sub = ok if panel is None else ok.loc[matches(ok[panel], pv)]
        lvals = sorted_unique(sub[line]) if line else [None]
        for color, lv in zip(_colors(len(lvals)), lvals):
            s = sub if line is None else sub.loc[matches(sub[line], lv)]
            g = s.groupby("_b")["_w"]
            m, sd = g.mean(), g.std(ddof=1)
            ax.errorbar(m.index, m.to_numpy(), yerr=sd.fillna(0).to_numpy(), marker="o", ms=4, lw=1.4, capsize=2,
                        color=color, label=f"{line} = {label_text(lv)}" if line else "all jobs")
        ax.set_xscale("log", base=2)
        ax.minorticks_off()
        ax.set_xticks(sorted(sub["_b"].unique()), [label_text(b) for b in sorted(sub["_b"].unique())])
        ax.set_title(f"{panel} = {label_text(pv)}" if panel else "", fontsize=10)
        ax.set_xlabel("batch size")
        ax.set_ylabel("wall time (s)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Wall time against batch size", fontsize=11)
    _rotate_crowded_xticks(fig, axes)
    return _render(fig)


def _rotate_crowded_xticks(fig, axes) -> None:
    """Slant an axis's x tick labels where, laid out level, two of them would touch."""
    fig.draw_without_rendering()
    for ax in axes:
        boxes = sorted((t.get_window_extent() for t in ax.get_xticklabels() if t.get_visible() and t.get_text()),
                       key=lambda b: b.x0)
        if any(a.x1 + 4 > b.x0 for a, b in zip(boxes, boxes[1:])):
            ax.tick_params(axis="x", labelrotation=45)
            for t in ax.get_xticklabels():
                t.set_horizontalalignment("right")
                t.set_rotation_mode("anchor")


def roc_points(prob: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """False and true positive rates at every distinct threshold (from (0, 0)), and the area under them."""
    _, hits, false_alarms = counts_at_thresholds(prob, label)
    tpr = np.r_[0.0, hits / np.sum(label)]
    fpr = np.r_[0.0, false_alarms / (len(label) - np.sum(label))]
    return fpr, tpr, float(_trapezoid(tpr, fpr))


def plot_roc_comparison(curves: list[tuple[str, np.ndarray, np.ndarray]]) -> dict[str, bytes]:
    """Several jobs' ROC curves on the same test cases, one line each: (legend label, probabilities, labels)."""
    fig, (ax,) = _fig(1)
    for color, (name, prob, label) in zip(_colors(len(curves)), curves):
        fpr, tpr, _ = roc_points(prob, label)
        ax.plot(fpr, tpr, lw=1.4, color=color, label=name)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curves of the best jobs")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    return _render(fig)


def _bin_counts(prob: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Each forecast's bin of equal width on [0, 1] (1.0 in the last), and how many forecasts each bin holds."""
    idx = np.clip((prob * bins).astype(int), 0, bins - 1)
    return idx, np.bincount(idx, minlength=bins)


def reliability_points(prob: np.ndarray, label: np.ndarray,
                       bins: int = RELIABILITY_BINS) -> tuple[np.ndarray, ...]:
    """Mean forecast, observed frequency and its 95% Wilson interval in each non-empty bin of equal width on
    [0, 1]. With ~5% positives the upper bins hold few forecasts: the interval shows how little they say."""
    from scipy.stats import binomtest

    idx, count = _bin_counts(prob, bins)
    keep = count > 0
    hits = np.bincount(idx, weights=label.astype(float), minlength=bins)[keep].round().astype(int)
    n = count[keep]
    mean_p = np.bincount(idx, weights=prob, minlength=bins)[keep] / n
    ci = [binomtest(int(k), int(m)).proportion_ci(0.95, method="wilson") for k, m in zip(hits, n)]
    return mean_p, hits / n, np.array([c.low for c in ci]), np.array([c.high for c in ci])


def performance_points(prob: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Success ratio (1 - FAR), probability of detection and the threshold at every distinct forecast value,
    from the highest: "yes" where the probability is at or above it."""
    cut, hits, false_alarms = counts_at_thresholds(prob, label)
    return hits / (hits + false_alarms), hits / max(np.sum(label), 1), cut


def _performance_diagram(prob: np.ndarray, label: np.ndarray, who: str, threshold: float | None):
    """Roebber (2009): POD against success ratio, with lines of equal CSI (shaded) and of equal bias (dashed)."""
    fig, (ax,) = _fig(1)
    fig.set_size_inches(6.0, 5.4)
    grid = np.linspace(0.005, 1, 200)
    sr, pod = np.meshgrid(grid, grid)
    csi = 1 / (1 / sr + 1 / pod - 1)
    shade = ax.contourf(sr, pod, csi, levels=np.linspace(0, 1, 11), cmap="Blues", alpha=0.55)
    fig.colorbar(shade, ax=ax, label="critical success index")
    for bias in (0.5, 1, 2, 4):
        ax.plot(grid, np.clip(bias * grid, 0, 1), ls="--", lw=0.7, color="grey")
        ax.annotate(f"bias {bias:g}", (min(1, 1 / bias) * 0.97, min(1, bias) * 0.97), fontsize=8, color="#374151",
                    ha="right", va="top")
    x, y, _ = performance_points(prob, label)
    ax.plot(x, y, lw=1.6, color="#b91c1c", label="forecast, every threshold")
    if threshold is not None and math.isfinite(threshold):
        at = contingency(prob, label, threshold)
        if math.isfinite(at["far"]):  # some forecasts "yes"
            ax.plot(1 - at["far"], at["pod"], "o", color="black",
                    label=f"threshold {threshold:.3g} (chosen on validation)")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="success ratio (1 - false alarm ratio)",
           ylabel="probability of detection", title=f"Performance diagram: {who}")
    ax.legend(loc="lower left", fontsize=8)
    return _render(fig)


def plot_verification(prob: np.ndarray, label: np.ndarray, who: str, threshold: float | None = None,
                      climatology: float | None = None) -> dict[str, dict[str, bytes]]:
    """ROC curve, reliability diagram and performance diagram of one job's test forecasts; `who`: whose, as the
    titles name it ("job 3", "run <name>"); `climatology`: the base rate the Brier skill score is measured
    against (the training originals'; else the test set's)."""
    out = {}
    fpr, tpr, auc = roc_points(prob, label)
    fig, (ax,) = _fig(1)
    ax.plot(fpr, tpr, lw=1.6, color="#2563eb", label=f"AUC = {auc:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC curve: {who}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    out["roc"] = _render(fig)
    mean_p, frac, low, high = reliability_points(prob, label)
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6.4, 5.4), layout="constrained")
    ax, hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    # an attributes diagram (Hsu and Murphy, 1986): a bin inside the shaded area, nearer the diagonal than the
    # no-skill line halfway to climatology, adds to the Brier skill score
    known = climatology is not None and math.isfinite(climatology)
    c = float(climatology) if known else float(label.mean())
    grid = np.linspace(0, 1, 101)
    ax.fill_between(grid, (grid + c) / 2, np.where(grid >= c, 1.0, 0.0), color="#dbeafe", alpha=0.6, lw=0,
                    label="adds skill")
    ax.plot(grid, (grid + c) / 2, ls="-.", color="#64748b", lw=1, label="no skill")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect")
    ax.axhline(c, ls=":", color="#b45309", lw=1.4, label=f"climatology {c:.3f}" + ("" if known else " (test set)"))
    ax.axvline(c, ls=":", color="#b45309", lw=1.4)
    if known:
        ax.axhline(label.mean(), ls="-", color="#7c3aed", lw=1, alpha=0.8,
                   label=f"test-set base rate {label.mean():.3f}")
    ax.errorbar(mean_p, frac, yerr=[frac - low, high - frac], marker="o", color="#2563eb", lw=1.6, capsize=3,
                label="forecast (95% interval)")
    ax.set(ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1), title=f"Reliability diagram: {who}")
    ax.grid(alpha=0.3)
    # below both panels: inside, a rare event's climatology lines and its forecasts run along the very edges
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    _, count = _bin_counts(prob, RELIABILITY_BINS)  # the bins of the points above
    hist.bar(np.arange(RELIABILITY_BINS) / RELIABILITY_BINS, count, width=1 / RELIABILITY_BINS, align="edge",
             color="#94a3b8", edgecolor="white", log=True)
    hist.set(xlabel="forecast probability", ylabel="forecasts")
    # left to itself a log axis spanning a decade or so labels its minor ticks too, overlapping on this short
    # panel: label 1, 3, 10, 30, ... there, and only the powers of ten over a wider span
    from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter
    seen = count[count > 0]
    few_decades = len(seen) > 0 and seen.max() < 100 * seen.min()
    hist.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 3.0) if few_decades else (1.0,), numticks=5))
    hist.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    hist.yaxis.set_minor_formatter(NullFormatter())
    hist.grid(alpha=0.3)
    out["reliability"] = _render(fig)
    out["performance"] = _performance_diagram(prob, label, who, threshold)
    return out
