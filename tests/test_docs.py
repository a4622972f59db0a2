"""The documented commands: every `python -m tornado.<app>` line in README.md, BENCHMARKS.md and docs/ (code blocks
and inline code) is checked: train and prepare lines compose with Hydra and pass the settings checks, report lines
build a report of a sweep with the usual settings, and the other apps parse their arguments. A renamed key or
option fails here, not a reader."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

from tornado import bench, collect, predict, report, synth
from tornado.cli import parse_kv
from tornado.prepare import parse_settings
from tornado.settings import CONF_DIR, validate

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"(?:\.venv/bin/)?python3? -m tornado\.(\w+)\b(.*)")


def documented_commands() -> list[tuple[str, str, str]]:
    """(where, app, argument text) of each command inside the docs' code blocks and inline code."""
    out = []
    for doc in DOCS:
        in_code, pending = False, ""
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            if line.startswith("```"):
                in_code = not in_code
                continue
            if not in_code:
                out += [(f"{doc.name}:{n}", m.group(1), m.group(2))
                        for span in re.findall(r"`([^`]+)`", line) if (m := COMMAND.fullmatch(span.strip()))]
                continue
            line = pending + line
            if line.rstrip().endswith("\\"):
                pending = line.rstrip()[:-1] + " "
                continue
            pending = ""
            if m := COMMAND.match(line.strip()):
                out.append((f"{doc.name}:{n}", m.group(1), m.group(2)))
    return out


def first_of_each_sweep(args: list[str]) -> list[str]:
    """A sweep's overrides with the first value of each swept one: one job's overrides."""
    parsed = OverridesParser.create().parse_overrides(args)
    return [f"{o.get_key_element()}={next(o.sweep_string_iterator())}" if o.is_sweep_override() else o.input_line
            for o in parsed]


def help_commands() -> list[tuple[str, str, str]]:
    """(where, app, argument text) of each example in the `--help` headers of conf/train.yaml and prepare.yaml."""
    out = []
    for name in ("train", "prepare"):
        header = OmegaConf.load(CONF_DIR / f"{name}.yaml").hydra.help._get_node("header")._value()
        for line in (line for line in header.splitlines() if line.startswith("  ")):  # the indented examples
            if m := COMMAND.match(line.strip().replace("${hydra.help.app_name}", f"python -m tornado.{name}")):
                out.append((f"{name} --help", m.group(1), re.split(r"\s{3,}", m.group(2))[0]))
    return out


ALL = documented_commands() + help_commands()
COMMANDS = [(where, app, [a for a in shlex.split(text, comments=True) if a != "-m"])
            for where, app, text in ALL if app in ("train", "prepare") and "<" not in text and "…" not in text
            and "..." not in text and shlex.split(text, comments=True) != ["--help"]]  # --help: its own test
OTHERS = [(where, app, shlex.split(text, comments=True)) for where, app, text in ALL
          if app not in ("train", "prepare")]


def test_the_help_of_train_and_prepare_says_what_they_do_with_examples():
    assert [app for _, app, _ in help_commands()] == ["train"] * 4 + ["prepare"]
    out = subprocess.run([sys.executable, "-m", "tornado.train", "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=300).stdout
    assert out.startswith("python -m tornado.train: trains the storm CNN") and "python -m tornado.report" in out
    assert "  python -m tornado.train -m batch_size=128,256 gpus=1,2 " in out and "powered by Hydra" not in out


def test_the_docs_show_commands_of_every_app():
    assert {app for _, app, _ in ALL} == {"train", "prepare", "report", "predict", "collect", "bench", "synth"}
    assert len(COMMANDS) >= 20 and len([o for o in OTHERS if o[1] == "report"]) >= 5


@pytest.mark.parametrize("where, command, args", COMMANDS, ids=[w for w, _, _ in COMMANDS])
def test_a_documented_command_composes_and_passes_the_settings_checks(where, command, args):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(command, overrides=first_of_each_sweep(args), return_hydra_config=True)  # hydra.* too
    with open_dict(cfg):
        cfg.pop("hydra")  # what the app itself is given
    if command == "train":
        validate(cfg)
    data = cfg.data if command == "train" else OmegaConf.masked_copy(cfg, [k for k in cfg if k != "augment"])
    parse_settings(data, cfg.get("augment"))  # the data and augment settings (files are not looked for)


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> list[Path]:
    """Two finished sweeps (preaugmented, live) of 2 x 2 x 2 x 2 jobs (epochs, batch_size, data_multiplier, gpus)
    as tornado.train leaves them: result.json with a per-epoch history (training accuracy, validation ROC AUC)
    and test predictions."""
    base = tmp_path_factory.mktemp("documented")
    return [_sweep(base / augmentation, augmentation) for augmentation in ("preaugmented", "live")]


def _sweep(root: Path, augmentation: str) -> Path:
    rng = np.random.default_rng(0)
    grid = [(e, b, m, g) for e in (1, 2) for b in (128, 256) for m in (1, 2) for g in (1, 2)]
    for job, (epochs, batch, mult, gpus) in enumerate(grid):
        out = root / str(job)
        out.mkdir(parents=True)
        history = [{"epoch": i, "train_loss": 0.3, "train_acc": 0.9 + 0.03 * i, "epoch_s": 2.0 * mult / gpus,
                    "val_roc_auc": 0.7 + 0.05 * i + 0.01 * job % 3} for i in range(epochs)]
        result = {"status": "ok", "error": None, "output_dir": str(out), "config_hash": f"h{job}",
                  "hparams": {"epochs": epochs, "batch_size": batch, "data_multiplier": mult, "gpus": gpus, "seed": 0,
                              "augmentation": augmentation, "lr": 0.001},
                  "metrics": {"accuracy": 0.95, "roc_auc": 0.8 + 0.005 * job, "val_roc_auc": history[-1]["val_roc_auc"],
                              "val_n": 1500, "val_positives": 70, "threshold": 0.3},
                  "times": {"total_s": 10.0, "wall_s": 2.0 * mult * epochs / gpus,
                            "epoch_s": [h["epoch_s"] for h in history]},
                  "history": history, "data": {"n_train": 13500, "samples_per_epoch": 13500 * mult},
                  "devices": {"accelerator": "gpu", "count": gpus}}
        (out / "result.json").write_text(json.dumps(result))
        label = (np.arange(200) % 10 == 0).astype(np.uint8)
        np.savez(out / "test_predictions.npz", prob=np.clip(0.1 + 0.6 * label + 0.2 * rng.random(200), 0, 1),
                 label=label)
    collect.collect(root)
    return root


@pytest.mark.parametrize("where, app, args", OTHERS, ids=[w for w, _, _ in OTHERS])
def test_a_documented_command_of_the_other_apps_takes_its_arguments(where, app, args, sweeps, tmp_path):
    if app == "report":  # on the sweeps above, or one of their runs where the docs show a run's folder
        settings = parse_kv([a for a in args if "=" in a], report.DEFAULTS)
        given = [a for a in args if "=" not in a]
        folders = [sweeps[0] / "0" if "runs" in d else sweeps[i] for i, d in enumerate(given)]
        written = report.build_report(folders, **settings | {"out": tmp_path})
        assert written["report.html"].stat().st_size > 0
    elif app == "predict":
        assert parse_kv(args, predict.DEFAULTS)["checkpoint"]
    elif app == "collect":
        assert collect.parse_args(args).sweep_dir
    elif app == "bench":
        assert bench.parse_args(args).sections
    else:
        synth.parse_args(args)
