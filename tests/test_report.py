"""Sweep analytics: pivots, paper comparison, files written, report.html, CLI errors."""
from __future__ import annotations

import base64
import csv
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tornado import plots, report, tables
from tornado.errors import TornadoError
from tornado.records import SWEEP_LOCK, hold

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# A hand-written results.csv: two epochs groups; the failed job must not count.
PIVOT_CSV = """\
job,status,error,output_dir,epochs,batch_size,data_multiplier,seed,lr,trainer.max_epochs,wall_s,accuracy
0,ok,,,5,128,1,0,0.001,5,10,0.90
1,ok,,,5,128,2,0,0.001,5,20,0.91
2,ok,,,5,256,1,0,0.001,5,6,0.92
3,ok,,,5,256,2,0,0.001,5,12,0.93
4,ok,,,10,128,1,0,0.001,10,21,0.94
5,ok,,,10,256,2,0,0.001,10,25,0.95
6,failed,boom,,10,128,2,0,0.001,10,999,
"""


def write_csv_sweep(tmp_path: Path, text: str, name: str = "sweep") -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "results.csv").write_text(text)
    return d


def result_json(job_dir: Path, hparams: dict, status: str = "ok", error: str | None = None,
                metrics: dict | None = None, wall_s: float = 10.0, history: list[tuple[float, float]] = (),
                accelerator: str = "cpu", predictions: bool = True) -> dict:
    """A job dir as tornado.train leaves it: result.json (+ test_predictions.npz)."""
    job_dir.mkdir(parents=True)
    hist = [{"epoch": i, "train_loss": 0.5, "train_acc": acc, "epoch_s": sec} for i, (acc, sec) in enumerate(history)]
    r = {"status": status, "error": error, "config_hash": "h", "overrides": [], "hparams": hparams,
         "times": {"total_s": wall_s + 1, "wall_s": wall_s, "epoch_s": [h["epoch_s"] for h in hist],
                   "data_wait_s": 0.1, "compute_s": wall_s - 0.1, "test_s": 0.2},
         "samples_per_s": 100.0, "batch": {"global": hparams.get("batch_size"), "per_device": hparams.get("batch_size"),
                                           "devices": 1, "effective_global": hparams.get("batch_size")},
         "devices": {"accelerator": accelerator, "count": 1, "names": [accelerator]},
         "metrics": metrics if metrics is not None else {}, "history": hist, "output_dir": str(job_dir)}
    (job_dir / "result.json").write_text(json.dumps(r))
    if predictions and status == "ok":
        rng = np.random.default_rng(0)
        label = (np.arange(200) % 10 == 0).astype(np.uint8)
        prob = np.clip(0.1 + 0.6 * label + 0.2 * rng.random(200), 0, 1).astype(np.float32)
        np.savez(job_dir / "test_predictions.npz", prob=prob, label=label)
    return r


def write_results_csv(sweep: Path, results: dict[str, dict]) -> None:
    """results.csv as docs/design.md lays it out (job, status, error, output_dir, hparams, metrics, times, ...)."""
    rows = []
    for job, r in results.items():
        row = {"job": job, "status": r["status"], "error": r["error"] or "", "output_dir": r["output_dir"]}
        row.update(r["hparams"])
        row.update(r["metrics"])
        row.update({k: v for k, v in r["times"].items() if k != "epoch_s"})
        row.update(samples_per_s=r["samples_per_s"], batch_global=r["batch"]["global"],
                   batch_per_device=r["batch"]["per_device"], devices=r["batch"]["devices"],
                   accelerator=r["devices"]["accelerator"])
        rows.append(row)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(sweep / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def gpu_batch_sweep(tmp_path: Path, failed: bool = True, running: bool = False) -> Path:
    """2 batch sizes x 2 GPU counts, histories and predictions; optionally one failed and one running job."""
    sweep = tmp_path / "gpus"
    results = {}
    for i, (b, g) in enumerate([(128, 1), (128, 2), (256, 1), (256, 2)]):
        hp = {"epochs": 3, "batch_size": b, "lr": 0.001, "data_multiplier": 1, "gpus": g, "seed": 0}
        hist = [(0.80 + 0.05 * k - b / 10000, 1.0 + b / 256) for k in range(3)]
        results[str(i)] = result_json(sweep / str(i), hp, metrics={"roc_auc": 0.7 + 0.01 * i, "accuracy": 0.9},
                                      wall_s=3.0 + b / 128 + g, history=hist, accelerator="gpu")
    if failed:
        hp = {"epochs": 3, "batch_size": 512, "lr": 0.001, "data_multiplier": 1, "gpus": 4, "seed": 0}
        results["4"] = result_json(sweep / "4", hp, status="failed", error="RuntimeError: CUDA out of memory <oom>")
    if running:
        hp = {"epochs": 3, "batch_size": 512, "lr": 0.001, "data_multiplier": 1, "gpus": 1, "seed": 0}
        results["5"] = result_json(sweep / "5", hp, status="running", history=[(0.8, 1.0)])
    write_results_csv(sweep, results)
    return sweep


# --------------------------------------------------------------------------------------------------- pivots
def test_pivot_equals_hand_computed_table(tmp_path):
    sweep = write_csv_sweep(tmp_path, PIVOT_CSV)
    df = report.load_sweep(sweep).df
    pivots = tables.pivot(df, "batch_size", "data_multiplier", "epochs", "wall_s")
    assert sorted(pivots) == [5, 10]
    assert pivots[5].index.tolist() == [128, 256] and pivots[5].columns.tolist() == [1, 2]
    assert pivots[5].to_numpy().tolist() == [[10.0, 20.0], [6.0, 12.0]]
    t10 = pivots[10].to_numpy()
    assert t10[0, 0] == 21.0 and t10[1, 1] == 25.0
    assert math.isnan(t10[0, 1]), "the failed job (999 s) must not fill a cell"
    assert math.isnan(t10[1, 0])
    assert pivots[5].attrs["n"].to_numpy().tolist() == [[1, 1], [1, 1]]
    # rows and cols swapped, no groups, max over epochs
    t = tables.pivot(df, "data_multiplier", "batch_size", "none", "wall_s", agg="max")
    assert list(t) == [None]
    assert t[None].to_numpy().tolist() == [[21.0, 6.0], [20.0, 25.0]]


def test_markdown_table_and_derived_column_does_not_split(tmp_path):
    sweep = write_csv_sweep(tmp_path, PIVOT_CSV)
    paths = report.build_report(sweep)
    md = paths["table.md"].read_text()
    assert "### epochs = 5" in md and "### epochs = 10" in md
    assert "| 128 | 10 | 20 |" in md
    assert "| 256 | 6 | 12 |" in md
    assert "999" not in md
    summary = json.loads(paths["summary.json"].read_text())
    # trainer.max_epochs follows epochs: it must not make separate tables
    assert summary["table"]["sections"] == [{}]
    assert summary["table"]["averaged"] == []


def test_seeds_are_averaged_with_spread(tmp_path):
    text = """\
job,status,error,output_dir,epochs,batch_size,data_multiplier,seed,wall_s
0,ok,,,5,128,1,0,10
1,ok,,,5,128,1,1,12
2,ok,,,5,128,1,2,17
3,ok,,,5,128,2,0,30
"""
    sweep = write_csv_sweep(tmp_path, text)
    pivots = tables.pivot(report.load_sweep(sweep).df, "batch_size", "data_multiplier", "epochs", "wall_s")
    t = pivots[5]
    assert t.loc[128, 1] == pytest.approx(13.0)                        # (10 + 12 + 17) / 3
    assert t.attrs["std"].loc[128, 1] == pytest.approx(3.605551, abs=1e-6)  # sqrt(((-3)^2 + 1 + 4^2) / 2)
    assert t.attrs["n"].loc[128, 1] == 3
    assert t.loc[128, 2] == 30.0 and t.attrs["n"].loc[128, 2] == 1
    paths = report.build_report(sweep)
    md = paths["table.md"].read_text()
    assert "| 128 | 13 ± 3.6 (n=3) | 30 |" in md
    assert "Repeats averaged: seed" in md
    tidy = list(csv.DictReader(paths["table.csv"].open()))
    cell = next(r for r in tidy if r["data_multiplier"] == "1")
    assert float(cell["wall_s_mean"]) == pytest.approx(13.0) and cell["n"] == "3"


def test_other_varying_setting_gives_separate_tables(tmp_path):
    text = """\
job,status,error,output_dir,epochs,batch_size,data_multiplier,lr,optimizer.lr,wall_s
0,ok,,,5,128,1,0.001,0.001,10
1,ok,,,5,128,1,0.01,0.01,40
2,ok,,,5,256,1,0.001,0.001,6
3,ok,,,5,256,1,0.01,0.01,24
"""
    sweep = write_csv_sweep(tmp_path, text)
    paths = report.build_report(sweep)
    md = paths["table.md"].read_text()
    assert "### lr = 0.001, epochs = 5" in md and "### lr = 0.01, epochs = 5" in md
    low, high = md.split("### lr = 0.01")
    assert "| 128 | 10 |" in low and "| 256 | 6 |" in low
    assert "| 128 | 40 |" in high and "| 256 | 24 |" in high
    summary = json.loads(paths["summary.json"].read_text())
    assert summary["table"]["sections"] == [{"lr": 0.001}, {"lr": 0.01}]    # optimizer.lr copies lr


def test_many_other_combinations_are_averaged_and_named(tmp_path):
    lines = ["job,status,error,output_dir,epochs,batch_size,data_multiplier,lr,wall_s"]
    lrs = [0.001 * (k + 1) for k in range(tables.MAX_SECTIONS + 1)]
    for k, lr in enumerate(lrs):
        lines.append(f"{k},ok,,,5,128,1,{lr},{k + 1}")
    lines.append(f"{len(lrs)},ok,,,5,256,1,{lrs[0]},100")
    sweep = write_csv_sweep(tmp_path, "\n".join(lines) + "\n")
    paths = report.build_report(sweep)
    summary = json.loads(paths["summary.json"].read_text())
    assert summary["table"]["averaged"] == ["lr"]
    md = paths["table.md"].read_text()
    assert "Also averaged over" in md and "lr" in md
    assert "| 128 | 5 ± 2.7 (n=9) |" in md        # mean of 1..9 = 5, sample std = sqrt(7.5) = 2.74


def test_a_sweep_in_which_nothing_of_the_paper_s_layout_varies_is_tabulated_by_what_does(tmp_path, capsys):
    lines = ["job,status,error,output_dir,epochs,batch_size,data_multiplier,lr,model.dropout,seed,wall_s"]
    for k, (lr, dropout, seed) in enumerate([(0.001, 0.1, 0), (0.001, 0.1, 1), (0.01, 0.1, 0), (0.001, 0.3, 0)]):
        lines.append(f"{k},ok,,,5,128,1,{lr},{dropout},{seed},{k + 1}")
    sweep = write_csv_sweep(tmp_path, "\n".join(lines) + "\n")  # a search over lr and dropout, two seeds of one
    report.main([str(sweep), "pages=none"])
    out = capsys.readouterr().out
    assert ("## wall_s (mean): lr × model.dropout, by epochs\n" in out and "### epochs = 5\n\n"
            "| lr \\ model.dropout | 0.1 | 0.3 |\n|---:|---:|---:|\n| 0.001 | 1.5 ± 0.71 (n=2) | 4 |\n"
            "| 0.01 | 3 | – |\n" in out), out
    assert ("note: Tables by lr and model.dropout: the paper's layout (batch_size × data_multiplier, by epochs) does "
            "not vary in this sweep; rows=, cols= and group= choose another.") in out
    report.main([str(sweep), "rows=batch_size", "cols=lr", "pages=none"])  # what is asked for is what is shown
    assert capsys.readouterr().out.startswith("## wall_s (mean): batch_size × lr, by epochs")


def test_tables_at_their_boundaries():
    """Exactly MAX_SECTIONS combinations still get tables of their own; a batch of exactly the epoch's samples
    holds it whole; a slowest epoch of exactly DISTURBED times the median is named; a *.seed column is a repeat."""
    n = tables.MAX_SECTIONS
    df = pd.DataFrame({"job": [str(k) for k in range(n)], "status": "ok", "epochs": 5, "batch_size": 100,
                       "data_multiplier": 1, "lr": [0.001 * (k + 1) for k in range(n)], "wall_s": 1.0 + np.arange(n),
                       "samples_per_epoch": 100, "slowest_epoch_ratio": [tables.DISTURBED] + [1.0] * (n - 1)})
    ts = tables.build_tables(df, "batch_size", "data_multiplier", "epochs", "wall_s")
    assert len(ts.sections) == n and ts.averaged == []
    assert ts.one_step == [100] and ts.disturbed == {"0": tables.DISTURBED}
    seeds = df.assign(**{"data.split.seed": np.arange(n) % 2, "lr": 0.001})
    assert tables.build_tables(seeds, "batch_size", "data_multiplier", "epochs", "wall_s").repeats == [
        "data.split.seed"]


def test_numbers_keep_four_significant_digits_or_every_integer_digit():
    assert [tables.number_text(x) for x in (0.5, 1234.56, 10000.0, 12345.6, math.nan)] == [
        "0.5", "1235", "10000", "12346", "–"]


# --------------------------------------------------------------------------------------- paper comparison
def test_paper_comparison_cpu_and_gpu_tables(tmp_path):
    text = """\
job,status,error,output_dir,epochs,batch_size,data_multiplier,paper,accelerator,wall_s,n_train
0,ok,,,5,128,1,6.1.1,cpu,97.5,13500
1,ok,,,5,256,2,6.1.1,gpu,48,13500
"""
    sweep = write_csv_sweep(tmp_path, text)
    paths = report.build_report(sweep, rows="batch_size", cols="data_multiplier", group="epochs")
    md = paths["table.md"].read_text()
    assert "Our training set: 13,500 samples; the paper's: 138,963." in md
    assert "97.5 · paper 195 · 0.5×" in md        # Table 2: 5 epochs, batch 128, multiplier 1 = 195 s
    assert "48 · paper 24 · 2×" in md              # Table 3: 5 epochs, batch 256, multiplier 2 = 24 s
    assert "Table 2" in md and "Table 3" in md
    tidy = {(r["batch_size"], r["data_multiplier"]): r for r in csv.DictReader(paths["table.csv"].open())}
    assert float(tidy[("128", "1")]["paper"]) == 195.0 and float(tidy[("128", "1")]["ratio"]) == 0.5
    assert float(tidy[("256", "2")]["paper"]) == 24.0 and float(tidy[("256", "2")]["ratio"]) == 2.0
    tex = paths["table.tex"].read_text()
    assert "97.5 (195; 0.5)" in tex
    # the explicit override compares every job with Table 3 (5 epochs, 128, x1 = 20 s)
    paths = report.build_report(sweep, paper="table3")
    assert "97.5 · paper 20 · 4.88×" in paths["table.md"].read_text()
    paths = report.build_report(sweep, paper="none")
    assert "paper" not in paths["table.md"].read_text()


def test_paper_comparison_gpu_count_tables(tmp_path):
    text = """\
job,status,error,output_dir,epochs,batch_size,data_multiplier,gpus,paper,accelerator,wall_s
0,ok,,,10,128,2,3,6.1.3,gpu,56
1,ok,,,5,32768,4,2,6.1.3,gpu,33
2,ok,,,10,32768,2,3,6.1.3,gpu,15
"""
    sweep = write_csv_sweep(tmp_path, text)
    paths = report.build_report(sweep, rows="gpus", cols="data_multiplier", group="epochs")
    md = paths["table.md"].read_text()
    assert "56 · paper 112 · 0.5×" in md          # Table 7: 10 epochs, multiplier 2, 3 GPUs = 112 s
    assert "33 · paper 33 · 1×" in md             # Table 6: 5 epochs, multiplier 4, 2 GPUs = 33 s
    assert "15 · paper 30 · 0.5×" in md           # Table 6: 10 epochs, multiplier 2, 3 GPUs = 30 s
    # jobs 0 and 2 share a cell but differ in batch size: separate tables, not an average
    assert "### batch_size = 128, epochs = 10" in md and "### batch_size = 32768, epochs = 10" in md


def test_paper_comparison_accuracy_section_6_2(tmp_path):
    text = """\
job,status,error,output_dir,epochs,batch_size,data_multiplier,gpus,paper,accelerator,accuracy,wall_s
0,ok,,,5,128,1,2,6.2,gpu,0.9,15.5
"""
    sweep = write_csv_sweep(tmp_path, text)
    md = report.build_report(sweep, rows="epochs", cols="batch_size", group="none",
                             value="accuracy")["table.md"].read_text()
    assert "| 0.9 · paper 0.8796 |" in md     # Table 8: 87.96 %, as a fraction; no ratio for accuracy
    assert "wall-time ratio" not in md and "Our jobs ran on" not in md  # GPUs both, and no time compared
    tidy = next(csv.DictReader((sweep / "report" / "table.csv").open()))
    assert float(tidy["paper"]) == pytest.approx(0.8796) and tidy["ratio"] == ""
    assert ("each cell shows the paper's accuracy as a fraction, and no ratio. The paper counts about 4.9% of its "
            "storms tornadic, so a constant \"no\" would score about 0.951 there, above every accuracy in that table "
            "(at most 0.9396): neither side's accuracy shows skill by itself.") in md
    md = report.build_report(sweep, rows="epochs", cols="batch_size", group="none")["table.md"].read_text()
    assert "15.5 · paper 31 · 0.5×" in md         # Table 9: 00:31


# ------------------------------------------------------------------------------------------ files, plots, html
def test_latex_csv_and_plots_written(tmp_path):
    sweep = gpu_batch_sweep(tmp_path)
    paths = report.build_report(sweep, rows="batch_size", cols="gpus", group="epochs")
    tex = paths["table.tex"].read_text()
    for token in ("\\begin{tabular}", "\\toprule", "\\midrule", "\\bottomrule", "3 epochs", "batch\\_size"):
        assert token in tex
    tidy = list(csv.DictReader(paths["table.csv"].open()))
    assert len(tidy) == 4
    assert {(r["batch_size"], r["gpus"], float(r["wall_s_mean"])) for r in tidy} == {
        ("128", "1", 5.0), ("128", "2", 6.0), ("256", "1", 6.0), ("256", "2", 7.0)}
    for name in ("train_acc_by_gpus", "train_acc_by_batch", "wall_vs_batch", "roc", "reliability", "performance"):
        png, svg = paths[f"{name}.png"], paths[f"{name}.svg"]
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 1000
        assert b"<svg" in svg.read_bytes()[:2000]
    assert "train_acc.png" not in paths     # GPU count and batch size vary: the paper's figure grouping


def test_one_curve_per_job_when_gpus_and_batch_are_fixed(tmp_path):
    sweep = tmp_path / "lr"
    results = {}
    for i, lr in enumerate([0.001, 0.01]):
        hp = {"epochs": 2, "batch_size": 128, "lr": lr, "data_multiplier": 1, "gpus": 0, "seed": 0}
        results[str(i)] = result_json(sweep / str(i), hp, metrics={"roc_auc": 0.7}, history=[(0.9, 1), (0.95, 1)],
                                      predictions=False)
    write_results_csv(sweep, results)
    paths = report.build_report(sweep, rows="lr", cols="batch_size", group="none")
    assert paths["train_acc.png"].read_bytes()[:8] == PNG_MAGIC
    assert not any(k.startswith("train_acc_by") for k in paths)
    assert "roc.png" not in paths          # no predictions saved
    assert "test_predictions.npz" in paths["report.html"].read_text()


def test_html_is_self_contained_with_tables_and_errors(tmp_path):
    sweep = gpu_batch_sweep(tmp_path)
    first = {k: p.read_bytes() for k, p in report.build_report(sweep, cols="gpus").items()}
    paths = report.build_report(sweep, rows="batch_size", cols="gpus", group="epochs")
    assert first == {k: p.read_bytes() for k, p in paths.items()}, "same sweep, same report"
    assert paths["report.html"] == sweep / "report.html"
    page = paths["report.html"].read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "<link" not in page and "<script" not in page
    assert page.count('src="data:image/png;base64,') >= 5
    assert 'class="pivot"' in page and "batch_size \\ gpus" in page
    assert "RuntimeError: CUDA out of memory &lt;oom&gt;" in page   # the failed job's error, escaped
    assert "Partial report" not in page
    summary = json.loads(paths["summary.json"].read_text())
    oom = "RuntimeError: CUDA out of memory <oom>"
    assert summary["failed_jobs"] == [{"job": "4", "status": "failed", "error": oom,
                                       "config": {"batch_size": 512, "gpus": 4}}]  # the settings that vary
    assert "Not in these tables: job 4 (batch_size=512, gpus=4, epochs=3) failed." in paths["table.md"].read_text()
    assert summary["partial"] is False


def test_running_sweep_is_marked_partial(tmp_path):
    sweep = gpu_batch_sweep(tmp_path, failed=False, running=True)
    paths = report.build_report(sweep, rows="batch_size", cols="gpus")
    page = paths["report.html"].read_text()
    assert 'id="partial"' in page and "still running" in page
    summary = json.loads(paths["summary.json"].read_text())
    assert summary["partial"] is True and summary["running"] == ["5"]
    assert summary["ok"] == 4


def test_jobs_of_a_launch_in_progress_that_have_not_started_are_counted(tmp_path, capsys):
    sweep = gpu_batch_sweep(tmp_path, failed=False)
    jobs = [{"num": i, "dir": str(i), "status": "pending"} for i in range(6)]  # 4 and 5 have no folder yet
    (sweep / "launcher.json").write_text(json.dumps({"launcher": "local", "state": "running", "jobs": jobs}))
    with hold(sweep / SWEEP_LOCK):  # as the launcher holds it while it runs
        paths = report.build_report(sweep, rows="batch_size", cols="gpus")
        summary = json.loads(paths["summary.json"].read_text())
        assert summary["partial"] is True and summary["waiting"] == ["4", "5"] and summary["running"] == []
        page = paths["report.html"].read_text()
        assert "jobs: 0 running, 2 not started" in page and "Not started yet: 4, 5" in page
        (sweep / "5").mkdir()
        (sweep / "5" / "stdout.log").write_text("")  # started, still importing: no result.json yet
        summary = json.loads(report.build_report(sweep, rows="batch_size", cols="gpus")["summary.json"].read_text())
        assert summary["waiting"] == ["4"] and summary["running"] == ["5"]
    # the launcher killed outright (kill -9): launcher.json still says running, but nothing will start the rest
    summary = json.loads(report.build_report(sweep, rows="batch_size", cols="gpus")["summary.json"].read_text())
    assert summary["partial"] is False and summary["waiting"] == [] and summary["running"] == []
    assert any(n.startswith("The last launch was cut short") for n in summary["notes"])
    (sweep / "launcher.json").write_text(json.dumps({"launcher": "local", "state": "finished", "jobs": jobs}))
    summary = json.loads(report.build_report(sweep, rows="batch_size", cols="gpus")["summary.json"].read_text())
    assert summary["partial"] is False and summary["waiting"] == []


def test_stale_results_csv_is_rebuilt_from_result_json(tmp_path):
    sweep = gpu_batch_sweep(tmp_path, failed=False)
    r = json.loads((sweep / "0" / "result.json").read_text())
    r["status"] = "running"           # results.csv (ok) now disagrees with the job dir
    (sweep / "0" / "result.json").write_text(json.dumps(r))
    loaded = report.load_sweep(sweep)
    assert loaded.running == ["0"]
    assert loaded.df.set_index("job").loc["0", "status"] == "running"
    assert any("rebuilt" in n for n in loaded.notes)
    # a job run again by hand, still ok but with other scores, after results.csv was written
    from tornado.collect import collect

    collect(sweep)
    past = (sweep / "results.csv").stat().st_mtime - 5
    os.utime(sweep / "results.csv", (past, past))
    r.update(status="ok", metrics={**r["metrics"], "roc_auc": 0.99})
    (sweep / "0" / "result.json").write_text(json.dumps(r))
    assert report.load_sweep(sweep).df.set_index("job").loc["0", "roc_auc"] == 0.99
    assert report.load_sweep(sweep).notes == []  # rebuilt once: results.csv is newer now


def test_all_failed_sweep_still_reports(tmp_path):
    sweep = tmp_path / "bad"
    for i in range(2):
        hp = {"epochs": 5, "batch_size": 128 * (i + 1), "lr": 0.001, "data_multiplier": 1, "gpus": 0, "seed": 0}
        result_json(sweep / str(i), hp, status="failed", error=f"TornadoError: data.path: missing {i}")
    paths = report.build_report(sweep)     # no results.csv: read from result.json
    page = paths["report.html"].read_text()
    assert "No job finished successfully" in page
    assert "TornadoError: data.path: missing 0" in page and "TornadoError: data.path: missing 1" in page
    assert "<code>batch_size=256</code>" in page  # each failed job's settings
    assert 'id="best"' not in page and 'id="tables"' not in page and "Best by" not in page  # nothing to rank
    assert "nothing to tabulate" in paths["table.md"].read_text()
    # no scores because every job failed, not for want of a validation split: no note of one
    notes = json.loads(paths["summary.json"].read_text())["notes"]
    assert not any("validation split" in n or "test-set score" in n for n in notes), notes


def test_sweep_without_results_csv_uses_result_json(tmp_path):
    sweep = gpu_batch_sweep(tmp_path, failed=False)
    (sweep / "results.csv").unlink()
    pivots = tables.pivot(report.load_sweep(sweep).df, "batch_size", "gpus", "none", "wall_s")
    assert pivots[None].to_numpy().tolist() == [[5.0, 6.0], [6.0, 7.0]]


def test_a_single_run_folder_is_reported_as_one_job(tmp_path):
    run = tmp_path / "2026-01-01_00-00-00-1"
    r = result_json(run, {"batch_size": 128, "data_multiplier": 1, "epochs": 2}, history=[(0.9, 1.0), (0.95, 1.0)],
                    metrics={"roc_auc": 0.8, "accuracy": 0.95})
    r["output_dir"] = "/moved/elsewhere"  # a run folder copied from the cluster: its own folder is used
    (run / "result.json").write_text(json.dumps(r))
    built = report.build_report(run)
    summary = json.loads(built["summary.json"].read_text())
    assert summary["jobs"] == summary["ok"] == 1 and summary["best_by_metric"][0]["job"] == run.name
    assert (run / "report" / "roc.png").is_file() and (run / "report" / "reliability.png").is_file()
    assert (run / "report.html").is_file() and not (run / "results.csv").exists()
    assert not (run / "report" / "table.md").exists() and summary["table"] is None  # a run's page has no tables
    page = (run / "report.html").read_text()
    assert f"<h1>Run report: {run.name}</h1>" in page
    (tmp_path / "empty").mkdir()
    with pytest.raises(TornadoError, match=r"no results.csv, no \*/result.json and no result.json"):
        report.load_sweep(tmp_path / "empty")
    (tmp_path / "cut" / "result.json").parent.mkdir()
    (tmp_path / "cut" / "result.json").write_text('{"status": "ok", ')  # a run's record it cannot read: named so
    with pytest.raises(TornadoError, match=r"^result.json unreadable: .*/cut/result.json: Expecting"):
        report.load_sweep(tmp_path / "cut")


def test_a_folder_it_cannot_write_is_refused_in_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    result_json(run, {"batch_size": 128, "epochs": 1}, history=[(0.9, 1.0)], metrics={"roc_auc": 0.8})
    before = sorted(run.rglob("*"))
    (tmp_path / "taken").write_text("")
    with pytest.raises(SystemExit) as exc:
        report.main([str(run), f"out={tmp_path / 'taken' / 'report'}"])
    assert exc.value.code == 2 and capsys.readouterr().err == (
        f"error: {tmp_path / 'taken' / 'report'}: cannot write the report there ({tmp_path / 'taken'} is a file)\n")

    def refused(dir: Path):  # a colleague's read-only run folder (root writes anywhere, so the refusal is made up)
        raise PermissionError(13, "Permission denied", str(Path(dir) / "tmpx"))

    monkeypatch.setattr(report.tempfile, "TemporaryFile", refused)
    monkeypatch.setattr(report, "plot_curves", lambda *a, **k: pytest.fail("drew before it found it cannot write"))
    with pytest.raises(SystemExit) as exc:
        report.main([str(run)])
    assert exc.value.code == 2 and capsys.readouterr().err == (
        f"error: {run}: cannot write the report there (Permission denied); out=DIR writes it elsewhere\n")
    assert sorted(run.rglob("*")) == before


def test_a_run_with_an_empty_settings_group_is_reported(tmp_path):
    run = tmp_path / "run"  # logger=none leaves `logger: {}` among the hparams
    result_json(run, {"batch_size": 128, "epochs": 1, "logger": {}}, history=[(0.9, 1.0)], metrics={"roc_auc": 0.8})
    assert (report.build_report(run)["report.html"]).is_file()


def test_a_run_report_shows_its_scores_epochs_and_what_it_was(tmp_path, capsys):
    run = tmp_path / "run"
    metrics = {"accuracy": 0.95, "roc_auc": 0.85, "roc_auc_se": 0.0142, "val_roc_auc": 0.87, "val_roc_auc_se": 0.028,
               "threshold": 0.184, "csi": 0.318, "pod": 0.473, "far": 0.508, "val_csi_best": 0.353,
               "val_pod_best": 0.441, "val_far_best": 0.362, "climatology": 0.05, "n": 5000, "positives": 273}
    r = result_json(run, {"batch_size": 128, "data_multiplier": 1, "epochs": 3, "lr": 0.001, "patience": 1,
                          "data.split.val_fraction": 0.1}, history=[(0.9, 1.0), (0.95, 1.5), (0.96, 2.0)],
                    metrics=metrics)
    for h, auc in zip(r["history"], (0.7, 0.87, 0.86)):
        h["val_roc_auc"] = auc
    r.update(overrides=["patience=1"], early_stop={"patience": 1, "stopped": True, "epochs_trained": 3,
                                                    "best_epoch": 2, "scored_epoch": 2})
    (run / "result.json").write_text(json.dumps(r))
    report.main([str(run)])
    out = capsys.readouterr().out
    assert out.startswith("run ok\n") and "| batch_size" not in out  # the run's scores, not a one-cell table
    assert re.search(r"\nROC AUC +0\.85 ± 0\.014 +0\.87 ± 0\.028\n", out)
    assert re.search(r"\nCSI · POD · FAR at 0\.184 \(chosen on validation\) +0\.318 · 0\.473 · 0\.508 +"
                     r"0\.353 · 0\.441 · 0\.362\n", out)
    assert "trained 3 epochs in 10 s" in out and "\nstopped early (patience 1): epoch 2's weights scored\n" in out
    page = (run / "report.html").read_text()
    assert "the sweep's report" not in page  # a run of its own: no sweep to go back to
    assert ('<img alt="ROC curve of run run on the test set (200 cases, 20 tornadic): true positive rate against '
            'false positive rate, AUC ') in page
    assert ('<img alt="Learning curves of run run over 3 epochs: training loss, training accuracy and validation ROC '
            'AUC against epoch; epoch 2, whose weights were scored, marked"') in page
    assert "<td>accuracy</td><td>0.95</td><td>–</td>" in page  # no validation accuracy recorded: a dash
    assert "never forecasting a tornado scores 0.945 on test</td>" in page  # 273 of 5,000 test cases: not 1 - 0.05
    assert '<th scope="row">settings given</th><td>patience=1</td>' in page
    assert '<th scope="row">epochs</th><td>3; patience 1: stopped early, epoch 2 scored</td>' in page
    assert '<tr class="best"><td>2</td><td>0.5</td><td>0.95</td><td>0.87</td><td>1.5</td><td>2.5</td></tr>' in page
    assert "validation: the last 10% of the earlier run dates" in page
    assert (run / "report" / "learning_curves.png").stat().st_size > 0 and "Best configurations" not in page
    r["evaluation"] = {"threshold_from": "validation"}
    (run / "result.json").write_text(json.dumps(r))
    page = report.build_report(run)["report.html"].read_text()
    assert "never seen in training or in choosing the yes/no threshold, and on the validation split, where" in page
    (run / "result.json").write_text(json.dumps(r | {"evaluation": {"threshold_from": None}}))
    page = report.build_report(run)["report.html"].read_text()  # no validation split: nothing chosen on one
    assert "There is no validation split to choose a yes/no threshold on: the CSI at the test set&#x27;s own" in page
    # a run that failed: its error, no scores
    (run / "result.json").write_text(json.dumps(r | {"status": "failed", "error": "RuntimeError: CUDA out of memory",
                                                     "metrics": {}, "history": []}))
    page = report.build_report(run)["report.html"].read_text()
    assert '<p class="err">RuntimeError: CUDA out of memory</p>' in page and 'id="scores"' not in page
    assert not (run / "report" / "learning_curves.png").exists() and 'id="plots"' not in page
    # a run without a validation split chose no threshold: no row for one
    from tornado.runpage import score_rows
    rows = dict((name, test) for name, test, _, _ in score_rows({"threshold": math.nan, "n": 5000}))
    assert not any("chosen on validation" in name for name in rows) and rows["cases"] == "5,000"


NONE_TEXT = re.compile(r"\b(None|nan|NaN)\b")


def test_a_refused_run_page_leaves_out_what_it_does_not_have(tmp_path, capsys):
    run = tmp_path / "refused"  # stopped by a setting check: no times, batch, devices, history or metrics
    run.mkdir()
    hp = {"epochs": 10, "batch_size": -1, "lr": 0.001, "data_multiplier": 1, "seed": 0,
          "data.split.val_fraction": 0.1}
    (run / "result.json").write_text(json.dumps({
        "status": "failed", "error": "TornadoError: batch_size=-1: must be a positive whole number",
        "overrides": ["batch_size=-1"], "hparams": hp, "output_dir": str(run), "host": "vm",
        "started": "2026-01-01T00:00:00+00:00", "finished": "2026-01-01T00:00:01+00:00", "versions": {}}))
    report.main([str(run)])
    out = capsys.readouterr().out
    assert out.startswith("run failed: TornadoError: batch_size=-1") and not NONE_TEXT.search(out), out
    page = (run / "report.html").read_text()
    assert not NONE_TEXT.search(page), NONE_TEXT.findall(page)
    assert '<p class="err">TornadoError: batch_size=-1: must be a positive whole number</p>' in page
    assert '<th scope="row">epochs</th><td>none of 10 finished</td>' in page
    assert '<th scope="row">batch</th><td>-1</td>' in page
    assert '<th scope="row">run</th><td>vm, 2026-01-01T00:00:00+00:00 to 2026-01-01T00:00:01+00:00</td>' in page
    for gone in ('id="scores"', 'id="epochs"', 'id="plots"', ">device</th>", ">training time</th>",
                 ">cases</th>", ">model</th>", "validation split (data.split"):
        assert gone not in page, gone


def test_an_interrupted_run_page_shows_the_epochs_it_finished(tmp_path, capsys):
    run = tmp_path / "interrupted"
    hp = {"epochs": 10, "batch_size": 128, "lr": 0.001, "data_multiplier": 1, "seed": 0, "model.dropout": 0.0}
    r = result_json(run, hp, status="failed", error="interrupted (SIGINT)", history=[(0.94, 1.5), (0.95, 1.25)])
    for h, auc in zip(r["history"], (0.70, 0.75)):
        h["val_roc_auc"] = auc
    r["times"] = {"epoch_s": [1.5, 1.25]}  # cut short: no wall, total or test time
    r["data"] = {"n_train": 13500, "n_val": 1500, "n_test": 5000}
    del r["metrics"], r["samples_per_s"]
    (run / "result.json").write_text(json.dumps(r))
    report.main([str(run)])
    out = capsys.readouterr().out
    assert out.startswith("run failed: interrupted (SIGINT)\nit stopped after 2 of 10 epochs\n")
    assert not NONE_TEXT.search(out), out
    page = (run / "report.html").read_text()
    assert not NONE_TEXT.search(page), NONE_TEXT.findall(page)
    assert '<p class="err">interrupted (SIGINT)</p>' in page
    assert "It stopped after 2 of 10 epochs: below are the epochs it finished." in page
    assert '<th scope="row">epochs</th><td>stopped after 2 of 10 epochs</td>' in page
    assert '<th scope="row">batch</th><td>128 (128 per device × 1)</td>' in page
    assert '<th scope="row">device</th><td>1 × cpu (cpu)</td>' in page
    assert '<th scope="row">cases</th><td>train 13,500, val 1,500, test 5,000</td>' in page
    assert '<th scope="row">training time</th><td>2.75 s, the finished epochs&#x27; own</td>' in page
    assert '<th scope="row">model</th><td>the paper&#x27;s CNN, dropout 0.0</td>' in page
    assert '<tr class="best"><td>2</td><td>0.5</td><td>0.95</td><td>0.75</td><td>1.25</td><td>2.75</td></tr>' in page
    assert (run / "report" / "learning_curves.png").stat().st_size > 0
    assert ('<img alt="Learning curves of run interrupted over 2 epochs: training loss, training accuracy and '
            'validation ROC AUC against epoch"') in page
    assert 'id="scores"' not in page and "whole run" not in page
    notes = json.loads((run / "report" / "summary.json").read_text())["notes"]
    assert notes == []  # no scores because it stopped: nothing about a validation split or predictions


def test_constant_forecasts_are_scored_on_each_set_s_own_cases():
    from tornado.runpage import score_rows

    m = {"accuracy": 0.95, "val_accuracy": 0.96, "average_precision": 0.4, "climatology": 0.0482,
         "n": 5000, "positives": 273, "val_n": 1500, "val_positives": 68}
    how = {name: text for name, _, _, text in score_rows(m)}
    assert how["accuracy"].endswith("never forecasting a tornado scores 0.945 on test, 0.955 on validation")
    assert how["average precision"].endswith("the base rate (0.0546 on test, 0.0453 on validation) is no skill")
    how = {name: text for name, _, _, text in score_rows({"accuracy": 0.95, "climatology": 0.0482})}
    assert how["accuracy"] == "share right at probability 0.5, the paper's figure"  # no counts: no comparison
    assert how["average precision"] == "area under precision against recall"


def test_no_validation_split_only_where_the_jobs_have_none():
    nan = math.nan
    assert report.no_validation_split(pd.DataFrame({"data.split.val_fraction": [0, 0], "roc_auc": [0.8, nan]}))
    assert not report.no_validation_split(pd.DataFrame({"data.split.val_fraction": [0.1], "roc_auc": [0.8]}))
    assert report.no_validation_split(pd.DataFrame({"roc_auc": [0.8, 0.7]}))  # scored, never on validation
    assert not report.no_validation_split(pd.DataFrame({"roc_auc": [0.8], "val_roc_auc": [0.7]}))
    assert not report.no_validation_split(pd.DataFrame({"job": ["0"], "roc_auc": [nan]}))  # no scores: unknown
    assert not report.no_validation_split(pd.DataFrame({"job": []}))


def test_the_constant_forecast_note_points_where_skill_is_shown(tmp_path):
    sweep, results = tmp_path / "chance", {}
    for i, aucs in enumerate(([0.40, 0.45], [0.44, 0.48])):  # no job above chance
        hp = {"epochs": 2, "batch_size": 128 * (i + 1), "lr": 0.001, "data_multiplier": 1, "seed": 0}
        m = {"val_roc_auc": aucs[-1], "val_n": 1500, "val_positives": 68, "roc_auc": 0.5, "train_base_rate": 0.05}
        results[str(i)] = result_json(sweep / str(i), hp, metrics=m, history=[(0.95, 1.0)] * 2, predictions=False)
        for h, auc in zip(results[str(i)]["history"], aucs):
            h["val_roc_auc"] = auc
        (sweep / str(i) / "result.json").write_text(json.dumps(results[str(i)]))
    write_results_csv(sweep, results)
    notes = json.loads(report.build_report(sweep)["summary.json"].read_text())["notes"]
    note = next(n for n in notes if "A constant forecast" in n)
    assert note.endswith("says nothing of skill here. Nor does any job show skill: the skill cards find no job "
                         "above the no-skill level.") and "do." not in note
    # a run's own page has no cards
    notes = json.loads(report.build_report(sweep / "0")["summary.json"].read_text())["notes"]
    assert notes[0] == ("A constant forecast (never a tornado) scores 0.95 training accuracy on this run's training "
                        "set: its training accuracy says little of skill. The ROC AUC does (0.5 is chance).")


def test_jobs_stopped_early_are_noted(tmp_path):
    sweep = tmp_path / "sweep"
    for job, trained in (("0", 5), ("1", 3)):
        hparams = {"batch_size": 128, "data_multiplier": 1, "epochs": 5, "patience": 1, "seed": int(job)}
        result_json(sweep / job, hparams, history=[(0.9, 1.0)] * trained)
    summary = json.loads(report.build_report(sweep)["summary.json"].read_text())
    assert "1 of 2 jobs stopped early (patience)" in " ".join(summary["notes"])
    assert report.load_sweep(sweep).df["epochs_trained"].tolist() == [5, 3]


def test_jobs_table_lists_every_ok_job_best_first_with_its_settings():
    ok = pd.DataFrame({"job": ["0", "1", "2", "3"], "batch_size": [128, 256, 128, 256], "lr": [0.001] * 4,
                       "roc_auc": [0.7, 0.9, np.nan, 0.8], "brier": [0.05, 0.04, 0.03, 0.06], "wall_s": [4.0, 3, 2, 1]})
    jobs = report.jobs_table(ok, "roc_auc")
    assert jobs["job"].tolist() == ["1", "3", "0", "2"]  # a job without the metric last
    assert jobs.columns.tolist() == ["job", "batch_size", "roc_auc", "wall_s"]  # lr does not vary
    assert report.jobs_table(ok, "brier")["job"].tolist() == ["2", "1", "0", "3"]  # lower is better
    assert report.jobs_table(ok, "brier").columns.tolist() == ["job", "batch_size", "brier", "roc_auc", "wall_s"]


def test_jobs_are_compared_with_the_best_on_the_same_test_cases(tmp_path):
    from tornado.metrics import delong

    sweep, rng = tmp_path / "paired", np.random.default_rng(0)
    label = (np.arange(2000) % 20 == 0).astype(np.uint8)
    signal = rng.normal(size=2000) + 1.5 * label
    forecasts = {"a": signal + 0.3 * rng.normal(size=2000),    # the best by validation
                 "b": signal + 0.35 * rng.normal(size=2000),   # much the same forecast: within noise
                 "c": signal + 2.0 * rng.normal(size=2000),    # far worse: told apart
                 "d": rng.normal(size=2000)}                   # another test set (its labels differ): left out
    results = {}
    for i, (job, prob) in enumerate(forecasts.items()):
        hp = {"epochs": 1, "batch_size": 128 * 2 ** i, "lr": 0.001, "data_multiplier": 1, "gpus": 0, "seed": 0}
        results[job] = result_json(sweep / job, hp, metrics={"val_roc_auc": 0.9 - 0.01 * i, "roc_auc_se": 0.01},
                                   predictions=False)
        np.savez(sweep / job / "test_predictions.npz", prob=1 / (1 + np.exp(-prob)),
                 label=label if job != "d" else label[::-1])
    write_results_csv(sweep, results)
    paths = report.build_report(sweep)
    paired = json.loads(paths["summary.json"].read_text())["paired_roc_auc"]
    assert paired["reference"] == "a" and sorted(paired["p"]) == ["b", "c"]
    assert paired["p"]["b"] == pytest.approx(delong(forecasts["a"], forecasts["b"], label)[2])
    assert paired["p"]["b"] > 0.05 > 1e-6 > paired["p"]["c"] and paired["within_noise"] == ["b"]
    text = report.summary_text(json.loads(paths["summary.json"].read_text()))
    assert ("test ROC AUC against job a (the best by val_roc_auc): 1 of 2 other jobs within the test cases' "
            "sampling noise (DeLong's paired test, p ≥ 0.05; roc_auc_p in the Jobs table)\n") in text
    jobs = report.jobs_table(report.load_sweep(sweep).ok, "val_roc_auc", paired["p"])
    assert jobs.columns.tolist()[-4:] == ["roc_auc_se", "roc_auc_p", "wall_s", "samples_per_s"]  # none empty
    assert jobs["roc_auc_p"].isna().tolist() == [True, False, False, True]  # a itself, and d's other test set
    page = paths["report.html"].read_text()
    assert "<th>roc_<wbr>auc_<wbr>p</th>" in page and "roc_auc_p: DeLong's p-value" in page
    assert (sweep / "report" / "roc_best.png").stat().st_size > 0
    assert re.search(r'<img alt="ROC curves, true positive rate against false positive rate on the same test cases, '
                     r'of the 3 best jobs by val_roc_auc: job a: AUC 0\.\d+; job b: AUC 0\.\d+, p = 0\.\d+; '
                     r'job c: AUC 0\.\d+, p = \d', page)
    # one job (a run's report): nothing to compare
    assert json.loads(report.build_report(sweep / "a")["summary.json"].read_text())["paired_roc_auc"] is None


def test_the_best_jobs_get_their_own_pages_linked_from_the_jobs_table(tmp_path, capsys):
    sweep = gpu_batch_sweep(tmp_path)  # roc_auc 0.70 ... 0.73 for jobs 0 ... 3; no validation split
    report.main([str(sweep)])
    summary = json.loads((sweep / "report" / "summary.json").read_text())
    assert list(summary["job_pages"]) == ["3", "2", "1"]  # the best three by roc_auc
    own = (sweep / "3" / "report.html").read_text()
    assert "<h1>Run report: 3</h1>" in own and '<a href="../report.html">the sweep\'s report</a>' in own
    assert (sweep / "3" / "report" / "roc.png").is_file() and not (sweep / "0" / "report.html").exists()
    page = (sweep / "report.html").read_text()
    assert '<td><a href="3/report.html">3</a></td>' in page and "<td>0</td>" in page and "(3 of 4;" in page
    assert (f"jobs' own pages, linked from the report's Jobs table: {sweep / '3' / 'report.html'} and 2 more"
            in capsys.readouterr().out)
    # pages=none writes none but links those there, unless their job has a newer result.json (run again)
    later = (sweep / "2" / "report.html").stat().st_mtime + 10
    os.utime(sweep / "2" / "result.json", (later, later))
    summary = json.loads(report.build_report(sweep, pages="none")["summary.json"].read_text())
    assert list(summary["job_pages"]) == ["3", "1"]
    # with out=, the pages go under it, each job in its own folder
    out = tmp_path / "elsewhere"
    page = report.build_report(sweep, pages="all", out=out)["report.html"].read_text()
    assert '<td><a href="0/report.html">0</a></td>' in page and (out / "0" / "report.html").is_file()
    assert "linked here" in report.build_report(sweep, pages=0, out=tmp_path / "none")["report.html"].read_text()
    with pytest.raises(TornadoError, match="^pages=best: must be all, none or how many jobs"):
        report.build_report(sweep, pages="best")


def test_the_best_job_s_diagrams_are_drawn_once_for_the_sweep_and_its_own_page(tmp_path, monkeypatch):
    sweep = gpu_batch_sweep(tmp_path)  # the best by roc_auc, job 3, gets a page, as do jobs 2 and 1
    drawn = []
    draw = report.plot_verification

    def counted(prob, label, who, *args):
        drawn.append(who)
        return draw(prob, label, who, *args)

    monkeypatch.setattr(report, "plot_verification", counted)
    report.build_report(sweep)
    assert sorted(drawn) == ["job 3", "run 1", "run 2"]  # job 3's for the sweep's page and its own
    for name in ("roc.png", "reliability.svg", "performance.png"):
        assert (sweep / "3" / "report" / name).read_bytes() == (sweep / "report" / name).read_bytes()
    assert '<img alt="Performance diagram of run 3 on the test set' in (sweep / "3" / "report.html").read_text()


def test_the_sweep_s_rankings_are_made_once_per_report(tmp_path, monkeypatch):
    sweep = gpu_batch_sweep(tmp_path)
    calls = {"best_by_metric": 0, "_jobs_ranked": 0}
    for name in calls:
        def once(*args, _name=name, _f=getattr(report, name), **kwargs):
            calls[_name] += 1
            return _f(*args, **kwargs)
        monkeypatch.setattr(report, name, once)
    report.build_report(sweep, pages="none")
    assert calls == {"best_by_metric": 1, "_jobs_ranked": 1}


def test_the_settings_that_vary_are_worked_out_once_per_report(tmp_path, monkeypatch):
    sweep = gpu_batch_sweep(tmp_path)  # 4 jobs ok, 1 failed
    frames = []

    def varying(df, _f=tables.varying_hparams):
        frames.append(len(df))
        return _f(df)

    monkeypatch.setattr(report, "varying_hparams", varying)
    monkeypatch.setattr(plots, "varying_hparams", varying)
    report.build_report(sweep, pages="1")
    # the 4 successful jobs; the one job of the best one's own page; all 5 jobs, for the failed one's settings
    assert sorted(frames) == [1, 4, 5]


def test_a_job_s_own_page_is_written_again_only_when_what_it_shows_changed(tmp_path, monkeypatch):
    sweep = gpu_batch_sweep(tmp_path)  # roc_auc 0.70 ... 0.73 for jobs 0 ... 3
    build = report.build_report
    build(sweep, pages="2")  # jobs 3 and 2
    written = []

    def counted(run_dir, **kwargs):
        written.append(Path(run_dir).name)
        return build(run_dir, **kwargs)

    monkeypatch.setattr(report, "build_report", counted)
    page = sweep / "2" / "report.html"
    before = page.stat().st_mtime_ns
    assert list(json.loads(build(sweep, pages="2")["summary.json"].read_text())["job_pages"]) == ["3", "2"]
    assert written == [] and page.stat().st_mtime_ns == before  # nothing either page shows changed
    # job 2 scored anew, now the best: its page, and job 3's, whose diagrams the sweep's report no longer draws
    r = json.loads((sweep / "2" / "result.json").read_text())
    r["metrics"]["roc_auc"] = 0.8
    (sweep / "2" / "result.json").write_text(json.dumps(r))
    build(sweep, pages="2")
    assert sorted(written) == ["2", "3"] and "<td>ROC AUC</td><td>0.8</td>" in page.read_text()
    # linked from another sweep's page
    written.clear()
    report.job_pages(report.load_sweep(sweep), ["3"], 1, None, [], tmp_path / "elsewhere" / "report.html")
    assert written == ["3"] and 'href="../../elsewhere/report.html"' in (sweep / "3" / "report.html").read_text()
    # the sweep moved (its files' times kept): each page names its folder
    written.clear()
    moved = sweep.rename(tmp_path / "moved")
    build(moved, pages="2")
    assert sorted(written) == ["2", "3"] and str(moved.resolve() / "2") in (moved / "2" / "report.html").read_text()
    # written by other code
    written.clear()
    monkeypatch.setattr(report, "_code_digest", lambda: "another version")
    build(moved, pages="2")
    assert sorted(written) == ["2", "3"]
    # the sweep's report asked for other targets: its jobs' pages are of them too
    written.clear()
    build(moved, pages="2", target=0.5, skill=0.9)
    summary = json.loads((moved / "2" / "report" / "summary.json").read_text())
    assert sorted(written) == ["2", "3"] and summary["target"] == 0.5


def test_each_figure_says_what_it_shows_in_its_alt_text(tmp_path):
    sweep = gpu_batch_sweep(tmp_path)  # 2 batch sizes x 2 GPU counts; job 3 the best by roc_auc
    page = report.build_report(sweep, pages="none")["report.html"].read_text()
    alts = [a["alt"] for tag, a, _ in _Markup(page).tags if tag == "img"]
    assert alts[:2] == [
        "Training accuracy by GPU count at fixed batch size (cf. paper Fig. 6): training accuracy against epoch. "
        "Panel batch size 128: 1 GPU; 2 GPUs. Panel batch size 256: 1 GPU; 2 GPUs.",
        "Training accuracy by batch size at fixed GPU count (cf. paper Fig. 7): training accuracy against epoch. "
        "Panel 1 GPU: batch 128; batch 256. Panel 2 GPUs: batch 128; batch 256."]
    assert "Wall time against batch size (128 to 256) for 4 jobs" in alts
    assert alts[-3:] == [
        "ROC curve of job 3 on the test set (200 cases, 20 tornadic): true positive rate against false positive "
        "rate, AUC 1",
        "Reliability diagram of job 3 on the test set (200 cases, 20 tornadic): observed tornado frequency against "
        "forecast probability in 10 bins, with how many forecasts fall in each bin",
        "Performance diagram of job 3 on the test set (200 cases, 20 tornadic): probability of detection against "
        "success ratio at every threshold"]
    sweep = skill_sweep(tmp_path, {"a": [0.70, 0.80, 0.86], "b": [0.75, 0.86], "c": [0.60, 0.65]})
    page = report.build_report(sweep, pages="none")["report.html"].read_text()
    alts = [a["alt"] for tag, a, _ in _Markup(page).tags if tag == "img"]
    assert re.fullmatch(r"Validation ROC AUC after each epoch against training seconds for 3 jobs \(b, a, c\), with "
                        r"the skill target 0\.8\d+ as a dashed line: job b reaches it soonest", alts[1]), alts


def test_a_long_list_of_jobs_scrolls_in_its_own_box_with_its_header_in_view(tmp_path):
    lines = ["job,status,error,output_dir,epochs,batch_size,data_multiplier,lr,wall_s,roc_auc"]
    lines += [f"{i},ok,,,5,128,1,{0.001 * (i + 1)},{10 + i},{0.6 + i / 1000}" for i in range(report.LONG_LIST + 1)]
    lines += [f"{i},failed,boom,,5,128,1,{i},," for i in range(100, 103)]
    page = report.build_report(write_csv_sweep(tmp_path, "\n".join(lines) + "\n"), pages="none")["report.html"]
    html_text = page.read_text()
    jobs, failed = html_text.split('<h2 id="jobs">')[1].split('<h2 id="failed">')
    assert jobs.count("<tr>") == report.LONG_LIST + 2 and '<div class="wide long"><table class="list">' in jobs
    assert '<div class="wide"><table class="list">' in failed  # 3 failed jobs: no box of their own
    assert ".long thead th{position:sticky;top:0}" in html_text



class _Markup(HTMLParser):
    """The tags of a page, in order, as (tag, attributes, open tags around it), and its <style> text."""

    def __init__(self, page: str):
        super().__init__()
        self.tags, self.open, self.style = [], [], ""
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs), list(self.open)))
        if tag not in ("br", "wbr", "img", "meta"):
            self.open.append(tag)

    def handle_endtag(self, tag):
        if tag in self.open:
            del self.open[len(self.open) - 1 - self.open[::-1].index(tag):]

    def handle_data(self, data):
        if self.open and self.open[-1] == "style":
            self.style += data


def test_a_long_list_of_jobs_is_printed_in_full(tmp_path):
    lines = ["job,status,error,output_dir,epochs,batch_size,data_multiplier,lr,wall_s,roc_auc"]
    lines += [f"{i},ok,,,5,128,1,{0.001 * (i + 1)},{10 + i},{0.6 + i / 1000}" for i in range(report.LONG_LIST + 1)]
    page = report.build_report(write_csv_sweep(tmp_path, "\n".join(lines) + "\n"), pages="none")["report.html"]
    style = _Markup(page.read_text()).style
    # on paper a scrolling box would show its first screenful only
    printed = re.search(r"@media print\{(.*)\}\s*$", style, re.S)
    assert printed, style
    rules = {k.strip(): v for k, v in re.findall(r"([^{}]+)\{([^{}]*)\}", printed.group(1))}
    assert rules[".long"] == "max-height:none" and "overflow:visible" in rules[".wide,.tables"]
    assert rules[".long thead th"] == "position:static"


def test_job_pages_are_linked_whatever_their_folders_are_called(tmp_path):
    plain = gpu_batch_sweep(tmp_path / "a", failed=False)
    odd = gpu_batch_sweep(tmp_path / "b", failed=False).rename(tmp_path / "gpus #2 ?100%")
    out = tmp_path / "both out"
    page = report.build_report([plain, odd], out=out, pages="all")["report.html"]
    hrefs = [a["href"] for tag, a, _ in _Markup(page.read_text()).tags if tag == "a" and "href" in a]
    pages = [h for h in hrefs if not h.startswith("#")]
    assert len(pages) == 8
    for href in pages:
        address = urllib.parse.urlsplit(href)
        assert not address.query and not address.fragment, href
        assert (out / urllib.parse.unquote(address.path)).is_file(), href
    assert "gpus%20%232%20%3F100%25/0/report.html" in hrefs
    job = (out / odd.name / "0" / "report.html").read_text()
    up = [a["href"] for tag, a, _ in _Markup(job).tags if tag == "a" and a.get("href", "#")[0] != "#"]
    assert up == ["../../report.html"]


def test_table_headers_say_whether_they_head_a_row_or_a_column(tmp_path):
    sweep = gpu_batch_sweep(tmp_path)
    page = report.build_report(sweep, rows="batch_size", cols="gpus", pages="1")["report.html"].read_text()
    pivot = page.split('<h2 id="tables">')[1].split('<h2 id="plots">')[0]
    heads = [(a, around) for tag, a, around in _Markup(pivot).tags if tag == "th"]
    assert len(heads) == 1 + 2 + 2  # the corner, 2 GPU counts, 2 batch sizes
    assert all(a.get("scope") == ("col" if "thead" in around else "row") for a, around in heads), heads
    run = (sweep / "3" / "report.html").read_text()
    facts = _Markup(run.split('<h2 id="run">')[1].split("<h2")[0]).tags  # no header row: each row heads itself
    cells = [(tag, a.get("scope")) for tag, a, _ in facts if tag in ("tr", "th", "td")]
    rows = [cells[i:i + 3] for i in range(0, len(cells), 3)]
    assert len(rows) > 3 and all(row == [("tr", None), ("th", "row"), ("td", None)] for row in rows), cells


def test_jobs_table_headers_may_break_after_an_underscore(tmp_path):
    page = report.build_report(gpu_batch_sweep(tmp_path), pages="none")["report.html"].read_text()
    jobs = page.split('<h2 id="jobs">')[1].split('<h2 id="failed">')[0]
    assert "<th>batch_<wbr>size</th>" in jobs and "<th>samples_<wbr>per_<wbr>s</th>" in jobs  # printable on paper


def test_a_run_page_s_tables_scroll_in_their_own_box_and_its_explanations_wrap(tmp_path):
    sweep = gpu_batch_sweep(tmp_path)  # no validation split: the explanations are the third column
    page = report.build_report(sweep / "0")["report.html"].read_text()
    markup = _Markup(page)
    tables_ = [around for tag, _, around in markup.tags if tag == "table"]
    assert len(tables_) == 3 and all(around[-1] == "div" for around in tables_)
    wrappers = [a for tag, a, _ in markup.tags if tag == "div" and a.get("class") == "wide"]
    assert len(wrappers) == 3
    assert "nth-child(3){white-space:nowrap}" not in markup.style
    assert ".scores td:not(:first-child):not(:last-child){white-space:nowrap}" in markup.style

def test_a_history_is_read_in_epoch_order_as_numbers(tmp_path):
    sweep = gpu_batch_sweep(tmp_path, failed=False)
    r = json.loads((sweep / "1" / "result.json").read_text())
    r["history"] = [{"epoch": 2, "train_acc": 0.9, "epoch_s": "1.5"}, {"epoch": 0, "train_acc": 0.8, "epoch_s": 1.0},
                    {"epoch": 1, "train_acc": "x", "epoch_s": 2.0}]
    (sweep / "1" / "result.json").write_text(json.dumps(r))
    h = report.load_history(report.load_sweep(sweep), "1")
    assert h["epoch"].tolist() == [0, 1, 2] and h.index.tolist() == [0, 1, 2]
    assert h["epoch_s"].tolist() == [1.0, 2.0, 1.5] and h["train_acc"].isna().tolist() == [False, True, False]
    in_order = report.load_history(report.load_sweep(sweep), "2")
    assert in_order["epoch"].tolist() == [0, 1, 2] and in_order["train_acc"].dtype == float


def test_a_copied_sweep_is_reported_from_its_own_folders(tmp_path):
    """A sweep copied (rsync from the cluster) while the original stays: results.csv and every result.json name
    the original's folders; the copy's report, pages, collect and predict use the copy's."""
    import shutil

    from tornado.collect import collect

    sweep = gpu_batch_sweep(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(sweep, copy)
    before = sorted(p.relative_to(sweep) for p in sweep.rglob("*"))
    report.build_report(copy)
    assert sorted(p.relative_to(sweep) for p in sweep.rglob("*")) == before  # nothing written to the original
    assert (copy / "3" / "report.html").is_file() and '<a href="3/report.html">' in (copy / "report.html").read_text()
    jobs = sorted(p.parent for p in copy.glob("*/result.json"))
    assert len(jobs) > 1 and set(collect(copy)["output_dir"]) == {str(j.resolve()) for j in jobs}


def test_the_paper_s_scaling_is_against_the_fewest_gpus_its_table_has_for_those_settings():
    t = pd.DataFrame({"epochs": 5, "batch_size": 128, "gpus": [2, 3, 4, 1], "figure": [30.0, 24.0, 20.0, 99.0]})
    t.loc[3, "batch_size"] = 256  # other settings: not the baseline of these
    want = np.array([5, 128, 4])
    assert tables._paper_scaling(t, ("epochs", "batch_size", "gpus"), want, "speedup") == pytest.approx(1.5)
    assert tables._paper_scaling(t, ("epochs", "batch_size", "gpus"), want, "scaling_efficiency") == \
        pytest.approx(1.5 / 2)
    assert math.isnan(tables._paper_scaling(t, ("epochs", "batch_size", "gpus"), np.array([5, 128, 8]), "speedup"))


def test_speedup_and_scaling_efficiency_against_the_fewest_devices_and_the_paper(tmp_path):
    sweep, results = tmp_path / "scaling", {}
    runs = [(1, 0, 20.0), (1, 1, 22.0), (2, 0, 12.0), (4, 0, 7.0), (4, 1, 7.0)]  # (GPUs, seed, wall seconds)
    for job, (g, seed, wall) in enumerate(runs):
        hp = {"epochs": 5, "batch_size": 32768, "lr": 0.001, "data_multiplier": 1, "gpus": g, "seed": seed,
              "paper": "6.1.3"}
        r = result_json(sweep / str(job), hp, wall_s=wall, accelerator="gpu", predictions=False)
        r["batch"]["devices"] = r["devices"]["count"] = g
        results[str(job)] = r
    write_results_csv(sweep, results)
    ok = report.load_sweep(sweep).ok
    got = report.scaling(ok)
    # against the mean of the two 1-GPU runs (21 s)
    assert got["speedup"].tolist() == pytest.approx([21 / 20, 21 / 22, 21 / 12, 3.0, 3.0])
    assert got["scaling_efficiency"].tolist() == pytest.approx([21 / 20, 21 / 22, 21 / 24, 0.75, 0.75])
    report.build_report(sweep, rows="gpus", cols="data_multiplier", group="none", value="speedup")
    cells = pd.read_csv(sweep / "report" / "table.csv")
    # the paper's Table 6 at batch 32768, 5 epochs: 11 s on 1, 2 and 4 GPUs, so its speedup is 1
    one_gpu = (21 / 20 + 21 / 22) / 2  # the mean of its two runs' speedups against their mean
    assert dict(zip(cells["gpus"], cells["speedup_mean"])) == pytest.approx({1: one_gpu, 2: 1.75, 4: 3.0})
    assert dict(zip(cells["gpus"], cells["paper"])) == pytest.approx({1: 1.0, 2: 1.0, 4: 1.0})
    assert "each cell shows the paper's speedup (worked out from its wall times by GPU count)" in \
        (sweep / "report" / "table.md").read_text()
    report.build_report(sweep, rows="gpus", cols="data_multiplier", group="none", value="scaling_efficiency",
                        paper="table6")
    cells = pd.read_csv(sweep / "report" / "table.csv")
    assert dict(zip(cells["gpus"], cells["paper"])) == pytest.approx({1: 1.0, 2: 0.5, 4: 0.25})
    with pytest.raises(TornadoError, match="value=speedup compares with a table by GPU count"):
        report.build_report(sweep, value="speedup", paper="table3")
    one = gpu_batch_sweep(tmp_path, failed=False)  # every job on one device (the results' devices column)
    summary = json.loads(report.build_report(one, value="speedup")["summary.json"].read_text())
    assert any("no settings ran on more than one device count" in n for n in summary["notes"])


def test_several_sweeps_are_reported_as_one(tmp_path, capsys):
    fast = gpu_batch_sweep(tmp_path / "a", failed=False).rename(tmp_path / "preaugmented")
    slow = gpu_batch_sweep(tmp_path / "b", failed=True).rename(tmp_path / "live")
    (fast / "results.csv").unlink()  # its jobs' folders are found from their result.json (output_dir moved)
    merged = report.load_sweeps([fast, slow])
    assert merged.df["job"].tolist()[:5] == ["preaugmented/0", "preaugmented/1", "preaugmented/2", "preaugmented/3",
                                             "live/0"]
    assert merged.df["sweep"].tolist() == ["preaugmented"] * 4 + ["live"] * 5
    assert merged.job_dir("live/2") == slow / "2" and merged.name == "preaugmented + live"
    out = tmp_path / "both"
    report.main([str(fast), str(slow), "rows=batch_size", "cols=sweep", "group=none", f"out={out}"])
    cells = pd.read_csv(out / "table.csv")  # batch size x sweep, one table per GPU count
    assert len(cells) == 8 and set(cells["sweep"]) == {"preaugmented", "live"} and cells["n"].eq(1).all()
    page = (out / "report.html").read_text()
    assert "<h1>Sweeps report: preaugmented + live</h1>" in page and "live/4" in page  # the failed job
    assert "failed: job live/4 (sweep=live, batch_size=512, gpus=4): RuntimeError: CUDA out of memory" in \
        capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sweep_dirs"] == [str(fast), str(slow)] and summary["jobs"] == 9 and summary["failed"] == 1
    assert (out / "train_acc_by_gpus.png").is_file()  # the jobs' histories were found in both
    with pytest.raises(TornadoError, match="^2 sweeps: out=DIR says where their report goes$"):
        report.build_report([fast, slow])
    twin = gpu_batch_sweep(tmp_path / "c", failed=False).rename(tmp_path / "c" / "x")
    (tmp_path / "d").mkdir()
    other = gpu_batch_sweep(tmp_path / "d", failed=False).rename(tmp_path / "d" / "x")
    with pytest.raises(TornadoError, match="two share a name"):
        report.load_sweeps([twin, other])


def test_reader_without_collect_module(tmp_path, monkeypatch):
    sweep = gpu_batch_sweep(tmp_path)
    (sweep / "results.csv").unlink()
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tornado.collect" else find_spec(name, *a))
    df = report.load_sweep(sweep).df
    assert not (sweep / "results.csv").exists()      # read in memory; results.csv is collect's to write
    pivots = tables.pivot(df, "batch_size", "gpus", "none", "wall_s")
    assert pivots[None].to_numpy().tolist() == [[5.0, 6.0], [6.0, 7.0]]
    jobs = df.set_index("job")
    assert jobs.loc["4", "status"] == "failed" and jobs.loc["4", "error"] == "RuntimeError: CUDA out of memory <oom>"
    assert jobs.loc["0", "accelerator"] == "gpu" and jobs.loc["0", "roc_auc"] == 0.7


def test_time_to_accuracy_and_time_to_skill(tmp_path):
    sweep = tmp_path / "tta"
    specs = {  # job: (batch, history [(train_acc, epoch_s)], roc_auc, wall_s)
        "a": (128, [(0.80, 1.0), (0.90, 1.0), (0.94, 1.0)], 0.800, 10.0),   # reaches 0.93 after 3 s
        "b": (256, [(0.95, 5.0)], 0.805, 20.0),                               # after 5 s
        "c": (512, [(0.50, 0.5), (0.60, 0.5)], 0.700, 1.0),                   # never
    }
    results = {}
    for job, (b, hist, auc, wall) in specs.items():
        hp = {"epochs": len(hist), "batch_size": b, "lr": 0.001, "data_multiplier": 1, "gpus": 0, "seed": 0}
        results[job] = result_json(sweep / job, hp, metrics={"roc_auc": auc}, wall_s=wall, history=hist,
                                   predictions=False)
    write_results_csv(sweep, results)
    summary = json.loads(report.build_report(sweep, target=0.93)["summary.json"].read_text())
    tta = summary["time_to_accuracy"]
    assert [(t["job"], t["seconds"], t["epochs"]) for t in tta] == [("a", 3.0, 3), ("b", 5.0, 1)]
    assert [b["job"] for b in summary["best_by_metric"]] == ["b", "a", "c"]
    # best roc_auc 0.805; within 1%: >= 0.79695, so a (0.800, 10 s) beats b (20 s); c (0.700) is out
    assert summary["time_to_skill"]["job"] == "a"
    assert summary["metric"] == "roc_auc" and any("The jobs have no validation split (data.split.val_fraction=0, "
                                                  "as in the paper's experiment files)" in n for n in summary["notes"])
    summary = json.loads(report.build_report(sweep, metric="wall_s")["summary.json"].read_text())
    assert summary["best_by_metric"][0]["job"] == "c"        # lower is better for times


def test_soonest_to_skill_from_validation_roc_auc_per_epoch(tmp_path):
    sweep = tmp_path / "skill"
    specs = {  # job: (batch, [(val_roc_auc, epoch_s)])
        "a": (128, [(0.70, 2.0), (0.85, 2.0), (0.90, 2.0)]),  # best 0.90; target 0.891: reached after 6 s
        "b": (512, [(0.80, 1.0), (0.895, 1.0), (0.88, 1.0)]),  # 0.895 after 2 s: soonest
        "c": (2048, [(0.60, 0.5), (0.70, 0.5)]),               # never
    }
    results = {}
    for job, (b, hist) in specs.items():
        hp = {"epochs": len(hist), "batch_size": b, "lr": 0.001, "data_multiplier": 1, "gpus": 0, "seed": 0}
        results[job] = result_json(sweep / job, hp, metrics={"val_roc_auc": hist[-1][0]}, wall_s=10.0,
                                   history=[(0.95, sec) for _, sec in hist], predictions=False)
        r = json.loads((sweep / job / "result.json").read_text())
        for h, (auc, _) in zip(r["history"], hist):
            h["val_roc_auc"] = auc
        (sweep / job / "result.json").write_text(json.dumps(r))
    write_results_csv(sweep, results)
    paths = report.build_report(sweep)
    sts = json.loads(paths["summary.json"].read_text())["soonest_to_skill"]
    assert sts["best"] == 0.90 and sts["target"] == pytest.approx(0.891)
    assert [(t["job"], t["seconds"], t["epochs"]) for t in sts["jobs"]] == [("b", 2.0, 2), ("a", 6.0, 3)]
    assert sts["jobs"][0]["config"] == {"batch_size": 512, "epochs": 3}
    assert paths["skill_vs_time.png"].stat().st_size > 0
    page = paths["report.html"].read_text()
    assert "Soonest to skill: validation ROC AUC ≥ 0.891" in page
    text = report.summary_text(json.loads(paths["summary.json"].read_text()))
    assert "soonest to skill (val_roc_auc 0.891): job b (2 s, 2 epochs): " in text
    assert "; 2 of 3 jobs reached it within their epochs\n" in text
    assert sts["reached"] == {"n": 2, "of": 3, "what": "job"}
    assert '<p class="note">2 of 3 jobs reached it within their epochs</p>' in page
    # the same seconds as a table value; c never reached the target: "never", not a missing cell
    report.build_report(sweep, rows="batch_size", cols="epochs", group="none", value="skill_s")
    cells = pd.read_csv(sweep / "report" / "table.csv")
    assert dict(zip(cells["batch_size"], cells["skill_s_mean"])) == {128: 6.0, 512: 2.0, 2048: math.inf}
    assert "| 2048 | never | – |" in (sweep / "report" / "table.md").read_text()


def skill_sweep(tmp_path: Path, curves: dict[str, list[float]], val_n: int = 1500, val_positives: int = 68,
                settings: dict[str, dict] | None = None) -> Path:
    """Jobs with a validation ROC AUC after each 1-second epoch, and the validation split's size; batch sizes
    128, 256, ... unless `settings` (job: hyperparameters) says otherwise."""
    sweep = tmp_path / "skill"
    results = {}
    for i, (job, aucs) in enumerate(curves.items()):
        hp = {"epochs": len(aucs), "batch_size": 128 * 2 ** i, "lr": 0.001, "data_multiplier": 1, "gpus": 0,
              "seed": 0, **(settings or {}).get(job, {})}
        metrics = {"val_roc_auc": aucs[-1], "val_n": val_n, "val_positives": val_positives, "roc_auc": aucs[-1]}
        results[job] = result_json(sweep / job, hp, metrics=metrics, history=[(0.95, 1.0)] * len(aucs),
                                   predictions=False)
        r = json.loads((sweep / job / "result.json").read_text())
        for h, auc in zip(r["history"], aucs):
            h["val_roc_auc"] = auc
        (sweep / job / "result.json").write_text(json.dumps(r))
    write_results_csv(sweep, results)
    return sweep


def test_skill_target_is_the_best_less_one_standard_error_and_never_chance(tmp_path):
    from tornado.metrics import roc_auc_se

    sweep = skill_sweep(tmp_path, {"a": [0.70, 0.80, 0.86, 0.88], "b": [0.75, 0.855, 0.86], "c": [0.80, 0.84]})
    se = roc_auc_se(0.88, 68, 1432)
    assert 0.02 < se < 0.04  # 68 positives: differences of a hundredth are noise
    sts = json.loads(report.build_report(sweep)["summary.json"].read_text())["soonest_to_skill"]
    assert sts["se"] == pytest.approx(se) and sts["target"] == pytest.approx(0.88 - se)
    assert [(t["job"], t["seconds"]) for t in sts["jobs"]] == [("b", 2.0), ("a", 3.0)]  # c: 0.84 < 0.8536
    # a target given: skill=0.8
    sts = json.loads(report.build_report(sweep, skill=0.8)["summary.json"].read_text())["soonest_to_skill"]
    assert sts["target"] == 0.8 and sts["target_from"] == "skill"
    assert [(t["job"], t["seconds"]) for t in sts["jobs"]] == [("c", 1.0), ("a", 2.0), ("b", 2.0)]
    with pytest.raises(TornadoError, match=r"skill=0.4: must be auto or a validation ROC AUC in \(0.5, 1\]"):
        report.build_report(sweep, skill=0.4)


def test_soonest_to_skill_ranks_configurations_over_their_seeds(tmp_path):
    curves = {"0": [0.85, 0.86, 0.86, 0.86], "1": [0.70, 0.70, 0.70, 0.85],  # batch 128: 1 s (lucky) and 4 s
              "2": [0.70, 0.85, 0.86, 0.86], "3": [0.70, 0.85, 0.85, 0.86],  # batch 256: 2 s and 2 s
              "4": [0.81, 0.82, 0.82, 0.95], "5": [0.70, 0.70, 0.70, 0.70]}  # batch 512: 1 s, and never
    settings = {j: {"batch_size": 128 * 2 ** (int(j) // 2), "seed": int(j) % 2} for j in curves}
    sweep = skill_sweep(tmp_path, curves, settings=settings)
    paths = report.build_report(sweep, skill=0.8)
    summary = json.loads(paths["summary.json"].read_text())
    ranked = [(t["config"], t["seconds"], t["reached"], t["n"], t["jobs"]) for t in summary["soonest_to_skill"]["jobs"]]
    # batch 256 (2 s for both seeds) before batch 128 (its lucky seed 1 s, the other 4 s: 2.5 s on average), and
    # batch 512, reached by one seed of two, last
    assert ranked == [({"batch_size": 256}, 2.0, 2, 2, ["2", "3"]), ({"batch_size": 128}, 2.5, 2, 2, ["0", "1"]),
                      ({"batch_size": 512}, 1.0, 1, 2, ["4", "5"])]
    second = summary["soonest_to_skill"]["jobs"][1]
    assert second["std"] == pytest.approx(2.1213, abs=1e-4) and (second["epochs_min"], second["epochs"]) == (1, 4)
    text = report.summary_text(summary)
    assert "soonest to skill (val_roc_auc 0.8): jobs 2, 3 (2 s ± 0, mean of 2 repeats, 2 epochs): " \
           "batch_size=256; 3 of 3 configurations reached it within their epochs" in text
    page = paths["report.html"].read_text()
    assert "<b>2.5 s</b> ± 2.1 (mean of 2 repeats, 1–4 epochs) · jobs 0, 1" in page
    assert "<b>1 s</b> (1 of 2 repeats reached it, their mean, 1 epoch) · jobs 4, 5" in page
    # the target's best is a configuration's mean over its seeds (batch 256: 0.86 at epoch 4), not one lucky
    # seed's (job 4: 0.95, its twin 0.70)
    auto = json.loads(report.build_report(sweep)["summary.json"].read_text())["soonest_to_skill"]
    assert (auto["best"], auto["best_job"], auto["best_repeats"]) == (pytest.approx(0.86), "2", 2)
    assert "the best a configuration on average over its 2 repeats reached after any epoch, 0.86, less one " \
           "standard error" in report.build_report(sweep)["report.html"].read_text()
    # the per-job seconds stay in the tables (value=skill_s), seeds aggregated there
    report.build_report(sweep, rows="batch_size", cols="epochs", group="none", value="skill_s", skill=0.8)
    cells = pd.read_csv(sweep / "report" / "table.csv")
    assert dict(zip(cells["batch_size"], cells["skill_s_mean"])) == {128: 2.5, 256: 2.0, 512: math.inf}


def test_no_skill_is_said_when_no_job_beats_chance(tmp_path):
    sweep = skill_sweep(tmp_path, {"a": [0.40, 0.45], "b": [0.50, 0.52]}, val_positives=10)
    paths = report.build_report(sweep)
    summary = json.loads(paths["summary.json"].read_text())
    assert summary["soonest_to_skill"]["target"] <= 0.5 and summary["soonest_to_skill"]["jobs"] == []
    assert "no skill, the target is not above chance" in report.summary_text(summary)
    assert "No skill: the target is not above chance" in paths["report.html"].read_text()
    sweep2 = skill_sweep(tmp_path / "worse", {"a": [0.40, 0.45], "b": [0.44, 0.48]})
    summary = json.loads(report.build_report(sweep2, metric="roc_auc")["summary.json"].read_text())
    assert summary["time_to_skill"]["job"] is None and summary["time_to_skill"]["no_skill"] == 0.5


def test_a_best_roc_auc_within_one_standard_error_of_chance_is_no_skill(tmp_path):
    from tornado.metrics import roc_auc_se

    se = roc_auc_se(0.55, 20, 480)
    assert se > 0.05  # 20 positives: 0.55 is within noise of chance
    tts = json.loads(report.build_report(skill_sweep(tmp_path / "few", {"a": [0.55], "b": [0.53]}, val_n=500,
                                                     val_positives=20))["summary.json"].read_text())["time_to_skill"]
    assert tts["job"] is None and tts["no_skill_name"] == f"chance, within one standard error ({se:.2g})"
    tts = json.loads(report.build_report(skill_sweep(tmp_path / "many", {"a": [0.55], "b": [0.53]}, val_n=50000,
                                                     val_positives=5000))["summary.json"].read_text())["time_to_skill"]
    assert tts["job"] == "a"  # 5,000 positives: 0.55 is skill


def test_average_precision_and_csi_have_no_skill_at_the_base_rate(tmp_path):
    sweep, results = tmp_path / "ap", {}
    for job, (val_ap, ap) in {"a": (0.06, 0.30), "b": (0.04, 0.05)}.items():  # validation base rate 0.08
        hp = {"epochs": 1, "batch_size": 128 if job == "a" else 256, "lr": 0.001, "data_multiplier": 1, "seed": 0}
        m = {"val_average_precision": val_ap, "val_n": 500, "val_positives": 40, "average_precision": ap,
             "csi": ap / 2, "n": 1000, "positives": 50, "train_base_rate": 0.05}
        results[job] = result_json(sweep / job, hp, metrics=m, history=[(0.95, 1.0)], predictions=False)
    write_results_csv(sweep, results)
    paths = report.build_report(sweep, metric="val_average_precision", target=0.93)
    summary = json.loads(paths["summary.json"].read_text())
    tts = summary["time_to_skill"]
    assert tts["job"] is None and tts["no_skill"] == pytest.approx(0.08) and tts["no_skill_name"] == "the base rate"
    assert "No skill: the best val_average_precision, 0.06, is not above 0.08 (the base rate)." in \
        paths["report.html"].read_text()
    assert not any('"fastest within 1% of the best" card does' in n for n in summary["notes"])
    # on the test set (base rate 0.05) job a's 0.30 is skill, as is its CSI of 0.15
    for metric in ("average_precision", "csi"):
        summary = json.loads(report.build_report(sweep, metric=metric, target=0.93)["summary.json"].read_text())
        assert summary["time_to_skill"]["job"] == "a", metric
        assert any('The "fastest within 1% of the best" card does.' in n for n in summary["notes"]), metric


def test_ranked_on_validation_and_warned_of_a_target_without_skill(tmp_path):
    sweep = tmp_path / "val"
    results = {}
    for job, (val_auc, auc) in {"a": (0.80, 0.70), "b": (0.75, 0.90)}.items():
        hp = {"epochs": 1, "batch_size": 128 if job == "a" else 256, "lr": 0.001, "data_multiplier": 1, "seed": 0}
        m = {"roc_auc": auc, "val_roc_auc": val_auc, "climatology": 0.05, "train_base_rate": 0.05}
        results[job] = result_json(sweep / job, hp, metrics=m, history=[(0.95, 1.0)], predictions=False)
    write_results_csv(sweep, results)
    written = report.build_report(sweep, target=0.93)
    summary = json.loads(written["summary.json"].read_text())
    assert summary["metric"] == "val_roc_auc" and summary["best_by_metric"][0]["job"] == "a"
    assert summary["constant_forecast_accuracy"] == pytest.approx(0.95)
    assert any("says nothing of skill here. The \"fastest within 1% of the best\" card does." in n
               for n in summary["notes"])
    assert "already scores 0.95" in written["report.html"].read_text()
    summary = json.loads(report.build_report(sweep, target=0.97, metric="roc_auc")["summary.json"].read_text())
    assert summary["best_by_metric"][0]["job"] == "b"
    assert not any("says nothing of skill" in n for n in summary["notes"])
    assert "Best configurations are ranked by roc_auc, a test-set score: an optimistic choice (metric=val_roc_auc " \
           "ranks them on the validation split)." in summary["notes"]
    summary = json.loads(report.build_report(sweep, metric="wall_s")["summary.json"].read_text())
    assert not any("test-set score" in n for n in summary["notes"])  # a time: no optimism


def test_epoch_axes_have_whole_number_ticks_even_for_one_epoch(monkeypatch):
    figures = []
    render = plots._render
    monkeypatch.setattr(plots, "_render", lambda fig: (figures.append(fig), render(fig))[1])
    one = ("Training accuracy", [("", [("batch 128", np.array([1]), np.array([0.95])),
                                       ("batch 256", np.array([1]), np.array([0.94]))])])
    plots.plot_curves(one)
    plots.plot_learning_curves(pd.DataFrame({"epoch": [0], "train_loss": [0.2], "train_acc": [0.95]}))
    plots.plot_curves(("Training accuracy", [("", [("a", np.arange(1, 4), np.array([0.9, 0.95, 0.96]))])]))
    shown = []
    for fig in figures:
        for ax in (a for a in fig.axes if a.get_visible()):
            lo, hi = ax.get_xlim()
            shown.append([float(t) for t in ax.get_xticks() if lo <= t <= hi])
            assert hi - lo >= 1
    assert shown == [[1.0], [1.0], [1.0], [1.0, 2.0, 3.0]]  # one point: epoch 1 alone, not 0.945 ... 1.05


def test_roc_and_reliability_points_by_hand():
    prob, label = np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])
    fpr, tpr, auc = plots.roc_points(prob, label)
    # thresholds 0.8, 0.4, 0.35, 0.1 -> (0, .5), (.5, .5), (.5, 1), (1, 1)
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0] and tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert auc == 0.75
    _, _, tied = plots.roc_points(np.array([0.5, 0.5, 0.5, 0.9]), np.array([0, 1, 0, 1]))
    assert tied == pytest.approx(0.75)      # one threshold for the three ties: (0, .5) -> (1, 1)
    # performance diagram: thresholds 0.8, 0.4, 0.35, 0.1 -> hits 1, 1, 2, 2 of 2 positives, 1-4 forecasts "yes"
    sr, pod, cut = plots.performance_points(prob, label)
    assert cut.tolist() == [0.8, 0.4, 0.35, 0.1]
    assert pod.tolist() == [0.5, 0.5, 1.0, 1.0] and sr.tolist() == [1.0, 0.5, 2 / 3, 0.5]
    mean_p, frac, low, high = plots.reliability_points(np.array([0.05, 0.15, 0.12, 0.95, 1.0]),
                                                       np.array([0, 1, 0, 1, 1]))
    assert mean_p == pytest.approx([0.05, 0.135, 0.975]) and frac == pytest.approx([0.0, 0.5, 1.0])
    # Wilson 95%: 0 of 1 -> [0, z^2/(1+z^2)]; 1 of 2 -> 0.5 -/+ z sqrt(1/8 + z^2/16) / (1 + z^2/2);
    # 2 of 2 -> [2/(2+z^2), 1]
    z = 1.959964
    assert low[0] == pytest.approx(0, abs=1e-9) and high[0] == pytest.approx(z**2 / (1 + z**2), rel=1e-5)
    half = z * np.sqrt(0.25 / 2 + z**2 / 16) / (1 + z**2 / 2)
    assert low[1] == pytest.approx(0.5 - half, rel=1e-5) and high[1] == pytest.approx(0.5 + half, rel=1e-5)
    assert low[2] == pytest.approx(2 / (2 + z**2), rel=1e-5) and high[2] == pytest.approx(1, abs=1e-9)


def test_the_reliability_diagram_shows_climatology_and_no_skill():
    """An attributes diagram: the climatology the Brier skill score is measured against, the no-skill line halfway
    to it and the area where bins add skill; the test set's own base rate beside it."""
    rng = np.random.default_rng(0)
    prob = rng.random(400) * 0.5
    label = (rng.random(400) < prob).astype(np.uint8)
    svg = plots.plot_verification(prob, label, "job 1", 0.3, climatology=0.046)["reliability"]["svg"].decode()
    for text in ("no skill", "adds skill", "climatology 0.046", f"test-set base rate {label.mean():.3f}"):
        assert text in svg, text
    svg = plots.plot_verification(prob, label, "job 1")["reliability"]["svg"].decode()  # no climatology known
    assert f"climatology {label.mean():.3f} (test set)" in svg and "test-set base rate" not in svg


# ---------------------------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("args, fragment", [
    (["foo=1"], "foo: unknown argument"),
    (["rows=nonexistent"], "rows=nonexistent: no such column"),
    (["agg=sum"], "agg=sum"),
    (["target=high"], "target=high"),
    (["target=93"], "target=93"),
    (["cols=batch_size"], "must be different columns"),
    (["paper=table10"], "paper=table10"),
    (["paper=table8"], "paper=table8: that table holds accuracy"),
    (["value=lr", "extra"], "extra: no such folder (a sweep's or a run's)"),
    (["colls=epochs"], "colls: unknown argument (did you mean cols? keys: rows, cols, "),
    (["rows=batchsize"], "rows=batchsize: no such column in results.csv (did you mean batch_size?)"),
    (["metric=val_roc_aucc"], "metric=val_roc_aucc: no such column in results.csv (did you mean val_roc_auc?)"),
])
def test_bad_cli_args_exit_2_with_one_line(tmp_path, capsys, args, fragment):
    sweep = write_csv_sweep(tmp_path, PIVOT_CSV)
    with pytest.raises(SystemExit) as exc:
        report.main([str(sweep), *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and fragment in err


def test_missing_sweep_dir_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        report.main([str(tmp_path / "nope")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope: no such folder" in err
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit):
        report.main([str(tmp_path / "file")])
    assert "file: not a folder (a sweep's or a run's)" in capsys.readouterr().err


def test_cli_prints_markdown_and_writes_report(tmp_path):
    sweep = write_csv_sweep(tmp_path, PIVOT_CSV)
    proc = subprocess.run([sys.executable, "-m", "tornado.report", str(sweep), "group=none", "agg=min"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| 128 | 10 | 20 |" in proc.stdout       # min over epochs 5 and 10
    assert "| 256 | 6 | 12 |" in proc.stdout
    assert (sweep / "report.html").is_file() and (sweep / "report" / "table.tex").is_file()


# ------------------------------------------------------------------------------------------------ browser
def _chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        if os.environ.get("TORNADO_REQUIRE_CHROMIUM") == "1":
            pytest.fail("TORNADO_REQUIRE_CHROMIUM=1 but chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return exe


@pytest.mark.chromium
def test_report_loads_in_chromium_without_console_errors(tmp_path):
    exe = _chromium()
    sweep = gpu_batch_sweep(tmp_path, running=True)
    page = report.build_report(sweep, rows="batch_size", cols="gpus")["report.html"]
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0", "--hide-scrollbars"]
    url = page.resolve().as_uri()
    dom = subprocess.run([exe, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [ln for ln in dom.stderr.splitlines() if re.search(r"CONSOLE[:(]|Uncaught", ln)]
    assert console == [], console
    assert "Partial report" in dom.stdout and 'class="pivot"' in dom.stdout
    assert "CUDA out of memory" in dom.stdout
    snap = subprocess.run([exe, *flags, f"--screenshot={shot}", "--window-size=1200,3000", url],
                          capture_output=True, text=True, timeout=120)
    assert snap.returncode == 0, snap.stderr[-2000:]
    assert shot.read_bytes()[:8] == PNG_MAGIC
    assert shot.stat().st_size > 50_000    # a blank page compresses to a few kB
    run_page = report.build_report(sweep / "0")["report.html"]  # one run's own page
    dom = subprocess.run([exe, *flags, "--dump-dom", run_page.resolve().as_uri()], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0 and not [ln for ln in dom.stderr.splitlines() if re.search(r"CONSOLE[:(]|Uncaught", ln)]
    assert '<h2 id="scores">Scores</h2>' in dom.stdout and 'alt="Learning curves of run 0 over 3 epochs' in dom.stdout


def test_results_csv_without_output_dir_column_uses_the_job_folders(tmp_path):
    """A results.csv with no output_dir column: job folders are SWEEP/JOB (histories still found)."""
    sweep = gpu_batch_sweep(tmp_path, failed=False)
    text = (sweep / "results.csv").read_text().splitlines()
    rows = list(csv.DictReader(text))
    with open(sweep / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[c for c in rows[0] if c != "output_dir"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    loaded = report.load_sweep(sweep)
    assert "output_dir" not in loaded.df.columns
    assert loaded.job_dir("1") == sweep / "1"
    assert report.load_history(loaded, "1") is not None
    paths = report.build_report(sweep, rows="batch_size", cols="gpus")
    assert "report.html" in paths


def test_result_json_with_non_dict_sections_still_reports(tmp_path):
    """hparams/metrics/times/batch/devices that are not objects are ignored; a JSON list is no result."""
    sweep = gpu_batch_sweep(tmp_path, failed=False)
    (sweep / "results.csv").unlink()
    r = json.loads((sweep / "0" / "result.json").read_text())
    r.update(hparams="x", metrics=[1], times="t", batch=3, devices="d")
    (sweep / "0" / "result.json").write_text(json.dumps(r))
    (sweep / "9").mkdir()
    (sweep / "9" / "result.json").write_text("[]")
    paths = report.build_report(sweep)
    jobs = report.load_sweep(sweep).df.set_index("job")
    assert jobs.loc["0", "status"] == "ok" and math.isnan(jobs.loc["0", "batch_size"])
    assert jobs.loc["9", "status"] == "unreadable"
    assert "report.html" in paths
    r.update(history="h", versions=[], early_stop=2)  # and a run's own page
    (sweep / "0" / "result.json").write_text(json.dumps(r))
    page = report.build_report(sweep / "0")["report.html"].read_text()
    assert "No scores in its result.json" in page and 'id="epochs"' not in page  # no history: no section


def test_cpu_jobs_are_labelled_cpu_whatever_gpus_says_and_cpu_sweeps_by_their_processes():
    import pandas as pd

    ok = pd.DataFrame({"gpus": ["auto", "auto", 2], "devices": [1, 1, 2], "accelerator": ["cpu", "cpu", "gpu"]})
    counts, unit = plots._device_counts(ok)
    assert counts.tolist() == [0.0, 0.0, 2.0] and unit == "GPU"
    assert [plots._devices(g, unit) for g in counts] == ["CPU", "CPU", "2 GPUs"]
    # every job on CPUs (trainer.accelerator=cpu gpus=1,2): the DDP processes, as the paper's GPU counts
    ok = pd.DataFrame({"gpus": [1, 2], "devices": [1, 2], "accelerator": ["cpu", "cpu"]})
    counts, unit = plots._device_counts(ok)
    assert counts.tolist() == [1.0, 2.0] and [plots._devices(g, unit) for g in counts] == ["1 CPU process",
                                                                                             "2 CPU processes"]
    ok = ok.assign(job=["0", "1"], batch_size=128)
    histories = {j: pd.DataFrame({"train_acc": [0.9, 0.95]}) for j in ("0", "1")}
    title, panels = plots.curve_figures(ok, histories, "batch_size")["train_acc_by_gpus"]
    assert title == "Training accuracy by CPU process count at fixed batch size (cf. paper Fig. 6)"
    assert [label for label, *_ in panels[0][1]] == ["1 CPU process", "2 CPU processes"]


def test_times_are_not_settings():
    df = pd.DataFrame({"job": ["0", "1", "2"], "status": ["ok"] * 3, "batch_size": [64, 64, 128], "seed": [0, 1, 0],
                       "wall_s": [1.0, 2.0, 3.0], "epoch_scoring_s": [0.1, 0.2, 0.3], "test_s": [0.5, 0.4, 0.3]})
    assert tables.varying_hparams(df) == ["batch_size", "seed"]


def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    sweep = write_csv_sweep(tmp_path, PIVOT_CSV)
    proc = subprocess.Popen([sys.executable, "-m", "tornado.report", str(sweep)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before anything is written (`| head` that has had enough)
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and err == ""


def test_best_configurations_are_ranked_by_their_mean_over_seeds(tmp_path):
    sweep = tmp_path / "seeds"
    results = {}
    for job, (b, seed, auc) in enumerate([(128, 0, 0.80), (128, 1, 0.84), (256, 0, 0.86), (256, 1, 0.70)]):
        hp = {"epochs": 1, "batch_size": b, "lr": 0.001, "data_multiplier": 1, "gpus": 0, "seed": seed}
        m = {"val_roc_auc": auc, "val_n": 1500, "val_positives": 70}  # cases enough: skill beyond one SE
        results[str(job)] = result_json(sweep / str(job), hp, metrics=m, wall_s=10.0 + job, predictions=False)
    write_results_csv(sweep, results)
    paths = report.build_report(sweep)
    best = json.loads(paths["summary.json"].read_text())["best_by_metric"]
    # one lucky seed (job 2, 0.86) does not make batch 256 the best: 0.82 on average against 0.78
    assert [(b["config"], b["jobs"], b["n"]) for b in best] == [({"batch_size": 128}, ["1", "0"], 2),
                                                                ({"batch_size": 256}, ["2", "3"], 2)]
    assert best[0]["val_roc_auc"] == pytest.approx(0.82) and best[0]["std"] == pytest.approx(0.0283, abs=1e-4)
    assert best[0]["job"] == "1" and best[0]["wall_s"] == pytest.approx(10.5)
    assert "<b>0.82</b> ± 0.028 (mean of 2 repeats) · jobs 1, 0" in paths["report.html"].read_text()
    assert "best by val_roc_auc: jobs 1, 0 (val_roc_auc 0.82 ± 0.028, mean of 2 repeats): batch_size=128" in \
        report.summary_text(json.loads(paths["summary.json"].read_text()))
    # fastest within 1% of the best mean (0.82): batch 128 alone; its 10.5 s is the mean of its seeds' wall times
    tts = json.loads(paths["summary.json"].read_text())["time_to_skill"]
    assert (tts["config"], tts["wall_s"], tts["n"], tts["jobs"]) == ({"batch_size": 128}, 10.5, 2, ["0", "1"])
    assert tts["val_roc_auc"] == pytest.approx(0.82) and tts["best"] == pytest.approx(0.82)
    assert "<b>10.5 s</b> (mean of 2 repeats) · val_roc_auc 0.82 (best 0.82) · jobs 0, 1" in \
        paths["report.html"].read_text()


def test_the_paper_comparison_names_other_gpu_counts_and_batches_holding_the_whole_epoch(tmp_path):
    text = """\
job,status,error,output_dir,epochs,batch_size,data_multiplier,gpus,paper,accelerator,devices,wall_s,samples_per_epoch
0,ok,,,5,128,1,1,6.2,gpu,1,15.5,13500
1,ok,,,5,32768,1,1,6.2,gpu,1,2.5,13500
"""
    sweep = write_csv_sweep(tmp_path, text)
    md = report.build_report(sweep, rows="epochs", cols="batch_size", group="none")["table.md"].read_text()
    assert "Our GPU jobs used 1 GPU each; the paper's 2 V100s per network." in md  # Table 9: 2 V100s
    assert "batch_size 32768: the whole training set in one batch, one step per epoch" in md
    two = write_csv_sweep(tmp_path, text.replace("gpu,1,", "gpu,2,").replace(",32768,", ",4096,"), "two")
    md = report.build_report(two, rows="epochs", cols="batch_size", group="none")["table.md"].read_text()
    assert "Our GPU jobs" not in md and "one step per epoch" not in md


def test_time_tables_name_the_jobs_a_busy_machine_slowed(tmp_path):
    text = """\
job,status,error,output_dir,epochs,batch_size,data_multiplier,wall_s,slowest_epoch_ratio
0,ok,,,5,128,1,15.5,1.1
1,ok,,,5,256,1,40.0,12.4
2,ok,,,5,512,1,5.0,
"""
    sweep = write_csv_sweep(tmp_path, text)
    md = report.build_report(sweep, rows="epochs", cols="batch_size", group="none")["table.md"].read_text()
    assert ("Timing disturbed in 1 job: 1 (12×), an epoch took 3× or more the job's median epoch (the first left "
            "out): something else used the machine then") in md
    md = report.build_report(sweep, rows="epochs", cols="batch_size", group="none", value="batch_size")
    assert "Timing disturbed" not in md["table.md"].read_text()  # not a time


def test_the_run_page_counts_the_patches_left_out_for_missing_values():
    from tornado.runpage import facts

    data = {"n_train": 13500, "n_val": 1500, "n_test": 5000, "samples_per_epoch": 13500}
    cases = dict(facts({"data": {**data, "n_dropped": 12}}))["cases"]
    assert cases == ("train 13,500, val 1,500, test 5,000; 13,500 samples per epoch; 12 left out for missing "
                     "values (NaN, inf or a fill value)")
    assert dict(facts({"data": {**data, "n_dropped": 0}}))["cases"].endswith("13,500 samples per epoch")


def test_the_paper_comparison_says_what_differs_and_what_no_skill_scores(tmp_path):
    """Accuracy beside a constant "no" forecast's on the same cases; CPU jobs against the paper's GPU table; the
    per-sample ratio where the training sets differ; every note in the LaTeX caption; the table in the CSV."""
    text = """\
job,status,error,output_dir,epochs,batch_size,data_multiplier,gpus,paper,accelerator,accuracy,n,positives,wall_s,n_train
0,ok,,,5,128,1,2,6.2,cpu,0.95,1000,50,15.5,13500
1,ok,,,5,256,1,2,6.2,cpu,0.96,1000,50,9.5,13500
2,failed,RuntimeError: boom,,5,512,1,2,6.2,cpu,,,,,
"""
    sweep = write_csv_sweep(tmp_path, text)
    paths = report.build_report(sweep, rows="epochs", cols="batch_size", group="none", value="accuracy")
    md = paths["table.md"].read_text()
    assert "0.95 · paper 0.8796 |" in md
    assert ('A constant "no" forecast (never a tornado) scores 0.95 accuracy on these cases (1 − their base rate): '
            "a cell no higher shows no skill.") in md
    assert "Our jobs ran on CPUs; the paper's figures are from GPUs." in md
    assert "wall-time ratio" not in md
    assert "Not in these tables: job 2 (epochs=5, batch_size=512) failed." in md
    tex = paths["table.tex"].read_text()
    assert "Table 8 (test accuracy \\%, 2 V100s)" in tex and "Our jobs ran on CPUs" in tex
    assert "A constant \"no\" forecast" in tex and "1 - their base rate" in tex
    assert {r["paper_table"] for r in csv.DictReader(paths["table.csv"].open())} == {"table8"}
    md = report.build_report(sweep, rows="epochs", cols="batch_size", group="none")["table.md"].read_text()
    assert "15.5 · paper 31 · 0.5×" in md and "A constant" not in md
    assert ("Our training set: 13,500 samples; the paper's: 138,963. A wall-time ratio compares unequal work "
            "unless they match. Per training sample, ours/paper is 10.3 times the ratio shown; costs that do not "
            "grow with the data (the first epoch's warm-up, each epoch's start) weigh more per sample on a smaller "
            "set, so that figure overstates ours.") in md
    page = paths["report.html"].read_text()
    assert "Cell shading grows with wall_s within each table (darker: larger, so slower)." in page


def test_a_sweep_s_counts_are_worded_for_one_job_and_a_run_without_validation_has_no_such_column(tmp_path, capsys):
    sweep = tmp_path / "one"
    hp = {"epochs": 2, "batch_size": 128, "lr": 0.001, "data_multiplier": 1, "gpus": 0, "seed": 0}
    result_json(sweep / "0", hp, metrics={"roc_auc": 0.8, "accuracy": 0.95, "n": 1000, "positives": 50},
                history=[(0.9, 1.0), (0.95, 1.0)])
    page = report.build_report(sweep)["report.html"].read_text()
    assert "<span>1 job</span>" in page
    from tornado.runpage import text
    out = text(json.loads((sweep / "0" / "result.json").read_text()))
    assert "validation" not in out and out.splitlines()[1].strip() == "test"
    assert any(line.startswith("ROC AUC") and line.split()[-1] == "0.8" for line in out.splitlines())


def _figures(monkeypatch) -> list:
    """The matplotlib figures plots renders from now on, in order."""
    figures, render = [], plots._render
    monkeypatch.setattr(plots, "_render", lambda fig: (figures.append(fig), render(fig))[1])
    return figures


def test_reliability_lines_look_different_and_the_histogram_has_the_points_bins(monkeypatch):
    from matplotlib.colors import rgb_to_hsv, to_rgb

    figures = _figures(monkeypatch)
    rng = np.random.default_rng(1)
    prob = rng.beta(0.6, 6, 3000)
    label = (rng.random(3000) < prob).astype(np.uint8)
    plots.plot_verification(prob, label, "job 1", 0.3, climatology=label.mean() + 0.004)
    ax, hist = figures[1].axes[:2]  # ROC, reliability, performance: in that order
    line = {ln.get_label().split(" 0.")[0]: ln for ln in ax.get_lines()}
    clim, rate = line["climatology"], line["test-set base rate"]
    assert clim.get_linestyle() != rate.get_linestyle()
    hue = [rgb_to_hsv(to_rgb(ln.get_color()))[0] for ln in (clim, rate)]
    assert min(abs(hue[0] - hue[1]), 1 - abs(hue[0] - hue[1])) > 0.2  # not two shades of one colour
    # the histogram's bars are the bins of the points: 10 of width 0.1, each with its bin's forecasts
    bars = hist.patches
    assert [round(b.get_x(), 6) for b in bars] == [i / 10 for i in range(10)]
    assert {round(b.get_width(), 6) for b in bars} == {0.1}
    assert [b.get_height() for b in bars] == np.bincount(np.minimum((prob * 10).astype(int), 9), minlength=10).tolist()
    assert sum(b.get_height() > 0 for b in bars) == len(plots.reliability_points(prob, label)[0])


def test_the_forecast_histogram_s_tick_labels_do_not_overlap(monkeypatch):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figures = _figures(monkeypatch)
    # 570 and 30 forecasts in two bins: a log axis spanning little over a decade (it used to label its minor ticks)
    few = np.r_[np.full(570, 0.05), np.full(30, 0.15)]
    many = np.random.default_rng(0).beta(0.3, 6, 40_000)
    for prob in (few, many, np.full(10 ** 6, 0.05)):
        plots.plot_verification(prob, (np.arange(len(prob)) % 20 == 0).astype(np.uint8), "job 1")
        hist = figures[-2].axes[1]
        renderer = FigureCanvasAgg(figures[-2]).get_renderer()
        figures[-2].draw(renderer)
        low, high = hist.get_ylim()
        shown = [t for t in hist.yaxis.get_majorticklabels() + hist.yaxis.get_minorticklabels()
                 if t.get_visible() and t.get_text() and low <= t.get_position()[1] <= high]
        assert shown
        boxes = sorted((t.get_window_extent(renderer) for t in shown), key=lambda b: b.y0)
        assert all(a.y1 <= b.y0 for a, b in zip(boxes, boxes[1:])), [t.get_text() for t in shown]


def test_the_reliability_legend_covers_nothing_drawn(monkeypatch):
    """A rare event's climatology and base-rate lines run along the bottom edge: the legend sits below both panels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figures = _figures(monkeypatch)
    rng = np.random.default_rng(1)
    prob = rng.beta(0.6, 6, 3000)
    plots.plot_verification(prob, (rng.random(3000) < prob).astype(np.uint8), "job 1", climatology=0.05)
    fig = figures[1]
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1
    legend = fig.legends[0].get_window_extent(renderer)
    assert {"climatology 0.050", "adds skill"} <= {t.get_text() for t in fig.legends[0].get_texts()}
    assert all(legend.y1 <= ax.get_tightbbox(renderer).y0 for ax in fig.axes)


def test_training_curves_say_how_many_jobs_each_averages():
    flat = pd.DataFrame({"train_acc": [0.90, 0.95]})
    histories = {"0": flat, "2": flat, "3": flat}
    # batch 64's multiplier-2 job failed: its curve is one job, batch 128's the mean of two
    ok = pd.DataFrame({"job": [0, 2, 3], "batch_size": [64, 128, 128], "data_multiplier": [1, 1, 2], "gpus": 0})
    fig = plots.curve_figures(ok, histories, "batch_size")["train_acc_by_batch"]
    assert [label for label, _, _ in fig[1][0][1]] == ["batch 64 (1 job)", "batch 128 (mean of 2 jobs)"]
    assert fig[2].endswith("differ only in: data_multiplier (the legend says how many).")
    # only the longest runs are averaged: job 3 stopped an epoch early
    short = {**histories, "3": flat.iloc[:1]}
    fig = plots.curve_figures(ok, short, "batch_size")["train_acc_by_batch"]
    assert [label for label, _, _ in fig[1][0][1]] == ["batch 64 (1 job)", "batch 128 (1 job)"]
    # one job a curve, nothing else varying: no count to give
    fig = plots.curve_figures(ok.iloc[:2], histories, "batch_size")["train_acc_by_batch"]
    assert [label for label, _, _ in fig[1][0][1]] == ["batch 64", "batch 128"]


def test_wall_time_tick_labels_are_one_size_and_slant_only_when_crowded(monkeypatch):
    figures = _figures(monkeypatch)
    few = [32, 64, 128, 256]
    many = [2 ** k for k in range(4, 15)]
    for sizes in (few, many):
        ok = pd.DataFrame({"job": range(2 * len(sizes)), "batch_size": sizes * 2, "epochs": [1] * len(sizes) +
                           [2] * len(sizes), "wall_s": np.linspace(10, 1, 2 * len(sizes))})
        plots.plot_wall_vs_batch(ok, None)
    for fig, slanted in zip(figures, (False, True)):
        for ax in fig.axes:
            x, y = ax.get_xticklabels(), ax.get_yticklabels()
            assert {t.get_fontsize() for t in x} == {t.get_fontsize() for t in y} == {y[0].get_fontsize()}
            assert {t.get_rotation() for t in x} == {45.0 if slanted else 0.0}


def test_the_printed_paths_are_under_the_working_directory_as_given(tmp_path, capsys, monkeypatch):
    sweep = gpu_batch_sweep(tmp_path)
    monkeypatch.chdir(tmp_path)
    report.main([sweep.name])
    out = capsys.readouterr().out
    assert f"jobs' own pages, linked from the report's Jobs table: {sweep.name}/3/report.html and 2 more\n" in out
    assert out.endswith(f"report: {sweep.name}/report.html\n")


def test_a_job_run_again_by_hand_with_the_same_status_is_read_from_its_newer_result_json(tmp_path):
    sweep = gpu_batch_sweep(tmp_path, failed=False)  # results.csv: every job ok
    past = (sweep / "results.csv").stat().st_mtime - 5
    os.utime(sweep / "results.csv", (past, past))
    r = json.loads((sweep / "0" / "result.json").read_text())
    r["metrics"]["roc_auc"] = 0.99  # still ok, other scores (hydra.run.dir=SWEEP/0 writes no results.csv)
    (sweep / "0" / "result.json").write_text(json.dumps(r))
    loaded = report.load_sweep(sweep)
    assert loaded.df.set_index("job").loc["0", "roc_auc"] == 0.99
    assert any("rebuilt" in n for n in loaded.notes)


def test_jobs_queued_in_slurm_still_wait_when_the_launcher_has_let_go_of_the_sweep(tmp_path):
    sweep = gpu_batch_sweep(tmp_path, failed=False)
    jobs = [{"num": i, "dir": str(i), "status": "pending"} for i in range(6)]  # 4 and 5 queued, not started
    (sweep / "launcher.json").write_text(json.dumps({"launcher": "slurm", "state": "running", "jobs": jobs}))
    loaded = report.load_sweep(sweep)  # no sweep lock held: the cluster runs the jobs without the launcher
    assert loaded.partial and loaded.waiting == ["4", "5"]
    assert not any("cut short" in n for n in loaded.notes)


@pytest.mark.parametrize("positive", [0, 1])
def test_no_paired_test_against_a_best_job_whose_test_cases_are_all_of_one_class(positive):
    label = np.full(50, positive)
    prob = np.linspace(0.0, 1.0, 50)
    forecasts = {"a": (prob, label), "b": (prob[::-1], label), "c": (prob ** 2, label)}
    assert report.paired_p_values(forecasts, ["a", "b", "c"]) == {}


def test_the_fastest_configuration_within_reach_of_the_best_is_named_by_its_fastest_repeat():
    ok = pd.DataFrame({"job": ["0", "1", "2", "3"], "batch_size": [128, 128, 256, 256], "seed": [0, 1, 0, 1],
                       "val_roc_auc": [0.82, 0.82, 0.70, 0.70], "wall_s": [12.0, 9.0, 5.0, 6.0]})
    tts = report.time_to_skill(ok, "val_roc_auc")
    assert (tts["job"], tts["jobs"], tts["n"], tts["wall_s"]) == ("1", ["1", "0"], 2, 10.5)
    assert tts["config"] == {"batch_size": 128}


def test_a_run_page_reads_a_validation_split_of_no_cases_as_having_no_base_rate():
    from tornado import runpage

    m = {"accuracy": 0.95, "n": 1000, "positives": 50, "val_n": 0, "val_positives": 0}
    assert runpage.base_rate(m, "") == 0.05 and runpage.base_rate(m, "val_") is None
    assert runpage.score_rows(m)[0][3].endswith("never forecasting a tornado scores 0.95 on test")


def test_a_finished_run_is_not_said_to_have_stopped():
    from tornado import runpage

    r = {"status": "ok", "hparams": {"epochs": 3}, "history": [{"epoch": i} for i in range(2)],
         "metrics": {"accuracy": 0.9}}
    assert runpage.progress(r) == "" and "stopped" not in runpage.text(r)
    assert runpage.progress(r | {"status": "failed"}) == "stopped after 2 of 3 epochs"


@pytest.mark.parametrize("inclusive, sign", [(True, "≥"), (False, ">")])
def test_a_run_page_shows_whether_the_label_threshold_counts_as_a_tornado(inclusive, sign):
    from tornado.runpage import facts

    hp = {"data.label.reduce": "mean", "data.label.threshold": 0.008, "data.label.inclusive": inclusive}
    assert dict(facts({"hparams": hp}))["label"] == f"mean of RVORT1_MAX_future {sign} 0.008 s⁻¹"


def test_a_figure_of_panels_side_by_side_scrolls_on_a_narrow_screen(tmp_path):
    """At a phone's width a three-panel figure shrunk to the screen has 3-pixel labels: it keeps a readable width
    and scrolls sideways instead (and prints at the page's width)."""
    sweep = gpu_batch_sweep(tmp_path, failed=False)
    page = report.build_report(sweep, rows="batch_size", cols="gpus")["report.html"].read_text()
    figures = re.findall(r'<figure( class="panels")?><img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', page)
    widths = {name: int.from_bytes(base64.b64decode(data)[16:20], "big") for _, name, data in figures}
    panels = {name for cls, name, _ in figures if cls}
    assert panels and panels == {name for name, w in widths.items() if w > 800}, widths
    assert widths.keys() - panels  # one-panel figures fit the screen as ever
    assert "figure.panels{overflow-x:auto}figure.panels img{min-width:900px}" in page
    assert "figure.panels img{min-width:0}" in page.split("@media print")[1]
