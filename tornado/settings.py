"""A training run's settings and their checks, without Lightning: `validate(cfg)` for `tornado.train` and the sweep
launchers, and `refuse_early(argv)`, which refuses a bad single run's command line before Lightning loads (3-5 s)."""
from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from tornado.augment import AUGMENTATIONS
from tornado.cli import check_resolves, composition_error_line, counted, refuse_empty_folders, unknown_key
from tornado.data import find_files
from tornado.errors import TornadoError, is_int, is_number, run_cli, shown
from tornado.metrics import SCORES, VAL_SCORES
from tornado.prepare import DATA_KEYS, check_keys, check_present, parse_settings

ACCELERATORS = ("auto", "cpu", "gpu", "cuda")  # what `gpus` chooses between


def resolve_devices(cfg: DictConfig) -> tuple[str, int]:
    """(accelerator, devices) from `gpus` and `trainer.accelerator`; refuses GPUs that are not there."""
    gpus, accel = cfg.gpus, str(cfg.trainer.accelerator)
    if accel not in ACCELERATORS:
        raise TornadoError(f"trainer.accelerator={shown(accel)}: use one of {', '.join(ACCELERATORS)}")
    visible = torch.cuda.device_count()
    if gpus == "auto":
        gpus = visible if accel != "cpu" else 1
    if not is_int(gpus) or gpus < 0:
        raise TornadoError(f"gpus={shown(cfg.gpus)}: use 0 (CPU), a positive number of GPUs, or auto")
    if accel == "cpu":
        return "cpu", max(1, gpus)
    if gpus == 0:
        if accel in ("gpu", "cuda"):
            raise TornadoError("gpus=0 with trainer.accelerator=gpu: ask for at least one GPU")
        return "cpu", 1
    if gpus > visible:
        env = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f"CUDA_VISIBLE_DEVICES={env}" if env is not None else "CUDA_VISIBLE_DEVICES unset"
        raise TornadoError(f"gpus={gpus} asks for {counted(gpus, 'GPU')} but {visible} "
                           f"{'is' if visible == 1 else 'are'} visible ({where}); use gpus=0, or "
                           f"trainer.accelerator=cpu gpus={gpus} for {counted(gpus, 'CPU process', 'CPU processes')}")
    return "gpu", gpus


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


@functools.cache  # read once a process: a sweep validates every job (~16 ms a read)
def _known_keys() -> tuple[frozenset[str], frozenset[str], frozenset[str], frozenset[str]]:
    """Top-level keys of conf/train.yaml and its groups, the settings of its own a run needs (`~epochs` removes
    one), the `fast` switches and the `model` keys: anything else is a typo (Hydra takes `+epoch=5` and would
    train on, ignoring it). `data.*` is prepare's, `augment.*` augment's; `trainer.*` and `logger.*` go to
    Lightning, which refuses what it does not take."""
    base = OmegaConf.load(CONF_DIR / "train.yaml")
    groups = {k for d in base.defaults if not isinstance(d, str) for k in d}
    model = {k for p in (CONF_DIR / "model").glob("*.yaml") for k in OmegaConf.load(p)}
    own = frozenset(base) - {"defaults", "hydra"}
    return own | frozenset(groups) - {"experiment"}, own, frozenset(base.fast), frozenset(model)


# the trainer's settings a run reads itself (without `max_epochs` Lightning would train 1000 epochs)
TRAINER_NEEDS = frozenset({"_target_", "accelerator", "strategy", "max_epochs"})


def check_complete(cfg: DictConfig, resolve: bool = True) -> None:
    """Every group and setting a run reads is there (`~epochs`, `~model`, `~model.dropout`, `~logger`, `fast=5` are
    refused) and, with `resolve`, every interpolation resolves (`trainer.max_epochs='${epochz}'`), each named in one
    line."""
    _, needed, known_fast, known_model = _known_keys()
    for group in ("data", "augment", "model", "trainer", "logger", "fast"):
        node = cfg.get(group)
        if node is None:
            raise TornadoError(f"{group}: missing: a run needs this group of settings"
                               + (" (logger=none for no logger)" if group == "logger" else ""))
        if not isinstance(node, DictConfig):
            raise TornadoError(f"{group}={shown(node)}: must be a group of settings ({group}.<key>=...), not a value")
    missing = sorted(needed - set(cfg)) + [f"{group}.{k}" for group, keys in
                                           (("fast", known_fast), ("model", known_model), ("trainer", TRAINER_NEEDS))
                                           for k in sorted(keys - set(cfg[group]))]
    if missing:
        raise TornadoError(f"{missing[0]}: missing: a run needs this setting")
    check_present(cfg.data, cfg.augment, "a run", prefix="data.")
    if resolve:
        check_resolves(cfg)


def validate(cfg: DictConfig) -> None:
    """Refuses, in one line naming it, a setting the run would not read or could not use."""
    known, _, known_fast, known_model = _known_keys()
    for key in cfg:
        if key not in known:
            raise unknown_key(key, known)
    check_complete(cfg)
    for group, names in (("fast", known_fast), ("model", known_model)):
        for key in cfg[group]:
            if key not in names:
                raise unknown_key(f"{group}.{key}", {f"{group}.{k}" for k in names})
    check_keys(cfg.data, "data.")
    for key in ("epochs", "batch_size", "data_multiplier"):
        v = cfg[key]
        if not is_int(v) or v <= 0:
            raise TornadoError(f"{key}={shown(v)}: must be a positive integer")
    if not (is_number(cfg.lr) and 0 < cfg.lr < math.inf):
        raise TornadoError(f"lr={shown(cfg.lr)}: must be a positive number")
    if cfg.threads is not None and (not is_int(cfg.threads) or cfg.threads < 1):
        raise TornadoError(f"threads={shown(cfg.threads)}: must be a positive integer, or null for torch's default")
    dropout = cfg.model.get("dropout", 0.0)
    if not is_number(dropout) or not 0 <= dropout < 1:
        raise TornadoError(f"model.dropout={shown(dropout)}: must be a number in [0, 1)")
    pool3 = cfg.model.get("pool3", False)
    if not isinstance(pool3, bool):
        raise TornadoError(f"model.pool3={shown(pool3)}: must be true or false")
    weight = cfg.model.get("pos_weight", 1.0)
    if not is_number(weight) or not 0 < weight < math.inf:
        raise TornadoError(f"model.pos_weight={shown(weight)}: must be a positive number")
    for key in ("resume", "score_epochs"):
        if not isinstance(cfg.get(key, True), bool):
            raise TornadoError(f"{key}={shown(cfg[key])}: must be true or false")
    patience = cfg.get("patience")
    if patience is not None and (not is_int(patience) or patience < 1):
        raise TornadoError(f"patience={shown(patience)}: must be a positive number of epochs, or null to train every "
                           "epoch")
    if patience is not None and not cfg.get("score_epochs", True):
        raise TornadoError(f"patience={shown(patience)}: needs score_epochs=true (the validation ROC AUC it watches)")
    for key, value in cfg.fast.items():
        if key == "storage":
            ok, allowed = value in ("float32", "float16"), "float32, float16"
        else:
            ok, allowed = isinstance(value, bool) or value == "auto", "true, false, auto"
        if not ok:
            raise TornadoError(f"fast.{key}={shown(value)}: use one of {allowed}")
    for key, low in (("max_epochs", 1), ("num_sanity_val_steps", -1), ("log_every_n_steps", 1)):
        value = cfg.trainer.get(key)  # Lightning takes them as they come, and fails on them mid-fit
        if (value is not None or key == "max_epochs") and (not is_int(value) or value < low):
            raise TornadoError(f"trainer.{key}={shown(value)}: must be an integer >= {low}")
    limit = cfg.trainer.get("limit_train_batches")  # 0 trains nothing, and the run would score an untrained network
    if limit is not None and not ((is_int(limit) and limit >= 1) or (is_number(limit) and 0 < limit <= 1)):
        raise TornadoError(f"trainer.limit_train_batches={shown(limit)}: must be a number of batches >= 1, a "
                           "fraction in (0, 1], or null for all")
    for name, node in cfg.logger.items():  # `logger.csv=null` would reach Lightning as no logger at all
        if not isinstance(node, DictConfig):
            raise TornadoError(f"logger.{name}={shown(node)}: must be a logger's settings; "
                               f"~logger.{name} leaves it out")
        if "_target_" not in node:
            raise TornadoError(f"logger.{name}._target_: missing: a logger needs it; ~logger.{name} leaves it out")
    if cfg.augmentation not in AUGMENTATIONS:
        raise TornadoError(f"augmentation={shown(cfg.augmentation)}: unknown, use one of {', '.join(AUGMENTATIONS)}")
    if not is_int(cfg.seed) or not 0 <= cfg.seed < 2 ** 32:
        raise TornadoError(f"seed={shown(cfg.seed)}: must be an integer from 0 to 2^32 - 1 (0 is a valid seed)")
    if cfg.optimize_metric not in SCORES + VAL_SCORES:
        raise TornadoError(f"optimize_metric={shown(cfg.optimize_metric)}: unknown, use one of "
                           f"{', '.join(SCORES + VAL_SCORES)}")


@contextlib.contextmanager
def data_keys_named(cfg: DictConfig):
    """prepare's errors name its own keys (`split.val_fraction`); a training run's are `data.` keys."""
    try:
        yield
    except TornadoError as e:
        key = str(e).split(":", 1)[0].split(".", 1)[0]
        if key in cfg.data or key in DATA_KEYS:  # a removed one too (`~data.split`)
            raise TornadoError(f"data.{e}", code=e.code) from None
        raise


def refuse_early(argv: list[str]) -> None:
    """`python -m tornado.train key=value ...`: a setting the run would refuse before training is refused now, in
    the same words and with the same exit status, before Lightning loads and before Hydra makes the run's folder.

    Only a plain single run is checked here: a command with an option (`-m`, `--config-name`, `--help`) or a
    sweep's job (its launcher checked it) is left as it is, and so is what this cannot compose or resolve
    alike (Hydra's refusals where a `hydra.` setting is given, `${hydra:...}`): the run checks it all again. An empty
    `hydra.run.dir=` or `hydra.sweep.dir=` is refused on any command line."""
    from hydra import compose, initialize_config_dir

    run_cli(lambda: refuse_empty_folders(argv))
    if os.environ.get("TORNADO_SWEEP_DIR") or any(a.startswith("-") for a in argv):
        return
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3", job_name="train"):
            cfg = compose("train", overrides=argv, return_hydra_config=True)
        moves = cfg.hydra.job.chdir  # into the run's folder, which relative paths are then read from
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    except Exception as e:  # Hydra's refusal, said as the run says it, where no setting of Hydra's own is given
        line = composition_error_line(e, CONF_DIR, "train", argv)
        if line is not None and not any(a.lstrip("+~").startswith("hydra") for a in argv):
            print(f"error: {line}", file=sys.stderr)
            raise SystemExit(2) from None
        return
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # `${hydra:...}` resolves in the run only; what is missing (`~epochs`) is said now
        run_cli(lambda: check_complete(cfg, resolve=False))
        return

    def check() -> None:
        validate(cfg)
        if cfg.data.get("source") is not None and not (moves and not os.path.isabs(str(cfg.data.source))):
            find_files(cfg.data.source, key="data.source")
        resolve_devices(cfg)
        with data_keys_named(cfg):
            parse_settings(cfg.data, cfg.augment)

    run_cli(check)
