"""Tornado probability per storm patch from a trained checkpoint.

    python -m tornado.predict checkpoint=RUN/checkpoints/last.ckpt input=DIR_OR_GLOB [output=predictions.csv]

(`checkpoint=RUN`, the run's folder, takes the model its test scores are of: checkpoints/best.ckpt where
`patience` kept the best epoch's weights, else checkpoints/last.ckpt. `checkpoint=SWEEP_DIR` takes the run of
the sweep's job with the highest validation ROC AUC. `output=-` writes the rows to standard output, and the lines
about them to standard error; `output=./-` is a file named `-`.)

Inputs are standardised with the scaler stored in the checkpoint (fitted on the training split). A model
trained with balance copies or a pos_weight has its probabilities moved back to the training originals'
base rate, as in training's own scores. Each patch's storm centre (`centroid_lon`, `centroid_lat`) comes
along where the file has it. A yes/no forecast (`tornado`, 0 or 1) is made at `threshold`: `auto` takes the
one the run chose on its validation split (`metrics.threshold` in RUN/result.json, beside the checkpoint's
folder), a number sets one, `none` leaves the column out.
Files that hold RVORT1_MAX_future also get the observed label, under the label rule the run trained on
(stored in the checkpoint; `label_reduce=`, `label_threshold=`, `label_inclusive=` change it).
Every patch gets its row: one missing an input value (NaN, inf or a fill value) has no probability or yes/no,
one whose label field misses a value no label.
"""
from __future__ import annotations

import functools
import io
import json
import logging
import math
import pickle
import sys
from pathlib import Path

import netCDF4
import numpy as np
import pandas as pd
import torch

from tornado.cli import convert, counted, folder_fault, parse_kv
from tornado.data import LabelRule, find_files, read_file
from tornado.datamodule import standardise
from tornado.errors import TornadoError, is_int, run_cli
from tornado.model import StormModule
from tornado.records import read_result, write_atomic

log = logging.getLogger(__name__)

DEFAULTS = {"checkpoint": "", "input": "", "output": "predictions.csv", "batch": 8192, "threshold": "auto",
            "label_reduce": None, "label_threshold": None, "label_inclusive": None}  # None: the run's rule
CENTRES = ("centroid_lon", "centroid_lat")  # per patch, where the file has them
CHANNELS = 3  # input channels of every tornado model: one scaler entry each


def best_run(sweep_dir: str | Path) -> tuple[Path, str, float]:
    """(run folder, job, validation ROC AUC) of a sweep's successful job with the highest validation ROC AUC:
    chosen on validation, never on the test set (a sweep without validation scores is refused)."""
    from tornado.report import jobs_table, load_sweep
    from tornado.tables import numeric_column

    sweep = load_sweep(sweep_dir)
    ok = sweep.ok.loc[numeric_column(sweep.ok, "val_roc_auc").notna()] if len(sweep.ok) else sweep.ok
    if ok.empty:
        raise TornadoError(f"checkpoint={sweep_dir}: a sweep with no successful job scored on a validation split "
                           "to choose by; give one job's folder")
    first = jobs_table(ok, "val_roc_auc").iloc[0]
    return sweep.job_dir(str(first["job"])), str(first["job"]), float(first["val_roc_auc"])


def checkpoint_file(checkpoint: str | Path) -> Path:
    """The checkpoint file: as given, or for a run's folder the model its test scores are of: best.ckpt (a run
    with `patience`: the best epoch's weights) or else last.ckpt, in RUN/checkpoints/; for a sweep's folder,
    that of its best run (`best_run`)."""
    path = Path(checkpoint)
    if _is_sweep(path):
        path = best_run(path)[0]
    if path.is_dir():
        best = path / "checkpoints" / "best.ckpt"
        path = best if best.is_file() else path / "checkpoints" / "last.ckpt"
        if not path.is_file():
            run = read_result(path.parent.parent)
            if not run or "status" not in run:
                raise TornadoError(f"checkpoint={checkpoint}: a folder without checkpoints/last.ckpt (not a run folder "
                                   "or a sweep)")
            said = {"failed": f"the run failed before any epoch was saved ({run.get('error')})",
                    "running": "the run has not saved an epoch yet (result.json says running)"}
            raise TornadoError(f"checkpoint={checkpoint}: no checkpoints/last.ckpt: "
                               + said.get(str(run.get("status")), "it was removed"))
    elif not path.is_file():
        raise TornadoError(f"checkpoint={checkpoint}: no such file")
    return path


def _unfinished(checkpoint: str) -> str | None:
    """A note where the checkpoint is of a run that has not finished (failed, stopped or still training)."""
    run = read_result(checkpoint_file(checkpoint).resolve().parent.parent)
    status = run.get("status") if run else None
    if status in (None, "ok"):
        return None
    return (f"note: checkpoint={checkpoint}: its run has not finished (result.json says {status}): the model is "
            "the one it saved so far")


def _is_sweep(path: Path) -> bool:
    """A sweep's folder (its jobs' folders below it), not a run's (checkpoints/ in it)."""
    return path.is_dir() and not (path / "checkpoints").is_dir() and (
        (path / "results.csv").is_file() or any(path.glob("*/result.json")))


def load_model(checkpoint: str | Path) -> StormModule:
    path = checkpoint_file(checkpoint)
    try:
        module = StormModule.load_from_checkpoint(str(path), map_location="cpu", compile=False, cuda_graph=False)
    except pickle.UnpicklingError:  # torch's own text here is a page about weights_only
        raise TornadoError(f"checkpoint={checkpoint}: not a tornado checkpoint (not a PyTorch checkpoint file)") \
            from None
    except Exception as e:
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
        raise TornadoError(f"checkpoint={checkpoint}: not a tornado checkpoint ({type(e).__name__}: {first})") from None
    hp = module.hparams
    if hp.get("scaler_mean") is None or hp.get("scaler_std") is None:
        raise TornadoError(f"checkpoint={checkpoint}: holds no scaler")
    for key in ("scaler_mean", "scaler_std"):
        value = hp[key]
        if not isinstance(value, (list, tuple)) or len(value) != CHANNELS:
            n = f"{len(value)} entries" if isinstance(value, (list, tuple)) else type(value).__name__
            raise TornadoError(f"checkpoint={checkpoint}: hparams {key} has {n}, expected {CHANNELS} (one per channel)")
    return module.eval()


def _check_batch(batch) -> int:
    if not is_int(batch) or batch < 1:
        raise TornadoError(f"batch={batch}: expected a positive integer")
    return batch


def run_threshold(checkpoint, threshold="auto") -> float | None:
    """The yes/no threshold: a number as given; `auto`: the run's own, chosen on its validation split
    (RUN/result.json for RUN/checkpoints/last.ckpt; None where it has none); `none`: None."""
    if threshold in (None, "none"):
        return None
    if threshold != "auto":
        try:
            value = float(threshold)
        except (TypeError, ValueError):
            value = math.nan
        if not 0 <= value <= 1:
            raise TornadoError(f"threshold={threshold}: expected auto, none or a probability in [0, 1]")
        return value
    try:
        run = json.loads((checkpoint_file(checkpoint).resolve().parent.parent / "result.json").read_text())
        value = run["metrics"]["threshold"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _centres(path: Path, index: np.ndarray) -> dict[str, np.ndarray]:
    with netCDF4.Dataset(path, "r") as ds:
        return {k: np.asarray(ds.variables[k][:], dtype=np.float64)[index] for k in CENTRES if k in ds.variables}


def label_rule(module: StormModule, given: dict | None = None) -> LabelRule:
    """The rule the model's targets were made by (the default rule for checkpoints that do not say), with
    `given` (reduce, threshold, inclusive; strings as typed) over it."""
    rule = dict(module.hparams.get("label") or {})
    kinds = {"reduce": "", "threshold": 0.0, "inclusive": False}
    rule |= {k: convert(f"label_{k}", str(v), kinds[k]) for k, v in (given or {}).items() if v is not None}
    try:
        return LabelRule.from_cfg(rule)
    except TornadoError as e:  # named as typed here: label_reduce, not label.reduce
        raise TornadoError(str(e).replace("label.", "label_", 1)) from None


def _known(values: np.ndarray, known: np.ndarray | None) -> pd.arrays.IntegerArray:
    """0/1 values as a nullable integer column: empty where not `known` (everywhere for None)."""
    out = pd.array(np.asarray(values, dtype=np.int64), dtype="Int64")
    out[~known if known is not None else slice(None)] = pd.NA
    return out


def rule_text(rule: LabelRule) -> str:
    return f"{rule.reduce} {'>=' if rule.inclusive else '>'} {rule.threshold:g} s^-1"


@torch.no_grad()
def predict(checkpoint, source, label: LabelRule | dict | None = None, batch: int = 8192,
            threshold: float | str | None = "auto") -> pd.DataFrame:
    """One row per patch of `source`'s files; `label`: the rule for their observed labels (a LabelRule, or
    None for the run's own, or a dict of the keys given over it)."""
    batch = _check_batch(batch)
    cut = run_threshold(checkpoint, threshold)
    module = load_model(checkpoint)
    label = label if isinstance(label, LabelRule) else label_rule(module, label)
    mean = torch.tensor(module.hparams.scaler_mean, dtype=torch.float32)
    std = torch.tensor(module.hparams.scaler_std, dtype=torch.float32)
    frames = []
    files = find_files(source, key="input")
    for path in files:
        storms = read_file(path, label=label, require_label=False, keep_all=True)
        ok = storms.inputs_ok
        if not ok.all():
            log.warning("%s: no probability for %d of %d patches: input values missing (NaN, inf or a fill value)",
                        path, int((~ok).sum()), len(ok))
        x = standardise(torch.from_numpy(storms.x[ok]), mean, std)
        prob = torch.cat([module.net.predict_proba(x[i:i + batch]) for i in range(0, len(x), batch)]) \
            if len(x) else torch.zeros(0)
        p = np.full(len(ok), np.nan)
        p[ok] = module.calibrated(prob.numpy())
        frames.append(pd.DataFrame({
            "file": path.name, "run_date": storms.date.isoformat(), "patch": storms.index,
            "track_id": storms.track_id, **_centres(path, storms.index), "probability": p,
            **({"tornado": _known(p >= cut, ok)} if cut is not None else {}),
            "label": _known(storms.y, storms.y_known) if storms.y is not None else _known(np.zeros(len(ok)), None),
        }))
    out = pd.concat(frames, ignore_index=True)
    out.attrs["label_rule"] = label  # the rule the label column follows
    out.attrs["files"] = len(files)  # those without patches too
    return out


USAGE = ("usage: python -m tornado.predict checkpoint=FILE|RUN_DIR input=DIR_OR_GLOB [output=predictions.csv|-] "
         "[threshold=auto|none|P] [batch=8192]")


def _main(argv: list[str]) -> None:
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return
    args = parse_kv(argv, DEFAULTS)
    if not args["checkpoint"] or not args["input"]:
        raise TornadoError(USAGE)
    _check_batch(args["batch"])
    if not args["output"].strip():
        raise TornadoError("output=: must name a file (default predictions.csv)")
    to_stdout = args["output"] == "-"  # the rows on stdout; what is said about them on stderr
    say = functools.partial(print, file=sys.stderr if to_stdout else sys.stdout)
    if _is_sweep(Path(args["checkpoint"])):
        run, job, auc = best_run(args["checkpoint"])
        say(f"the sweep's best job by validation ROC AUC: {job} ({auc:.4g}), {run}")
        args["checkpoint"] = str(run)
    unfinished = _unfinished(args["checkpoint"])
    if unfinished:
        say(unfinished)
    given = {k: args[f"label_{k}"] for k in ("reduce", "threshold", "inclusive")}
    cut = run_threshold(args["checkpoint"], args["threshold"])
    df = predict(args["checkpoint"], args["input"], given, args["batch"], "none" if cut is None else cut)
    buf = io.StringIO()
    df.to_csv(buf, index=False, float_format="%.6f")
    if to_stdout:
        sys.stdout.write(buf.getvalue())
        sys.stdout.flush()
    else:
        try:
            write_atomic(args["output"], buf.getvalue())
        except OSError as e:
            why = folder_fault(Path(args["output"]).parent, e)
            raise TornadoError(f"output={args['output']}: cannot write it ({why})") from None
    yes = f"; yes/no (tornado) at threshold {cut:.4g}" if cut is not None else ""
    if df["label"].notna().any():
        yes += f"; observed labels: {rule_text(df.attrs['label_rule'])}"
    patches = counted(len(df), "patch", "patches")
    unscored = int(df["probability"].isna().sum())
    patches += f" ({unscored} without a probability: inputs missing)" if unscored else ""
    where = "standard output" if to_stdout else args["output"]
    say(f"{patches} from {counted(df.attrs['files'], 'file')} -> {where}{yes}")


if __name__ == "__main__":
    run_cli(lambda: _main(sys.argv[1:]))
