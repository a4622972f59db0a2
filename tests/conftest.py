"""Shared fixtures.

Sweep tests (tests/test_sweep_*.py) use the `sweep_*` fixtures and `slurm_cluster`.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SWEEP_FAKE_APP = REPO / "tests" / "apps"  # tornado_fake_train: tornado.train's run contract without training


def _sweep_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SWEEP_FAKE_APP), env.get("PYTHONPATH")]))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.pop("TORNADO_SWEEP_DIR", None)
    env.update(extra or {})
    return env


@pytest.fixture
def sweep_cli():
    """run(args, module=..., cwd=..., env=...) -> CompletedProcess of `python -m module args` (fake app by default)."""
    def run(args: list[str], module: str = "tornado_fake_train", cwd: Path = REPO, env: dict | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=_sweep_env(env),
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return run


@pytest.fixture
def sweep_popen():
    """start(args, ...) -> Popen of a sweep CLI in the background (stdout/stderr piped); killed at teardown."""
    procs: list[subprocess.Popen] = []

    def start(args: list[str], module: str = "tornado_fake_train", cwd: Path = REPO,
              env: dict | None = None) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=_sweep_env(env),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.fixture
def on_terminal():
    """run(args) -> (exit code, what a terminal 160 columns wide showed) of `python -m args` with its stdout
    and stderr on a pseudo-terminal: where progress bars are drawn. The fake sweep app is importable."""
    import fcntl
    import pty
    import struct
    import termios

    def run(args: list[str], cwd: Path = REPO, timeout: float = 300) -> tuple[int, str]:
        env = {**_sweep_env(), "PYTHONUNBUFFERED": "1"}
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a bar needs a width
        proc = subprocess.Popen([sys.executable, "-m", *map(str, args)], cwd=cwd, env=env,
                                stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
        os.close(slave)
        shown = b""
        while True:
            try:
                chunk = os.read(master, 1 << 16)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            shown += chunk
        os.close(master)
        return proc.wait(timeout=timeout), shown.decode(errors="replace")
    return run


@pytest.fixture(scope="session")
def sweep_data_dir(tmp_path_factory) -> Path:
    """One small prepared data set shared by the sweep tests that run the real tornado.train."""
    return tmp_path_factory.mktemp("sweep_data")


@pytest.fixture(scope="session")
def sweep_train_overrides(sweep_data_dir) -> list[str]:
    """Overrides for fast real `tornado.train` jobs: tiny synthetic data, one epoch, one thread."""
    return [f"data.out_dir={sweep_data_dir}", "data.synth.days=10", "data.synth.patches_per_day=160",
            "epochs=1", "threads=1", "logger=none"]


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """The partition of a running SLURM cluster; skips without one, fails with TORNADO_REQUIRE_SLURM=1."""
    why = None
    if shutil.which("sinfo") is None:
        why = "sinfo not found"
    else:
        r = subprocess.run(["sinfo", "-h", "-o", "%P %T"], capture_output=True, text=True, timeout=60)
        lines = [ln.split() for ln in r.stdout.splitlines() if ln.strip()]
        if r.returncode != 0:
            why = f"sinfo failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}"
        elif not any(state.rstrip("*~#") in ("idle", "mixed", "allocated", "completing") for _, state in lines):
            why = f"no node takes jobs (sinfo: {r.stdout.strip()!r})"
    if why:
        msg = f"no SLURM cluster: {why}; start one with: bash launchers/slurm_local.sh start"
        if os.environ.get("TORNADO_REQUIRE_SLURM") == "1":
            pytest.fail(f"{msg} (TORNADO_REQUIRE_SLURM=1)")
        pytest.skip(msg)
    default = [p for p, _ in lines if p.endswith("*")]
    return (default or [lines[0][0]])[0].rstrip("*")
