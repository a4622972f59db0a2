"""The small commands' key=value arguments, counted nouns in their messages, and how a command stops."""
import os
import shlex
import signal
from pathlib import Path

import pytest

from tornado.cli import counted, override_text, parse_kv, python_command
from tornado.errors import TornadoError, run_cli, stop_if_signalled

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = {"rows": "batch_size", "cols": "data_multiplier", "target": 0.93, "partial": False, "out": None}


def test_values_take_each_defaults_type_and_positional_keys_fill_first():
    got = parse_kv(["target=0.5", "partial=yes", "out=x", "a_dir"], {"where": None, **DEFAULTS}, positional=("where",))
    assert got == {"where": "a_dir", "rows": "batch_size", "cols": "data_multiplier", "target": 0.5, "partial": True,
                   "out": "x"}
    with pytest.raises(TornadoError, match=r"^target=high: expected a float$"):
        parse_kv(["target=high"], DEFAULTS)
    with pytest.raises(TornadoError, match=r"^partial=maybe: expected a bool$"):
        parse_kv(["partial=maybe"], DEFAULTS)


def test_a_misspelt_key_is_refused_with_the_closest_one():
    with pytest.raises(TornadoError, match=r"^colls: unknown argument \(did you mean cols\? keys: rows, cols, "):
        parse_kv(["colls=epochs"], DEFAULTS)
    with pytest.raises(TornadoError, match=r"^zzz: unknown argument \(keys: rows, "):
        parse_kv(["zzz=1"], DEFAULTS)


@pytest.mark.parametrize("path", ["/plain/dir", "/my runs/a,b=c", "/it's [x] {y}", "/a\\b", "/home/jürgen/runs",
                                  "~/runs", "/runs#2", "/a&b;c", "C:\\runs\\", "/it\\'s\\\\", "/runs/${now:%H}",
                                  "/a\\${x}/$y\\\\${z}\\"])
def test_an_override_in_a_hint_reads_back_as_the_same_value(path):
    """Through the shell, Hydra's override parser and the config it sets (where `${` is an interpolation)."""
    from hydra import compose, initialize_config_dir

    text = override_text("out_dir", path)
    assert (text == f"out_dir={path}") == (path == "/plain/dir")  # quoted only where it must be
    (arg,) = shlex.split(text)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        assert compose("prepare", overrides=[arg]).out_dir == path


def test_counted_says_one_thing_or_many():
    assert [counted(n, "job") for n in (0, 1, 2)] == ["0 jobs", "1 job", "2 jobs"]
    assert [counted(n, "epoch") for n in (1, 3)] == ["1 epoch", "3 epochs"]
    assert [counted(n, "CPU process", "CPU processes") for n in (1, 3)] == ["1 CPU process", "3 CPU processes"]
    assert counted(1, "NCARSTORM file") == "1 NCARSTORM file"


def test_integers_and_numbers_are_never_bools():
    import numpy as np

    from tornado.errors import is_int, is_number

    assert is_int(3) and is_int(np.int64(3)) and not is_int(True) and not is_int(3.0)
    assert is_number(0.5) and is_number(np.float32(0.5)) and is_number(2) and not is_number(False)
    assert not is_number("1")


def test_a_command_s_error_ends_as_one_line_with_its_exit_status(tmp_path, capsys):
    from tornado.errors import IN_USE

    def refused():
        raise TornadoError("run: in use by another training process", code=IN_USE)

    def unwritable():
        open(tmp_path / "no" / "such" / "folder.csv", "w")

    for body, code, line in [(refused, IN_USE, "error: run: in use by another training process"),
                             (unwritable, 2, f"error: {tmp_path / 'no' / 'such' / 'folder.csv'}: No such file or "
                                             "directory (FileNotFoundError)")]:
        with pytest.raises(SystemExit) as stopped:
            run_cli(body)
        assert stopped.value.code == code and capsys.readouterr().err == line + "\n"


def test_a_process_that_dies_with_its_parent_gets_sigterm(tmp_path):
    """A sweep's job ends with its launcher, even one killed outright (SIGKILL gives it no chance to stop it)."""
    import subprocess
    import sys
    import time

    child = ("import time; from tornado.errors import die_with_parent; die_with_parent(); "
             f"open({str(tmp_path / 'ready')!r}, 'w').close(); time.sleep(120)")
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; "
                               f"p = subprocess.Popen([sys.executable, '-c', {child!r}]); print(p.pid, flush=True); "
                               "p.wait()"], stdout=subprocess.PIPE, text=True)
    pid = int(parent.stdout.readline())
    deadline = time.time() + 60
    while not (tmp_path / "ready").exists() and time.time() < deadline:
        time.sleep(0.05)
    parent.send_signal(signal.SIGKILL)
    parent.wait()

    def alive() -> bool:
        try:
            state = open(f"/proc/{pid}/status").read().split("State:")[1].split()[0]
        except (OSError, IndexError):
            return False
        return state != "Z"
    deadline = time.time() + 10
    while alive() and time.time() < deadline:
        time.sleep(0.05)
    if alive():
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the child outlived its parent")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed one, on purpose
@pytest.mark.parametrize("signum, code, line", [(signal.SIGINT, 130, "error: interrupted (Ctrl-C)"),
                                                (signal.SIGTERM, 143, "error: interrupted (SIGTERM)")])
def test_a_signal_whose_exception_a_destructor_swallowed_still_stops_the_command(signum, code, line, capsys):
    class Writer:  # as h5py's teardown callbacks, where Python prints an exception and goes on
        def __del__(self):
            os.kill(os.getpid(), signum)
            sum(range(1000))  # the handler runs here, inside __del__

    def body():
        Writer()
        stop_if_signalled()  # between two steps of long work
        return "went on"

    with pytest.raises(SystemExit) as stopped:
        run_cli(body)
    assert stopped.value.code == code and capsys.readouterr().err.strip().splitlines()[-1] == line
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers as they were
    assert run_cli(lambda: "ok") == "ok"  # and the next command starts afresh


def test_ctrl_c_while_a_command_imports_is_one_line():
    import subprocess
    import sys

    # as `python -m tornado.train` is while it imports torch, before its own handling starts
    code = ("import os, signal, sys; sys.argv[:1] = ['-m']; import tornado; os.kill(os.getpid(), signal.SIGINT); "
            "import time; time.sleep(30)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.stderr == "error: interrupted (Ctrl-C)\n" and p.returncode == -signal.SIGINT  # 130 in a shell


def test_the_next_command_suggested_names_the_python_that_has_the_packages(monkeypatch, tmp_path):
    import sys

    venv = tmp_path / ".venv"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "base_prefix", "/usr")
    monkeypatch.setattr(sys, "prefix", str(venv))
    monkeypatch.setattr(sys, "executable", str(venv / "bin" / "python"))
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    assert python_command() == ".venv/bin/python"  # after `make`, not activated: a bare `python` lacks the packages
    monkeypatch.setenv("VIRTUAL_ENV", str(venv))
    assert python_command() == "python"  # `source .venv/bin/activate`
    monkeypatch.setattr(sys, "prefix", "/usr")
    monkeypatch.delenv("VIRTUAL_ENV")
    assert python_command() == "python"  # no virtual environment


@pytest.mark.parametrize("missing", ["omegaconf", "torch"])
def test_a_command_started_with_a_python_lacking_the_packages_says_so_in_one_line(missing):
    import subprocess
    import sys

    # as `python -m tornado.report` is after `make` when `python` is not the venv's
    code = (f"import sys; sys.modules[{missing!r}] = None; sys.argv[:1] = ['-m']; import tornado; "
            f"import tornado.train")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr == (f"error: {missing}: not installed for {sys.executable}; use the Python `make` set up, "
                        ".venv/bin/python (or `source .venv/bin/activate` first)\n")
