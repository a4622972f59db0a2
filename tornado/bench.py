"""Benchmarks of the training loop: `python -m tornado.bench [--quick] [--peer keras] [options]`.

Sections (each writes into `<out>/bench.json` and `<out>/bench.md`):

* loop      our loop (Lightning `Trainer.fit` with `StormModule` and `StormDataModule`, as `tornado.train` builds
            them) against a minimal hand-written PyTorch loop: same resident tensors, same network and switches,
            same batch size, same process. Steady state: the first (warm-up) epoch is left out.
* live      live augmentation against preaugmented data, our loop, same settings.
* paper     the paper's wall-time grid (Tables 3 and 5 on a GPU, 2 and 4 on a CPU) beside the paper's seconds.
            One fit per (augmentation, multiplier, batch) of max(epochs) epochs; the wall time at E epochs is
            the time from the call to `fit` to the end of epoch E. Data is loaded once per augmentation.
* switches  each `fast.*` switch flipped against this device's defaults.
* profile   where a step's time goes: torch.profiler over a few eager steps of our step (the kernels a CUDA
            graph replays), the top operators and kernels per batch size.
* peer      (`--peer keras`, or `tf_keras` for the Keras 2 package) the same network in Keras/TensorFlow on the
            same data, each run in its own process (`tornado.peer`).

Repeated runs of the compared sides are interleaved and reported as medians (the machine may be shared).
`--quick` (loop, live; a few minutes at most on 2 CPU cores), the default full mode (loop, live, paper, switches)
and `--smoke` (the quick sections on a tiny set, for tests) differ only in their defaults.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from tornado.errors import TornadoError, run_cli
from tornado.peer import has_tensorflow, run_keras
from tornado.tables import PAPER_N_TRAIN

ROOT = Path(__file__).resolve().parents[1]
PAPER_TRAIN = PAPER_N_TRAIN              # the paper's training set (183,723 patches in all)
FULL_SYNTH = {"days": 368, "patches_per_day": 500}  # synthetic set of about that size: 138,000 train, 184,000 all
SECTIONS = ("loop", "live", "paper", "switches", "peer", "profile")
SWITCHES = ("cuda_graph", "bf16", "cudnn_benchmark", "keep_memory", "channels_last", "storage", "resident",
            "compile")  # compile (slow) last
GPU_ONLY = ("cuda_graph", "cudnn_benchmark")
MODES = {  # defaults per mode; every one can be set on the command line
    "quick": dict(sections="loop,live", batches="128,2048", repeats=5, timed_epochs=1, data="config",
                  epochs="5", multipliers="1", augmentations="preaugmented,live"),
    "full": dict(sections="loop,live,paper,switches", batches="128,256,512,1024,2048,4096", repeats=3,
                 timed_epochs=2, data="tiled", epochs="5,10,15", multipliers="1,2,4",
                 augmentations="preaugmented,live"),
    "smoke": dict(sections="loop,live", batches="64,256", repeats=1, timed_epochs=1, data="config",
                  epochs="1,2", multipliers="1,2", augmentations="preaugmented,live"),
}
SMOKE_DATA = ["data.synth.days=10", "data.synth.patches_per_day=160"]
LOOP_BATCHES = (128, 2048)  # full mode: the loop, live, switch and peer sections use these of --batches


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise TornadoError(f"bench: {message}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = _Parser(prog="python -m tornado.bench", description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick", help="loop and live, CPU-sized")
    mode.add_argument("--smoke", action="store_const", dest="mode", const="smoke", help="tiny set, for tests")
    p.add_argument("--out", default="outputs/bench", help="folder for bench.json and bench.md")
    p.add_argument("--sections", help=f"comma list of {', '.join(SECTIONS)}, run in the order given")
    p.add_argument("--peer", choices=["keras", "tf_keras"],
                   help="add the peer section (needs tensorflow: pip install '.[peer]'; tf_keras also tf-keras)")
    p.add_argument("--gpus", type=int, help="0 = CPU, 1 = one GPU (default: a GPU if there is one)")
    p.add_argument("--batches", help="batch sizes, e.g. 128,2048")
    p.add_argument("--epochs", help="paper section: epoch counts, e.g. 5,10,15")
    p.add_argument("--multipliers", help="paper section: data multipliers, e.g. 1,2,4")
    p.add_argument("--augmentations", help="paper section: preaugmented,live")
    p.add_argument("--switches", default=",".join(SWITCHES), help="switches section: which to flip")
    p.add_argument("--repeats", type=int, help="interleaved repeats per measurement")
    p.add_argument("--timed-epochs", type=int, help="epochs timed after the warm-up epoch")
    p.add_argument("--data", choices=["config", "tiled", "full"],
                   help="config: the config's prepared set; tiled: that set repeated on the device to the paper's "
                        f"{PAPER_TRAIN:,} training samples; full: a synthetic set of the paper's size (slow to build)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--budget-s", type=float, default=None, help="stop starting new runs after this many seconds")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override of conf/train.yaml, e.g. --set data.out_dir=/tmp/d --set fast.storage=float16")
    a = p.parse_args(argv)
    a.mode = a.mode or "full"
    for key, value in MODES[a.mode].items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    a.sections = _names(a.sections, SECTIONS, "sections")
    if a.peer and "peer" not in a.sections:
        a.sections.append("peer")
    if "peer" in a.sections and not a.peer:
        a.peer = "keras"
    a.batches = _ints(a.batches, "batches")
    a.epochs = _ints(a.epochs, "epochs")
    a.multipliers = _ints(a.multipliers, "multipliers")
    a.augmentations = _names(a.augmentations, ("preaugmented", "live"), "augmentations")
    a.switches = _names(a.switches, SWITCHES, "switches")
    for key in ("repeats", "timed_epochs", "threads", "gpus"):
        v = getattr(a, key)
        if v is not None and v < (0 if key == "gpus" else 1):
            raise TornadoError(f"bench: --{key.replace('_', '-')}={v}: must be {'>= 0' if key == 'gpus' else '>= 1'}")
    if a.gpus is not None and a.gpus > 1:
        raise TornadoError(f"bench: --gpus={a.gpus}: the benchmark runs on one device (use 0 or 1)")
    taken = next((p for p in (Path(a.out), *Path(a.out).parents) if p.exists()), None)
    if taken is not None and not taken.is_dir():  # found before the data is prepared and the sections run
        raise TornadoError(f"bench: --out={a.out}: {taken} is a file, not a folder")
    return a


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise TornadoError(f"bench: --{what}={text}: expected comma-separated integers") from None
    if not values or any(v < 1 for v in values):
        raise TornadoError(f"bench: --{what}={text}: expected positive integers")
    return values


def _names(text: str, known: tuple[str, ...], what: str) -> list[str]:
    names = list(dict.fromkeys(v.strip() for v in str(text).split(",") if v.strip()))
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise TornadoError(f"bench: --{what}={text}: use a comma list of {', '.join(known)}")
    return names


# ------------------------------------------------------------------------------------------------ context
@dataclass
class Ctx:
    args: argparse.Namespace
    cfg: object                 # the composed train config
    accelerator: str
    device: object              # torch.device
    fast: dict
    path: Path                  # the prepared HDF5 file
    out: Path
    t0: float = field(default_factory=time.monotonic)
    skipped: list = field(default_factory=list)
    _dms: dict = field(default_factory=dict)

    def fast_for(self, batch: int) -> dict:
        """The switches `tornado.train` resolves for this batch size on this device."""
        from omegaconf import OmegaConf

        from tornado.fit import fast_switches

        return fast_switches(OmegaConf.merge(self.cfg, {"batch_size": batch}), self.accelerator, 1)

    def over_budget(self) -> bool:
        b = self.args.budget_s
        return b is not None and time.monotonic() - self.t0 > b

    def dm(self, augmentation: str, fast: dict | None = None, multiplier: int | None = None):
        """A loaded data module, cached per (augmentation, multiplier, layout switches)."""
        fast = fast or self.fast
        if multiplier is None:
            multiplier = max(self.args.multipliers) if augmentation == "preaugmented" else 1
        key = (augmentation, multiplier, fast["storage"], fast["channels_last"], str(fast["resident"]))
        if key not in self._dms:
            self._dms[key] = load_dm(self, augmentation, multiplier, fast)
        return self._dms[key]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def make_ctx(args: argparse.Namespace) -> Ctx:
    import torch

    from tornado.prepare import ensure_prepared
    from tornado.fit import fast_switches

    gpus = args.gpus if args.gpus is not None else int(torch.cuda.is_available())
    if gpus and not torch.cuda.is_available():
        raise TornadoError("bench: --gpus=1 but no GPU is visible")
    overrides = [*(SMOKE_DATA if args.mode == "smoke" else []), f"gpus={gpus}"]
    if args.data == "full":  # the paper's workload: its size, every earlier run date in training
        overrides += [f"data.synth.{k}={v}" for k, v in FULL_SYNTH.items()] + ["data.split.val_fraction=0"]
    overrides += args.set
    try:
        cfg = compose(overrides)
    except Exception as e:  # hydra's own message names the bad override
        raise TornadoError(f"bench: --set: {str(e).splitlines()[0]}") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    accelerator = "gpu" if gpus else "cpu"
    device = torch.device("cuda", 0) if gpus else torch.device("cpu")
    fast = fast_switches(cfg, accelerator, 1)
    if "preaugmented" in args.augmentations or "loop" in args.sections:
        need = sorted(set(args.multipliers) | {1})
        missing = [m for m in need if m not in cfg.data.multipliers]
        if missing:
            raise TornadoError(f"bench: --multipliers: {missing} not in data.multipliers {list(cfg.data.multipliers)}")
    if "peer" in args.sections and not has_tensorflow(args.peer):
        need = "TensorFlow (pip install '.[peer]')" + (" and tf-keras" if args.peer == "tf_keras" else "")
        raise TornadoError(f"bench: --peer {args.peer} needs {need}")
    _log(f"preparing data ({cfg.data.out_dir}) ...")
    path = ensure_prepared(cfg.data, cfg.augment)
    return Ctx(args, cfg, accelerator, device, fast, path, Path(args.out))


def load_dm(ctx: Ctx, augmentation: str, multiplier: int, fast: dict):
    from omegaconf import OmegaConf

    from tornado.datamodule import StormDataModule

    cfg = ctx.cfg
    dm = StormDataModule(ctx.path, cfg.batch_size, multiplier, augmentation, OmegaConf.to_container(cfg.augment),
                         cfg.seed, fast["resident"], fast["storage"], channels_last=fast["channels_last"])
    dm.load(ctx.device)
    if ctx.args.data == "tiled" and dm.is_resident:
        tile(dm, PAPER_TRAIN)
    return dm


def tile(dm, n_target: int) -> None:
    """Repeat each block of the resident set (originals, copy 1, ...) to `n_target` rows.

    The paper's training-set size without building it: the wall time of this network does not depend on the
    values, only on the number of samples and steps.
    """
    import torch

    n = dm.meta["n_train"]
    blocks = dm.x.shape[0] // n
    j = torch.arange(n_target, device=dm.x.device) % n
    idx = torch.cat([k * n + j for k in range(blocks)])
    dm.x, dm.y = dm.x[idx], dm.y[idx]
    dm.meta = {**dm.meta, "n_train": n_target, "tiled_from": n}


# ------------------------------------------------------------------------------------------------ runs
@dataclass
class Run:
    epoch_s: list[float]        # per epoch, each including its end-of-epoch work
    since_fit_s: list[float]    # from the call to fit (or the loop's start) to the end of each epoch
    samples_per_epoch: int

    def steady_samples_per_s(self, warmup: int = 1) -> float:
        timed = self.epoch_s[warmup:] or self.epoch_s
        return self.samples_per_epoch * len(timed) / sum(timed)

    def steady_epoch_s(self, warmup: int = 1) -> float:
        timed = self.epoch_s[warmup:] or self.epoch_s
        return sum(timed) / len(timed)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stamps_callback(device):
    import pytorch_lightning as pl

    class Stamps(pl.Callback):
        """perf_counter after a device sync at every epoch start and at the end of training."""

        def __init__(self):
            self.t: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module):
            _sync(device)
            self.t.append(time.perf_counter())

        def on_train_end(self, trainer, pl_module):
            _sync(device)
            self.t.append(time.perf_counter())

    return Stamps()


def run_ours(ctx: Ctx, dm, batch: int, epochs: int, fast: dict | None = None) -> Run:
    """One `Trainer.fit` exactly as `tornado.train` builds it (loggers, checkpoints), on the loaded `dm`."""
    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    from tornado.fit import make_module, make_trainer

    fast = fast or ctx.fast_for(batch)
    _process_switches(ctx, fast)
    cfg = OmegaConf.merge(ctx.cfg, {"epochs": epochs, "batch_size": batch})
    dm.batch_size = batch
    pl.seed_everything(cfg.seed, verbose=False)
    module = make_module(cfg, fast, dm)
    stamps = _stamps_callback(ctx.device)
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=_scratch(ctx)))
    try:
        trainer, _ = make_trainer(cfg, scratch, ctx.accelerator, 1, dm, extra_callbacks=[stamps])
        _sync(ctx.device)
        t0 = time.perf_counter()
        trainer.fit(module, datamodule=dm)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    t = stamps.t
    return Run([b - a for a, b in zip(t, t[1:])], [b - t0 for b in t[1:]], dm.samples_per_epoch)


def run_raw(ctx: Ctx, dm, batch: int, epochs: int) -> Run:
    """A minimal PyTorch loop on `dm`'s resident tensors with the same network, optimiser and switches."""
    import torch
    import torch.nn.functional as F

    from tornado.model import StormCNN

    fast = ctx.fast_for(batch)
    _process_switches(ctx, fast)
    dev, cfg = ctx.device, ctx.cfg
    torch.manual_seed(cfg.seed)
    net = StormCNN(pool3=cfg.model.pool3, dropout=cfg.model.dropout).to(dev)
    if fast["channels_last"]:
        net = net.to(memory_format=torch.channels_last)
    fwd = torch.compile(net) if fast["compile"] else net
    graph = fast["cuda_graph"] and dev.type == "cuda"
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, fused=True, capturable=graph)
    x, y = dm.x, dm.y
    rows = dm.samples_per_epoch

    def step(xb, yb, zero=True):
        if zero:
            opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=fast["bf16"], cache_enabled=False):
            out = fwd(xb)
        loss = F.binary_cross_entropy_with_logits(out.float(), yb)
        loss.backward()
        opt.step()
        return loss

    static = None
    if graph:  # the PyTorch documentation's whole-step capture
        static_x = x[:batch].float().clone()
        static_y = y[:batch].clone()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                step(static_x, static_y)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(g):
            step(static_x, static_y, zero=False)
        static = (g, static_x, static_y)

    stamps = []
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(epochs):
        _sync(dev)
        stamps.append(time.perf_counter())
        perm = torch.randperm(rows, device=dev)
        for i in range(0, rows, batch):
            idx = perm[i:i + batch]
            xb, yb = x[idx].float(), y[idx]
            if static is not None and len(idx) == batch:
                static[1].copy_(xb)
                static[2].copy_(yb)
                static[0].replay()
            else:
                step(xb, yb)
    _sync(dev)
    stamps.append(time.perf_counter())
    return Run([b - a for a, b in zip(stamps, stamps[1:])], [b - t0 for b in stamps[1:]], rows)


def _process_switches(ctx: Ctx, fast: dict) -> None:
    """The process-wide switches (allocator, cuDNN's timing), set for this run as `tornado.train` sets them."""
    import torch

    from tornado.fit import keep_memory

    if fast["keep_memory"] or ctx.device.type == "cpu":
        keep_memory(fast["keep_memory"])
    if ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = fast["cudnn_benchmark"]


def _scratch(ctx: Ctx) -> Path:
    d = ctx.out / ".runs"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def interleave(ctx: Ctx, sides: dict, repeats: int, what: str) -> dict[str, list]:
    """Run each side `repeats` times, alternating the order; returns {side: [result, ...]}."""
    names = list(sides)
    results: dict[str, list] = {n: [] for n in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            if ctx.over_budget():
                ctx.skipped.append(f"{what}: {name} repeat {r + 1} (time budget)")
                continue
            results[name].append(sides[name]())
    return results


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _loop_batches(ctx: Ctx) -> list[int]:
    """Full mode runs the loop, live, switch and peer sections at 128 and 2048 only (where listed)."""
    b = ctx.args.batches
    if ctx.args.mode != "full":
        return b
    return [x for x in b if x in LOOP_BATCHES] or b


# ------------------------------------------------------------------------------------------------ sections
def section_loop(ctx: Ctx) -> dict:
    dm = ctx.dm("preaugmented", multiplier=1)
    epochs = 1 + ctx.args.timed_epochs
    out = {}
    for b in _loop_batches(ctx):
        res = interleave(ctx, {"ours": lambda: run_ours(ctx, dm, b, epochs),
                               "raw": lambda: run_raw(ctx, dm, b, epochs)}, ctx.args.repeats, f"loop b={b}")
        ours = [r.steady_samples_per_s() for r in res["ours"]]
        raw = [r.steady_samples_per_s() for r in res["raw"]]
        out[str(b)] = {"ours_samples_per_s": ours, "raw_samples_per_s": raw, "ours_median": _median(ours),
                       "raw_median": _median(raw), "ratio": _ratio(_median(ours), _median(raw))}
        _log(f"loop b={b}: ours {_fmt(out[str(b)]['ours_median'])}/s, raw {_fmt(out[str(b)]['raw_median'])}/s, "
             f"ratio {_fmt(out[str(b)]['ratio'], 3)}")
    return out


def section_live(ctx: Ctx) -> dict:
    pre, live = ctx.dm("preaugmented", multiplier=1), ctx.dm("live")
    live.multiplier = 1
    epochs = 1 + ctx.args.timed_epochs
    out = {}
    for b in _loop_batches(ctx):
        res = interleave(ctx, {"preaugmented": lambda: run_ours(ctx, pre, b, epochs),
                               "live": lambda: run_ours(ctx, live, b, epochs)}, ctx.args.repeats, f"live b={b}")
        p = [r.steady_epoch_s() for r in res["preaugmented"]]
        lv = [r.steady_epoch_s() for r in res["live"]]
        out[str(b)] = {"preaugmented_epoch_s": p, "live_epoch_s": lv, "ratio": _ratio(_median(lv), _median(p))}
        _log(f"live b={b}: preaugmented {_fmt(_median(p), 3)} s/epoch, live {_fmt(_median(lv), 3)} s/epoch, "
             f"ratio {_fmt(out[str(b)]['ratio'], 3)}")
    return out


def paper_rows(hardware: str) -> list[dict]:
    """The paper's wall times (Tables 2-5) from the package data."""
    import csv

    tables = {"gpu": ("table3", "table5"), "cpu": ("table2", "table4")}[hardware]
    with open(Path(__file__).parent / "paper" / "wall_time_batch_vs_multiplier.csv") as f:
        return [r for r in csv.DictReader(f) if r["table"] in tables]


def section_paper(ctx: Ctx) -> list[dict]:
    a = ctx.args
    hardware = "gpu" if ctx.device.type == "cuda" else "cpu"
    paper = {(r["augmentation"], int(r["epochs"]), int(r["batch_size"]), int(r["data_multiplier"])): r
             for r in paper_rows(hardware)}
    rows = []
    top = max(a.epochs)
    for m in sorted(a.multipliers):  # the smallest first: if the time budget runs out, the larger go
        for aug in a.augmentations:
            dm = ctx.dm(aug)
            dm.multiplier = m
            for b in a.batches:
                if ctx.over_budget():
                    ctx.skipped.append(f"paper: {aug} x{m} b={b} (time budget)")
                    continue
                run = run_ours(ctx, dm, b, top)
                for e in a.epochs:
                    p = paper.get((aug, e, b, m))
                    ours = run.since_fit_s[e - 1]
                    rows.append({"table": p["table"] if p else None, "augmentation": aug, "epochs": e,
                                 "batch_size": b, "data_multiplier": m, "samples_per_epoch": dm.samples_per_epoch,
                                 "ours_s": ours, "paper_s": float(p["wall_s"]) if p else None,
                                 "paper_over_ours": _ratio(float(p["wall_s"]), ours) if p else None})
                _log(f"paper {aug} x{m} b={b}: " + ", ".join(
                    f"{e} epochs {run.since_fit_s[e - 1]:.2f} s" for e in a.epochs))
    return rows


def section_switches(ctx: Ctx) -> list[dict]:
    from tornado.fit import cpu_has_bf16

    epochs = 1 + ctx.args.timed_epochs
    rows = []
    for name in ctx.args.switches:
        if name in GPU_ONLY and ctx.device.type != "cuda":
            rows.append({"switch": name, "note": "needs a GPU"})
            continue
        for b in _loop_batches(ctx):
            base = ctx.fast_for(b)  # the defaults at this batch size (bf16 depends on it on a GPU)
            flipped = dict(base)
            if name == "storage":
                flipped[name] = "float16" if base[name] == "float32" else "float32"
            elif name == "resident":
                flipped[name] = False
            else:
                flipped[name] = not bool(base[name])
            if name == "bf16" and flipped[name] and ctx.device.type == "cpu" and not cpu_has_bf16():
                rows.append({"switch": name, "batch_size": b, "note": "this CPU has no native bf16"})
                continue
            if name == "keep_memory":  # the allocator's state outlives a run: each side in its own process
                sides = {"base": lambda: _fresh_process_ours(ctx, b, base[name]),
                         "flipped": lambda: _fresh_process_ours(ctx, b, flipped[name])}
            else:
                dm_base = ctx.dm("preaugmented", base, multiplier=1)
                dm_flip = ctx.dm("preaugmented", flipped, multiplier=1)
                sides = {"base": lambda: run_ours(ctx, dm_base, b, epochs, base).steady_samples_per_s(),
                         "flipped": lambda: run_ours(ctx, dm_flip, b, epochs, flipped).steady_samples_per_s()}
            res = interleave(ctx, sides, ctx.args.repeats, f"switch {name} b={b}")
            on, off = res["base"], res["flipped"]
            row = {"switch": name, "batch_size": b, "default": _jsonable(base[name]),
                   "flipped": _jsonable(flipped[name]), "default_samples_per_s": _median(on),
                   "flipped_samples_per_s": _median(off), "flipped_over_default": _ratio(_median(off), _median(on))}
            rows.append(row)
            _log(f"switch {name}={row['flipped']} b={b}: {_fmt(row['flipped_samples_per_s'])}/s vs "
                 f"{_fmt(row['default_samples_per_s'])}/s ({_fmt(row['flipped_over_default'], 3)}x)")
    return rows


def section_profile(ctx: Ctx, steps: int = 20) -> dict:
    """torch.profiler over `steps` eager steps (our step without Lightning, no CUDA graph) per batch size."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from tornado.fit import make_module

    dev = ctx.device
    dm = ctx.dm("preaugmented", multiplier=1)
    out = {}
    for b in _loop_batches(ctx):
        if ctx.over_budget():
            ctx.skipped.append(f"profile b={b} (time budget)")
            continue
        fast = {**ctx.fast_for(b), "cuda_graph": False, "compile": False}
        _process_switches(ctx, fast)
        module = make_module(ctx.cfg, fast, dm).to(dev)
        opt = torch.optim.Adam(module.parameters(), lr=ctx.cfg.lr, fused=True)
        module.on_train_epoch_start()
        gen = torch.Generator(device=dev).manual_seed(0)
        idx = torch.randint(0, dm.samples_per_epoch, (steps + 5, b), generator=gen, device=dev)

        def step(i):
            x = dm.prepare_batch(dm.x[idx[i]], None)
            opt.zero_grad(set_to_none=True)
            loss, logits = module.loss_and_logits(x, dm.y[idx[i]])
            loss.backward()
            opt.step()
            module.accumulate(loss, logits, dm.y[idx[i]])

        for i in range(5):
            step(i)
        _sync(dev)
        t0 = time.perf_counter()
        for i in range(5, 5 + steps):
            step(i)
        _sync(dev)
        eager_us = (time.perf_counter() - t0) / steps * 1e6
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with profile(activities=acts) as prof:
            for i in range(5, 5 + steps):
                step(i)
            _sync(dev)
        rows = []
        for e in prof.key_averages():
            t = _self_time_us(e, dev.type)
            if t > 0:
                rows.append({"name": e.key[:80], "calls_per_step": e.count / steps, "us_per_step": t / steps})
        rows.sort(key=lambda r: -r["us_per_step"])
        total = sum(r["us_per_step"] for r in rows)
        out[str(b)] = {"steps": steps, "eager_step_us": eager_us, "profiled_time": "device" if dev.type == "cuda"
                       else "cpu", "busy_us_per_step": total,
                       "top": [{**r, "share": r["us_per_step"] / total} for r in rows[:12]]}
        _log(f"profile b={b}: eager step {eager_us:.0f} us, busy {total:.0f} us per step; top: "
             + ", ".join(f"{r['name'][:40]} {r['us_per_step']:.0f} us" for r in rows[:3]))
    return out


def _self_time_us(event, device_type: str) -> float:
    """An operator's or kernel's own time (the attribute names changed across torch versions)."""
    names = (("self_device_time_total", "self_cuda_time_total") if device_type == "cuda"
             else ("self_cpu_time_total",))
    for n in names:
        v = getattr(event, n, None)
        if v is not None:
            return float(v)
    return 0.0


def _fresh_process_ours(ctx: Ctx, batch: int, keep: bool) -> float:
    """Our steady-state samples/s at `batch`, measured by `tornado.bench` in a new process."""
    a = ctx.args
    with tempfile.TemporaryDirectory(dir=_scratch(ctx)) as out:
        argv = [sys.executable, "-m", "tornado.bench", f"--{a.mode}" if a.mode != "full" else "--quick",
                "--sections", "loop", "--batches", str(batch), "--repeats", "1", "--timed-epochs",
                str(a.timed_epochs), "--data", a.data, "--out", out, "--gpus", str(int(ctx.device.type == "cuda")),
                *(["--threads", str(a.threads)] if a.threads else []),
                *[x for o in a.set for x in ("--set", o)], "--set", f"++fast.keep_memory={str(keep).lower()}"]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
        if p.returncode != 0:
            tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
            raise TornadoError(f"bench: the fresh-process run failed (exit {p.returncode}): {tail}")
        return json.loads((Path(out) / "bench.json").read_text())["loop"][str(batch)]["ours_median"]


def _jsonable(v):
    return v if isinstance(v, (bool, int, float, str)) or v is None else str(v)


# ------------------------------------------------------------------------------------------------ peer
def section_peer(ctx: Ctx) -> dict:
    epochs = 1 + ctx.args.timed_epochs
    aug_cfg = dict(ctx.cfg.augment)
    out: dict = {"package": ctx.args.peer, "keras_live": "ImageDataGenerator.flow (the paper's path): rotation_range="
                               f"{aug_cfg['rotation']}, horizontal_flip={aug_cfg['reflect']}, "
                               f"shift={aug_cfg['translate']}, zoom={aug_cfg['zoom']}, fill_mode=nearest; "
                               "the wind vectors are not turned", "runs": {}}
    info = {}
    for aug in ("preaugmented", "live"):
        dm = ctx.dm(aug, multiplier=1)
        dm.multiplier = 1
        for b in _loop_batches(ctx):
            spec = {"package": ctx.args.peer, "path": str(ctx.path), "batch": b, "epochs": epochs, "augmentation": aug,
                    "seed": int(ctx.cfg.seed), "pool3": bool(ctx.cfg.model.pool3), "lr": float(ctx.cfg.lr),
                    "augment": {k: aug_cfg[k] for k in ("rotation", "translate", "zoom", "reflect")}}
            if ctx.args.data == "tiled":
                spec["tile_to"] = PAPER_TRAIN

            def keras_run(spec=spec):
                r = run_keras(spec)
                info.update({k: r[k] for k in ("keras", "tensorflow", "jit_compile", "threads")})
                return Run(r["epoch_s"], r["since_fit_s"], r["samples_per_epoch"])

            sides = {"ours": lambda: run_ours(ctx, dm, b, epochs), "keras": keras_run}
            if ctx.fast_for(b)["bf16"]:  # Keras trains in float32: ours in float32 too, beside our default
                sides["ours_float32"] = lambda: run_ours(ctx, dm, b, epochs, {**ctx.fast_for(b), "bf16": False})
            res = interleave(ctx, sides, ctx.args.repeats, f"peer {aug} b={b}")
            speed = {k: [r.steady_samples_per_s() for r in v] for k, v in res.items()}
            row = {"augmentation": aug, "batch_size": b, "ours_bf16": bool(ctx.fast_for(b)["bf16"])}
            for k, v in speed.items():
                row.update({f"{k}_samples_per_s": v, f"{k}_median": _median(v)})
            row["peer_ratio"] = _ratio(row["ours_median"], row["keras_median"])
            if "ours_float32" in speed:
                row["peer_ratio_float32"] = _ratio(row["ours_float32_median"], row["keras_median"])
            out["runs"][f"{aug}/{b}"] = row
            _log(f"peer {aug} b={b}: " + ", ".join(f"{k} {_fmt(row[k + '_median'])}/s" for k in speed)
                 + f", ratio {_fmt(row['peer_ratio'], 3)}")
    out.update(info)
    return out


# ------------------------------------------------------------------------------------------------ report
def _git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return "uncommitted (no commit yet)" if "HEAD" in head.stderr else "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(ctx: Ctx) -> dict:
    import torch

    from tornado.fit import cpu_has_bf16

    m = {"cpu": _cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
         "cpu_bf16": cpu_has_bf16(), "device": str(ctx.device), "host": platform.node()}
    if ctx.device.type == "cuda":
        m["gpu"] = torch.cuda.get_device_name(ctx.device)
    return m


def versions() -> dict:
    import pytorch_lightning as pl
    import torch

    import tornado

    return {"tornado": tornado.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "pytorch_lightning": pl.__version__}


def _fmt(v, digits: int = 0) -> str:
    if v is None:
        return "n/a"
    return f"{v:,.{digits}f}" if digits == 0 else f"{v:.{digits}f}"


def goals(result: dict, gpu: bool) -> list[dict]:
    g = []

    def add(name, value, op, target):
        met = None if value is None else (value >= target if op == ">=" else value <= target)
        g.append({"goal": name, "value": value, "target": f"{op} {target}", "met": met})

    add("loop_ratio (ours / raw PyTorch loop, worst batch size)", result.get("loop_ratio"), ">=", 0.95)
    add("live_over_preaug (worst batch size)", result.get("live_over_preaug"), "<=", 1.1 if gpu else 1.2)
    for r in result.get("paper", []):
        if gpu and r["augmentation"] == "preaugmented" and r["epochs"] == 5 and r["data_multiplier"] == 1:
            if r["batch_size"] in (128, 2048):
                add(f"paper grid: 5 epochs, x1, batch {r['batch_size']}, seconds", r["ours_s"], "<=",
                    2.0 if r["batch_size"] == 128 else 0.5)
    for key, r in result.get("peer", {}).get("runs", {}).items():
        if r["augmentation"] == "preaugmented":
            add(f"peer_ratio preaugmented batch {r['batch_size']} (ours / Keras)", r["peer_ratio"], ">=", 1.0)
            if r.get("peer_ratio_float32") is not None:
                add(f"peer_ratio preaugmented batch {r['batch_size']} (ours in float32 / Keras)",
                    r["peer_ratio_float32"], ">=", 1.0)
        else:
            add(f"peer_ratio live batch {r['batch_size']} (ours / Keras ImageDataGenerator)", r["peer_ratio"],
                ">=", 1.3)
    return g


def markdown(result: dict) -> str:
    m = result["machine"]
    where = m.get("gpu") or f"{m['cpu']} ({m['cpu_count']} cores, {m['torch_threads']} torch threads)"
    lines = [f"# Benchmark ({result['mode']})", "",
             f"{result['date']}, commit {result['commit']}, {where}; load average before "
             f"{result['load_before']}, after {result['load_after']}; "
             f"data {result['data'].get('n_train') or 0:,} training samples ({result['data']['kind']}); "
             f"switches {result['fast']} (bf16 by batch size: "
             f"{ {b: f['bf16'] for b, f in result.get('fast_by_batch', {}).items()} }); "
             f"warm-up epochs left out: 1; repeats {result['settings']['repeats']} "
             f"(medians).", ""]
    if "loop" in result:
        lines += ["## Our loop against a raw PyTorch loop (samples/s, steady state)", "",
                  "| batch | ours | raw PyTorch | ours / raw |", "|---:|---:|---:|---:|"]
        for b, r in result["loop"].items():
            lines.append(f"| {b} | {_fmt(r['ours_median'])} | {_fmt(r['raw_median'])} | {_fmt(r['ratio'], 3)} |")
        lines.append("")
    if "live" in result:
        lines += ["## Live augmentation against preaugmented data (seconds per epoch, our loop)", "",
                  "| batch | preaugmented | live | live / preaugmented |", "|---:|---:|---:|---:|"]
        for b, r in result["live"].items():
            lines.append(f"| {b} | {_fmt(_median(r['preaugmented_epoch_s']), 3)} | "
                         f"{_fmt(_median(r['live_epoch_s']), 3)} | {_fmt(r['ratio'], 3)} |")
        lines.append("")
    if "peer" in result:
        p = result["peer"]
        lines += [f"## {p.get('keras', '?')} / TensorFlow {p.get('tensorflow', '?')} on the same data "
                  f"(samples/s; Keras jit_compile={p.get('jit_compile', '?')}, live = {p['keras_live']})", "",
                  "| data | batch | ours | ours, float32 | Keras (float32) | ours / Keras | ours float32 / Keras |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in p["runs"].values():
            lines.append(f"| {r['augmentation']} | {r['batch_size']} | {_fmt(r['ours_median'])}"
                         f"{' (bf16)' if r.get('ours_bf16') else ''} | {_fmt(r.get('ours_float32_median'))} | "
                         f"{_fmt(r['keras_median'])} | {_fmt(r['peer_ratio'], 3)} | "
                         f"{_fmt(r.get('peer_ratio_float32'), 3)} |")
        lines.append("")
    if result.get("paper"):
        lines += ["## The paper's wall-time grid (seconds of training)", "",
                  "| table | data | epochs | batch | multiplier | ours | paper | paper / ours |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in result["paper"]:
            lines.append(f"| {r['table'] or '-'} | {r['augmentation']} | {r['epochs']} | {r['batch_size']} | "
                         f"{r['data_multiplier']} | {_fmt(r['ours_s'], 2)} | {_fmt(r['paper_s'])} | "
                         f"{_fmt(r['paper_over_ours'], 1)} |")
        lines.append("")
    if result.get("switches"):
        lines += ["## Speed switches (our loop, preaugmented, samples/s)", "",
                  "| switch | batch | default | flipped to | default | flipped | flipped / default |",
                  "|---|---:|---|---|---:|---:|---:|"]
        for r in result["switches"]:
            if "note" in r:
                lines.append(f"| {r['switch']} | | | | | | {r['note']} |")
                continue
            lines.append(f"| {r['switch']} | {r['batch_size']} | {r['default']} | {r['flipped']} | "
                         f"{_fmt(r['default_samples_per_s'])} | {_fmt(r['flipped_samples_per_s'])} | "
                         f"{_fmt(r['flipped_over_default'], 3)} |")
        lines.append("")
    for b, p in result.get("profile", {}).items():
        lines += [f"## Where a step's time goes, batch {b} ({p['profiled_time']} time; eager step "
                  f"{_fmt(p['eager_step_us'])} us, busy {_fmt(p['busy_us_per_step'])} us per step)", "",
                  "| operator / kernel | calls per step | us per step | share |", "|---|---:|---:|---:|"]
        for r in p["top"]:
            lines.append(f"| `{r['name']}` | {r['calls_per_step']:.1f} | {r['us_per_step']:.1f} | "
                         f"{100 * r['share']:.1f}% |")
        lines.append("")
    if result["goals"]:
        lines += ["## Goals", "", "| goal | value | target | met |", "|---|---:|---|---|"]
        for g in result["goals"]:
            met = {True: "yes", False: "**no**", None: "n/a"}[g["met"]]
            lines.append(f"| {g['goal']} | {_fmt(g['value'], 3)} | {g['target']} | {met} |")
        lines.append("")
    if result["skipped"]:
        lines += ["Not measured: " + "; ".join(result["skipped"]), ""]
    for name, err in result.get("errors", {}).items():
        lines += [f"Section {name} failed: {err}", ""]
    if result.get("partial"):
        lines += ["(partial: written after a section; the benchmark had not finished)", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main
def bench(args: argparse.Namespace) -> dict:
    load_before = [round(v, 2) for v in os.getloadavg()]
    t_start = time.monotonic()
    ctx = make_ctx(args)
    result: dict = {
        "mode": args.mode, "date": dt.date.today().isoformat(), "commit": _git_commit(),
        "argv": sys.argv[1:], "load_before": load_before, "versions": versions(), "machine": machine(ctx),
        "fast": {k: _jsonable(v) for k, v in ctx.fast.items()},
        "fast_by_batch": {str(b): {k: _jsonable(v) for k, v in ctx.fast_for(b).items()} for b in args.batches},
        "settings": {"sections": args.sections, "batches": args.batches, "repeats": args.repeats,
                     "timed_epochs": args.timed_epochs, "warmup_epochs": 1, "epochs": args.epochs,
                     "multipliers": args.multipliers, "augmentations": args.augmentations, "overrides": args.set},
        "data": {"path": str(ctx.path), "kind": args.data},
    }
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        sections = {"loop": section_loop, "live": section_live, "paper": section_paper,
                    "switches": section_switches, "peer": section_peer, "profile": section_profile}
        for name in args.sections:  # in the order given: under --budget-s the first ones get the time
            fn = sections[name]
            _log(f"section {name}")
            try:
                result[name] = fn(ctx)
            except _Terminated:
                result.setdefault("errors", {})[name] = "terminated (SIGTERM) before the section finished"
                break
            except Exception as e:  # one failing section (a missing compiler, say) leaves the others
                traceback.print_exc()
                result.setdefault("errors", {})[name] = f"{type(e).__name__}: {e}".splitlines()[0]
            finish(result, ctx, t_start, partial=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return finish(result, ctx, t_start, partial=False)


class _Terminated(Exception):
    pass


def _terminate(signum, frame):
    raise _Terminated()


def finish(result: dict, ctx: Ctx, t_start: float, partial: bool) -> dict:
    """Summaries and goals from the sections so far, written to bench.json and bench.md."""
    from tornado import records

    if "loop" in result:
        ratios = [r["ratio"] for r in result["loop"].values() if r["ratio"] is not None]
        result["loop_ratio"] = min(ratios) if ratios else None
        result["samples_per_s"] = {b: r["ours_median"] for b, r in result["loop"].items()}
    if "live" in result:
        ratios = [r["ratio"] for r in result["live"].values() if r["ratio"] is not None]
        result["live_over_preaug"] = max(ratios) if ratios else None
    for dm in ctx._dms.values():
        result["data"].update(n_train=dm.meta["n_train"],
                              prepared_n_train=dm.meta.get("tiled_from", dm.meta["n_train"]))
    result["goals"] = goals(result, ctx.device.type == "cuda")
    result["skipped"] = ctx.skipped
    result["load_after"] = [round(v, 2) for v in os.getloadavg()]
    result["bench_s"] = time.monotonic() - t_start
    result["partial"] = partial
    if not partial:
        shutil.rmtree(ctx.out / ".runs", ignore_errors=True)
    records.write_json(ctx.out / "bench.json", result)
    records.write_atomic(ctx.out / "bench.md", markdown(result))
    return result


def summary(paths: list[str], unreadable: list[str] | None = None) -> str:
    """A short plain-text digest of result.json / bench.json files (the device check prints it last).

    A file that cannot be read or is not one of those (a stage that timed out wrote none) is left out of the
    text and named in `unreadable` as "PATH (why)"."""
    out = []
    for path in paths:
        try:
            r = json.loads(Path(path).read_text())
        except OSError as e:
            why = e.strerror or type(e).__name__
        except ValueError:
            why = "not valid JSON"
        else:
            try:
                out.extend(_digest(path, r))
                continue
            except (AttributeError, KeyError, TypeError, ValueError, IndexError):
                why = "not a tornado result.json or bench.json"
        if unreadable is not None:
            unreadable.append(f"{path} ({why})")
    return "\n".join(out)


def _digest(path: str, r: dict) -> list[str]:
    """summary()'s lines for one file."""
    out: list[str] = []
    if "metrics" in r or r.get("status") in ("failed", "running"):  # a tornado.train result.json
        t = r.get("times") or {}
        out.append(f"train: {r.get('status')} {r.get('error') or ''} wall {_fmt(t.get('wall_s'), 2)} s, "
                   f"{_fmt(r.get('samples_per_s'))} samples/s, ROC AUC "
                   f"{_fmt((r.get('metrics') or {}).get('roc_auc'), 3)}, fast {r.get('fast')}")
        return out
    m = r.get("machine", {})
    out.append(f"{Path(path).parent.name}: {m.get('gpu') or m.get('cpu')}, torch {r['versions']['torch']}, "
               f"fast {r.get('fast')}, {r.get('bench_s', 0):.0f} s" + (" (partial)" if r.get("partial") else ""))
    for b, x in r.get("loop", {}).items():
        out.append(f"  loop b={b}: ours {_fmt(x['ours_median'])}/s raw {_fmt(x['raw_median'])}/s "
                   f"ratio {_fmt(x['ratio'], 3)}")
    for b, x in r.get("live", {}).items():
        out.append(f"  live/preaug b={b}: {_fmt(x['ratio'], 3)} ({_fmt(_median(x['live_epoch_s']), 3)} / "
                   f"{_fmt(_median(x['preaugmented_epoch_s']), 3)} s per epoch)")
    for x in r.get("paper", []):
        out.append(f"  {x['table'] or '-'} {x['augmentation'][:4]} x{x['data_multiplier']} e{x['epochs']} "
                   f"b={x['batch_size']}: ours {_fmt(x['ours_s'], 2)} s, paper {_fmt(x['paper_s'])} s, "
                   f"paper/ours {_fmt(x['paper_over_ours'], 1)}")
    for x in r.get("switches", []):
        if "note" in x:
            out.append(f"  switch {x['switch']}: {x['note']}")
        else:
            out.append(f"  switch {x['switch']}={x['flipped']} b={x['batch_size']}: "
                       f"{_fmt(x['flipped_over_default'], 3)}x of default ({_fmt(x['default_samples_per_s'])}/s)")
    for b, p in r.get("profile", {}).items():
        out.append(f"  profile b={b}: eager {_fmt(p['eager_step_us'])} us/step, {p['profiled_time']} busy "
                   f"{_fmt(p['busy_us_per_step'])} us/step: " + "; ".join(
                       f"{x['name'][:48]} {x['us_per_step']:.0f}" for x in p["top"][:6]))
    for g in r.get("goals", []):
        out.append(f"  goal {g['goal']}: {_fmt(g['value'], 3)} {g['target']} -> "
                   f"{ {True: 'met', False: 'NOT met', None: 'n/a'}[g['met']] }")
    for k, v in r.get("errors", {}).items():
        out.append(f"  ERROR {k}: {v}")
    if r.get("skipped"):
        out.append(f"  not measured (time): {len(r['skipped'])} runs, e.g. {r['skipped'][0]}")
    return out


def _summary_cli(paths: list[str]) -> None:
    """`--summary FILE...`: prints what it can; the unreadable files are named on stderr. Exit 2 only when
    none is readable (the device check names files of stages that may have timed out and written nothing)."""
    if not paths:
        raise TornadoError("bench: --summary: name one or more result.json / bench.json files")
    unreadable: list[str] = []
    text = summary(paths, unreadable)
    if len(unreadable) == len(paths):
        raise TornadoError(f"bench: --summary: nothing readable: {'; '.join(unreadable)}")
    print(text)
    if unreadable:
        print(f"warning: bench: --summary: left out, not readable: {'; '.join(unreadable)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--summary"]:
        return run_cli(lambda: _summary_cli(argv[1:]))
    args = run_cli(lambda: parse_args(argv))
    import warnings

    import tornado.fit  # noqa: F401  (its logging and warning filters)

    warnings.filterwarnings("ignore", message=".*(does not have many workers|LeafSpec|srun|"
                                              "smaller than the logging interval).*")
    result = run_cli(lambda: bench(args))
    print(markdown(result))
    print(f"wrote {Path(args.out) / 'bench.json'} and bench.md")
    if result.get("errors"):
        print("error: " + "; ".join(f"section {k}: {v}" for k, v in result["errors"].items()), file=sys.stderr)
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
