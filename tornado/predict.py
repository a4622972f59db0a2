"""Tornado probability per storm patch from a trained checkpoint.

    python -m tornado.predict checkpoint=RUN/checkpoints/last.ckpt input=DIR_OR_GLOB [output=predictions.csv]

Inputs are standardised with the scaler stored in the checkpoint (fitted on the training split). A model
trained with balance copies or a pos_weight has its probabilities moved back to the training originals'
base rate, as in training's own scores. For yes/no forecasts use the threshold the run chose on its validation split
(`metrics.threshold` in its result.json).
Files that hold RVORT1_MAX_future also get the observed label under the label rule given.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import pandas as pd
import torch

from tornado.cli import parse_kv
from tornado.data import LabelRule, find_files, read_file
from tornado.datamodule import standardise
from tornado.errors import TornadoError, is_int, run_cli
from tornado.model import StormModule
from tornado.records import write_atomic

DEFAULTS = {"checkpoint": "", "input": "", "output": "predictions.csv", "batch": 8192,
            "label_reduce": "max", "label_threshold": 0.005, "label_inclusive": False}
CHANNELS = 3  # input channels of every tornado model: one scaler entry each


def load_model(checkpoint: str | Path) -> StormModule:
    path = Path(checkpoint)
    if not path.is_file():
        raise TornadoError(f"checkpoint={checkpoint}: no such file")
    try:
        module = StormModule.load_from_checkpoint(str(path), map_location="cpu", compile=False, cuda_graph=False)
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


@torch.no_grad()
def predict(checkpoint, source, label: LabelRule = LabelRule(), batch: int = 8192) -> pd.DataFrame:
    batch = _check_batch(batch)
    module = load_model(checkpoint)
    mean = torch.tensor(module.hparams.scaler_mean, dtype=torch.float32)
    std = torch.tensor(module.hparams.scaler_std, dtype=torch.float32)
    frames = []
    for path in find_files(source, key="input"):
        storms = read_file(path, label=label, require_label=False)
        x = standardise(torch.from_numpy(storms.x), mean, std)
        prob = torch.cat([module.net.predict_proba(x[i:i + batch]) for i in range(0, len(x), batch)]) \
            if len(x) else torch.zeros(0)
        frames.append(pd.DataFrame({
            "file": path.name, "run_date": storms.date.isoformat(), "patch": storms.index,
            "track_id": storms.track_id, "probability": module.calibrated(prob.numpy()),
            "label": storms.y if storms.y is not None else pd.array([pd.NA] * len(x), dtype="Int64"),
        }))
    return pd.concat(frames, ignore_index=True)


USAGE = "usage: python -m tornado.predict checkpoint=FILE input=DIR_OR_GLOB [output=predictions.csv] [batch=8192]"


def _main(argv: list[str]) -> None:
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return
    args = parse_kv(argv, DEFAULTS)
    if not args["checkpoint"] or not args["input"]:
        raise TornadoError(USAGE)
    _check_batch(args["batch"])
    rule = LabelRule(args["label_reduce"], args["label_threshold"], args["label_inclusive"])
    df = predict(args["checkpoint"], args["input"], rule, args["batch"])
    buf = io.StringIO()
    df.to_csv(buf, index=False, float_format="%.6f")
    write_atomic(args["output"], buf.getvalue())
    print(f"{len(df)} patches from {df['file'].nunique()} files -> {args['output']}")


if __name__ == "__main__":
    run_cli(lambda: _main(sys.argv[1:]))
