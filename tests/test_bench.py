"""The benchmark's machinery on a tiny set: what it writes, not how fast anything is."""
from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tornado import bench

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench_data")


def run_bench(tmp_path: Path, data_dir: Path, *args: str) -> dict:
    out = tmp_path / "bench"
    bench.main(["--smoke", "--gpus", "0", "--threads", "1", "--out", str(out), "--set", f"data.out_dir={data_dir}",
                *args])
    result = json.loads((out / "bench.json").read_text())
    assert (out / "bench.md").read_text().startswith("# Benchmark (smoke)")
    assert not (out / ".runs").exists()
    return result


def test_smoke_writes_loop_and_live_figures(tmp_path, data_dir):
    r = run_bench(tmp_path, data_dir)
    assert r["mode"] == "smoke" and r["partial"] is False and "errors" not in r
    assert set(r["loop"]) == set(r["samples_per_s"]) == set(r["live"]) == {"64", "256"}
    for b, row in r["loop"].items():
        assert len(row["ours_samples_per_s"]) == len(row["raw_samples_per_s"]) == 1
        assert row["ours_median"] > 0 and row["raw_median"] > 0
        assert row["ratio"] == pytest.approx(row["ours_median"] / row["raw_median"])
        assert r["samples_per_s"][b] == row["ours_median"]
    assert r["loop_ratio"] == min(row["ratio"] for row in r["loop"].values())
    assert r["live_over_preaug"] == max(row["ratio"] for row in r["live"].values()) > 0
    assert r["data"]["n_train"] > 0 and r["machine"]["device"] == "cpu" and r["machine"]["torch_threads"] == 1
    goals = {g["goal"].split(" ")[0]: g for g in r["goals"]}
    assert goals["loop_ratio"]["met"] == (r["loop_ratio"] >= 0.95)
    assert goals["live_over_preaug"]["met"] == (r["live_over_preaug"] <= 1.2)
    assert len(r["load_before"]) == len(r["load_after"]) == 3


def test_paper_grid_and_switches(tmp_path, data_dir):
    r = run_bench(tmp_path, data_dir, "--sections", "switches,paper,switches", "--epochs", "1,5",
                  "--multipliers", "1,2", "--batches", "256", "--switches", "storage,cuda_graph")
    assert r["settings"]["sections"] == ["switches", "paper"]  # in the order given, once each
    assert list(r).index("switches") < list(r).index("paper")
    assert [s["switch"] for s in r["switches"]] == ["storage", "cuda_graph"]
    rows = r["paper"]
    assert {(x["augmentation"], x["data_multiplier"], x["epochs"]) for x in rows} == {
        (a, m, e) for a in ("preaugmented", "live") for m in (1, 2) for e in (1, 5)}
    with open(ROOT / "tornado" / "paper" / "wall_time_batch_vs_multiplier.csv") as f:
        paper = {(p["table"], p["augmentation"], int(p["epochs"]), int(p["batch_size"]), int(p["data_multiplier"])):
                 float(p["wall_s"]) for p in csv.DictReader(f)}
    for x in rows:
        assert x["ours_s"] > 0
        key = (x["table"], x["augmentation"], x["epochs"], x["batch_size"], x["data_multiplier"])
        if x["epochs"] == 5:  # CPU: the paper's Tables 2 (preaugmented) and 4 (live)
            assert x["table"] == {"preaugmented": "table2", "live": "table4"}[x["augmentation"]]
            assert x["paper_s"] == paper[key]
            assert x["paper_over_ours"] == pytest.approx(x["paper_s"] / x["ours_s"])
        else:
            assert x["table"] is None and x["paper_s"] is None
    for aug in ("preaugmented", "live"):
        for m in (1, 2):
            one, five = (next(x for x in rows if (x["augmentation"], x["data_multiplier"], x["epochs"]) == (aug, m, e))
                         for e in (1, 5))
            assert five["ours_s"] > one["ours_s"]  # one fit, timed at the end of epochs 1 and 5
            assert five["samples_per_epoch"] == m * r["data"]["n_train"] or aug == "live"
    switches = {s["switch"]: s for s in r["switches"]}
    assert switches["cuda_graph"]["note"] == "needs a GPU"
    st = switches["storage"]
    assert (st["default"], st["flipped"]) == ("float32", "float16")
    assert st["flipped_over_default"] == pytest.approx(st["flipped_samples_per_s"] / st["default_samples_per_s"])


def test_tile_repeats_each_block():
    x = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 3, 32, 32)  # 2 blocks (originals, copy 1) of 4 rows
    dm = SimpleNamespace(x=x, y=torch.arange(8.0), meta={"n_train": 4})
    bench.tile(dm, 10)
    want = [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    assert dm.y.tolist() == want + [4 + i for i in want]
    assert torch.equal(dm.x[:, 0, 0, 0], dm.y)
    assert dm.meta == {"n_train": 10, "tiled_from": 4}


@pytest.mark.parametrize("args, message", [
    (["--batches", "0"], "error: bench: --batches=0: expected positive integers"),
    (["--sections", "loop,nap"], "error: bench: --sections=loop,nap: use a comma list of"),
    (["--frobnicate"], "error: bench: unrecognized arguments: --frobnicate"),
    (["--smoke", "--out", "README.md/bench"], "error: bench: --out=README.md/bench: README.md is a file, not a folder"),
])
def test_cli_bad_argument_one_line_exit_2(args, message):
    p = subprocess.run([sys.executable, "-m", "tornado.bench", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1].startswith(message), p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                    reason="the Keras peer is optional: pip install '.[peer]' (tensorflow-cpu)")
def test_peer_keras_section(tmp_path, data_dir):
    r = run_bench(tmp_path, data_dir, "--peer", "keras", "--sections", "peer", "--batches", "64")
    p = r["peer"]
    assert set(p["runs"]) == {"preaugmented/64", "live/64"}
    for row in p["runs"].values():
        assert row["keras_median"] > 0 and row["ours_median"] > 0
        assert row["peer_ratio"] == pytest.approx(row["ours_median"] / row["keras_median"])
    assert p["keras"] and p["tensorflow"] and "ImageDataGenerator" in p["keras_live"]


def _summary_cli(*paths) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tornado.bench", "--summary", *map(str, paths)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_summary_of_missing_files_is_one_error_line_exit_2(tmp_path):
    p = _summary_cli(tmp_path / "nonexistent.json")
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip() == (f"error: bench: --summary: nothing readable: {tmp_path / 'nonexistent.json'} "
                                "(No such file or directory)")
    (tmp_path / "list.json").write_text("[]")
    p = _summary_cli(tmp_path / "list.json", tmp_path / "nope.json")
    assert p.returncode == 2 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert "list.json (not a tornado result.json or bench.json)" in p.stderr and "nope.json" in p.stderr
    p = _summary_cli()
    assert p.returncode == 2 and p.stderr.startswith("error: bench: --summary: name one or more")


def test_summary_prints_the_readable_files_and_names_the_missing_ones(tmp_path):
    """The device check passes files of stages that may have timed out: the rest still print, exit 0."""
    train = tmp_path / "train" / "result.json"
    train.parent.mkdir()
    train.write_text(json.dumps({"status": "ok", "times": {"wall_s": 3.5}, "metrics": {"roc_auc": 0.8125}}))
    missing = tmp_path / "bench" / "bench.json"
    p = _summary_cli(train, missing)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("train: ok") and "0.812" in p.stdout and "bench.json" not in p.stdout
    assert p.stderr.strip() == ("warning: bench: --summary: left out, not readable: "
                                f"{missing} (No such file or directory)")
