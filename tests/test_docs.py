"""The documented commands: every `python -m tornado.train` / `tornado.prepare` line in README.md and docs/
composes with Hydra and passes the settings checks (a renamed key or option fails here, not a reader)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import open_dict

from tornado.prepare import parse_settings
from tornado.train import CONF_DIR, validate

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(where, command, arguments) of each command line inside the docs' code blocks."""
    out = []
    for doc in DOCS:
        in_code, pending = False, ""
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            if line.startswith("```"):
                in_code = not in_code
                continue
            if not in_code:
                continue
            line = pending + line
            if line.rstrip().endswith("\\"):
                pending = line.rstrip()[:-1] + " "
                continue
            pending = ""
            m = re.match(r"(?:\.venv/bin/)?python3? -m tornado\.(train|prepare)\b(.*)", line.strip())
            if m and "<" not in line and "…" not in line:
                args = shlex.split(m.group(2), comments=True)
                out.append((f"{doc.name}:{n}", m.group(1), [a for a in args if a != "-m"]))
    return out


def first_of_each_sweep(args: list[str]) -> list[str]:
    """A sweep's overrides with the first value of each swept one: one job's overrides."""
    parsed = OverridesParser.create().parse_overrides(args)
    return [f"{o.get_key_element()}={next(o.sweep_string_iterator())}" if o.is_sweep_override() else o.input_line
            for o in parsed]


COMMANDS = documented_commands()


def test_the_docs_show_commands_of_both_apps():
    assert {c for _, c, _ in COMMANDS} == {"train", "prepare"} and len(COMMANDS) >= 20


@pytest.mark.parametrize("where, command, args", COMMANDS, ids=[w for w, _, _ in COMMANDS])
def test_a_documented_command_composes_and_passes_the_settings_checks(where, command, args):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(command, overrides=first_of_each_sweep(args), return_hydra_config=True)  # hydra.* too
    with open_dict(cfg):
        cfg.pop("hydra")  # what the app itself is given
    if command == "train":
        validate(cfg)
    data = cfg.data if command == "train" else cfg
    parse_settings(data, cfg.get("augment"))  # the data and augment settings (files are not looked for)
