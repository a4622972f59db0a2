"""Every job's result.json in a sweep folder -> SWEEP_DIR/results.csv (python -m tornado.collect SWEEP_DIR)."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from tornado.cli import counted
from tornado.errors import TornadoError, is_number, run_cli
from tornado.records import SWEEP_LOCK, best_epoch, flatten, held_by, load_result, locked, write_atomic

_EXTRA = ("config_hash", "started", "finished", "host")


def _job_key(name: str) -> tuple:
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def result_files(sweep_dir: str | os.PathLike) -> list[Path]:
    """The result.json of every job folder directly under the sweep folder, in job order."""
    sweep = Path(sweep_dir)
    if not sweep.is_dir():
        raise TornadoError(f"sweep folder {sweep}: {'not a folder' if sweep.exists() else 'no such folder'}")
    files = [p for p in sweep.glob("*/result.json") if not p.parent.name.startswith(".")]
    if not files:
        raise TornadoError(f"sweep folder {sweep}: no */result.json in it (is it a sweep folder?)")
    return sorted(files, key=lambda p: _job_key(p.parent.name))


def section(res: dict, key: str) -> dict:
    """A dict-valued part of a result.json; anything else there (a hand-edited or foreign file) counts as empty."""
    value = res.get(key)
    return value if isinstance(value, dict) else {}


def result_row(job: str, res: dict) -> dict[str, Any]:
    """One results.csv row: identity, then hparams, metrics, times and throughput (design.md)."""
    row: dict[str, Any] = {"job": job, "status": res.get("status"), "error": res.get("error"),
                           "output_dir": res.get("output_dir")}
    row.update(flatten(section(res, "hparams")))
    row.update(section(res, "metrics"))
    row.update({k: v for k, v in section(res, "times").items() if k != "epoch_s"})
    batch, devices, data = section(res, "batch"), section(res, "devices"), section(res, "data")
    row.update(samples_per_s=res.get("samples_per_s"), batch_global=batch.get("global"),
               batch_per_device=batch.get("per_device"), devices=devices.get("count"),
               accelerator=devices.get("accelerator"), n_train=data.get("n_train"),
               samples_per_epoch=data.get("samples_per_epoch"))
    history = res.get("history")
    row["epochs_trained"] = len(history) if isinstance(history, list) else None  # fewer than epochs: patience
    row["slowest_epoch_ratio"] = slowest_epoch_ratio(section(res, "times").get("epoch_s"))
    row["val_best_epoch"] = best_epoch(history)
    row.update({k: res.get(k) for k in _EXTRA})
    return row


def slowest_epoch_ratio(epoch_s) -> float | None:
    """The slowest epoch's time over the median epoch's, the first epoch (warm-up, compilation) left out; None
    with fewer than two epochs after it. Far above 1, something else took the machine for a while."""
    times = [float(t) for t in epoch_s[1:] if is_number(t)] if isinstance(epoch_s, list) else []
    if len(times) < 2 or statistics.median(times) <= 0:
        return None
    return max(times) / statistics.median(times)


def _read(path: Path) -> dict:
    try:
        return load_result(path)
    except ValueError as e:
        error = str(e)
    except OSError as e:  # gone since the folder was listed
        error = f"result.json unreadable: {path}: {e.strerror or e}"
    return {"status": "unreadable", "error": error, "output_dir": str(path.parent)}


def _ordered_columns(rows: Iterable[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for r in rows:
        seen.update(dict.fromkeys(r))
    return list(seen)


def _counts(rows: list[dict], df: pd.DataFrame) -> list[str]:
    """Float columns (pandas' type for integers with gaps) whose values are all integers in the result files."""
    def whole(c: str) -> bool:
        values = [r[c] for r in rows if r.get(c) is not None]
        return bool(values) and all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    return [c for c in df.columns if df[c].dtype.kind == "f" and whole(c)]


def collect(sweep_dir: str | os.PathLike) -> pd.DataFrame:
    """Gather the sweep's result.json files into SWEEP_DIR/results.csv (atomic, under a lock) and return them."""
    sweep = Path(sweep_dir)
    files = result_files(sweep)
    with locked(sweep / ".collect.lock"):
        # Read under the lock, so the last writer always saw every finished job.
        # output_dir: where the job's folder is now (a sweep copied or moved keeps the folder it ran in in its
        # result.json files)
        rows = [result_row(p.parent.name, _read(p)) | {"output_dir": str(p.parent.resolve())} for p in files]
        df = pd.DataFrame(rows, columns=_ordered_columns(rows))
        whole = df.astype(dict.fromkeys(_counts(rows, df), "Int64"))  # 5000, not 5000.0, beside a failed job's gap
        write_atomic(sweep / "results.csv", whole.to_csv(index=False))
    return df


def _launch_record(sweep: Path) -> dict | None:
    try:
        return json.loads((sweep / "launcher.json").read_text())
    except (OSError, ValueError):
        return None


def sweep_efficiency(sweep_dir: str | os.PathLike, slots: int | None = None) -> dict[str, Any]:
    """How well a sweep kept its slots busy with training: sum of fit times / (sweep wall time x slots).

    Uses the jobs that ran in the last launch (launcher.json) and their result.json `times.wall_s`.
    `occupancy` is the same ratio with each job's whole process time: the gap between the two is
    per-job start-up (imports, data loading, test), the gap between occupancy and 1 is the scheduler's.
    `unreadable`: the errors, naming the files, of result.json files that could not be read (0 s training each).
    """
    sweep = Path(sweep_dir)
    record = _launch_record(sweep)
    pid = None
    if isinstance(record, dict) and record.get("state") == "running" and (pid := held_by(sweep / SWEEP_LOCK)) is None:
        record = _launch_record(sweep)  # a launcher that ended since wrote its last record before letting go
    if record is None:
        raise TornadoError(f"sweep folder {sweep}: no launcher.json (was it run by the local launcher?)")
    where = sweep / "launcher.json"
    jobs = record.get("jobs") if isinstance(record, dict) else None
    if not isinstance(jobs, list):
        raise TornadoError(f"{where}: no 'jobs' list (not written by the local launcher, or cut short)")
    ran = [j for j in jobs if isinstance(j, dict) and j.get("start") is not None and j.get("end") is not None]
    if record.get("launcher") == "slurm":
        raise TornadoError(f"sweep folder {sweep}: --efficiency measures the local launcher's slots; a SLURM "
                           "sweep's jobs wait in the cluster's queue (see each job's result.json times)")
    if record.get("state") == "running":
        if pid is not None:
            raise TornadoError(f"{where}: the sweep is still running{f' (launcher pid {pid})' if pid else ''}; "
                               "--efficiency needs a finished launch")
        # The launcher is gone (killed, or lost with its login) and recorded only the plan: no job's start or end.
        raise TornadoError(f"{where}: the launch was cut short (its launcher ended without recording its jobs' "
                           "times); --efficiency needs a finished launch: run the sweep's command again to finish it")
    if not ran:
        raise TornadoError(f"sweep folder {sweep}: the last launch ran no jobs (all done before it? launcher.json "
                           "records the last launch only)")
    slots = slots or record.get("slots")
    if not isinstance(slots, int) or slots < 1:
        raise TornadoError(f"{where}: 'slots' is {slots!r}, expected a positive integer")
    wall = record.get("wall_s")
    fit, unreadable = 0.0, []
    for j in ran:
        res = _read(sweep / str(j.get("dir", "")) / "result.json")
        fit += float(section(res, "times").get("wall_s") or 0.0)
        if res.get("status") == "unreadable":  # its training time counts as 0
            unreadable.append(str(res.get("error")))
    process = sum(j["end"] - j["start"] for j in ran)
    # A launch that recorded no positive wall time (cut short, or too quick to time) has no ratio: n/a (null).
    timed = isinstance(wall, (int, float)) and not isinstance(wall, bool) and wall > 0
    return {"jobs": len(ran), "ok": sum(j.get("status") == "ok" for j in ran), "slots": slots,
            "schedule": record.get("schedule"), "sweep_wall_s": wall, "sum_fit_s": fit, "sum_process_s": process,
            "efficiency": fit / (wall * slots) if timed else None,
            "occupancy": process / (wall * slots) if timed else None, "unreadable": unreadable}


def efficiency_text(eff: dict[str, Any]) -> list[str]:
    """`sweep_efficiency`'s figures as lines for people: seconds to 0.1, ratios to 0.01, n/a where not timed."""
    def ratio(x: float | None, of: str) -> str:
        return f"{x:.2f} ({of} / (launch × slots))" if x is not None else "n/a (the launch recorded no wall time)"
    wall = eff["sweep_wall_s"]
    schedule = f", {eff['schedule']} schedule" if eff.get("schedule") else ""
    return [f"  jobs           {eff['jobs']} ({eff['ok']} ok){schedule}, {counted(eff['slots'], 'slot')}",
            f"  launch         {f'{wall:.1f} s' if is_number(wall) else 'n/a'}",
            f"  training       {eff['sum_fit_s']:.1f} s (the jobs' wall_s in results.csv, summed)",
            f"  job processes  {eff['sum_process_s']:.1f} s (start-up and test included, summed)",
            f"  efficiency     {ratio(eff['efficiency'], 'training')}",
            f"  occupancy      {ratio(eff['occupancy'], 'job processes')}",
            *(f"  training counted as 0 s: {e}" for e in eff["unreadable"])]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tornado.collect", description=__doc__)
    ap.add_argument("sweep_dir", help="a sweep folder (hydra.sweep.dir): job folders holding result.json")
    ap.add_argument("--efficiency", action="store_true", help="also print how busy the last launch kept its slots")
    ap.add_argument("--json", action="store_true", help="--efficiency, its figures as one JSON object on stdout, "
                    "exact (the rest goes to stderr)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    def work() -> None:
        try:
            df = collect(args.sweep_dir)
        except PermissionError as e:  # someone else's sweep; the report reads it without writing there
            raise TornadoError(f"{args.sweep_dir}: cannot write results.csv there ({e.strerror}); python -m "
                               f"tornado.report {args.sweep_dir} out=DIR reports it without writing there") from None
        c = df["status"].value_counts().to_dict()
        print(f"wrote {Path(args.sweep_dir) / 'results.csv'}: {counted(len(df), 'job')} "
              f"({', '.join(f'{n} {s}' for s, n in sorted(c.items()))})", file=sys.stderr if args.json else sys.stdout)
        if args.efficiency or args.json:
            eff = sweep_efficiency(args.sweep_dir)
            if args.json:
                print(json.dumps(eff, indent=2))
                return
            print(f"the last launch ({counted(eff['jobs'], 'job')} that ran then, of the sweep's "
                  f"{counted(len(df), 'job')}):")
            print("\n".join(efficiency_text(eff)))

    run_cli(work)


if __name__ == "__main__":
    main()
