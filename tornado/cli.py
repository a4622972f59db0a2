"""Command lines: key=value arguments for the small commands that are not Hydra apps, and one-line errors
for the Hydra apps' own refusals."""
from __future__ import annotations

import difflib
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Callable

from tornado.errors import TornadoError, run_cli


def shown_path(path) -> str:
    """`path` relative to the working directory when it is under it, else as it is (as the docs show paths)."""
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


def python_command() -> str:
    """How to start this Python again from the working directory, for the next command a command suggests:
    `python` in an activated virtual environment (or outside any), else the environment's own python
    (`.venv/bin/python` after `make`, where a bare `python` lacks the packages)."""
    active = os.environ.get("VIRTUAL_ENV")
    if sys.prefix == sys.base_prefix or (active and os.path.realpath(active) == os.path.realpath(sys.prefix)):
        return "python"
    exe = os.path.relpath(sys.executable)
    return shlex.quote(sys.executable if exe.startswith("..") else exe)


def parse_kv(argv: list[str], defaults: dict[str, Any], positional: tuple[str, ...] = ()) -> dict[str, Any]:
    """`key=value` arguments over `defaults`, converted to each default's type (bools from
    true/false/1/0); the first bare arguments fill `positional` keys. Unknown keys are an error."""
    out = dict(defaults)
    free = list(positional)
    for arg in argv:
        if "=" not in arg:
            if not free:
                raise TornadoError(f"{arg}: expected key=value (keys: {', '.join(defaults)})")
            out[free.pop(0)] = arg
            continue
        key, value = arg.split("=", 1)
        if key not in defaults:
            close = closest(key, list(defaults))
            hint = f"did you mean {close}? " if close else ""
            raise TornadoError(f"{key}: unknown argument ({hint}keys: {', '.join(defaults)})")
        out[key] = convert(key, value, defaults[key])
    return out


def closest(word: str, names: list[str]) -> str | None:
    """The name `word` most likely misspells, if any is close."""
    close = difflib.get_close_matches(word, names, n=1)
    return close[0] if close else None


def unknown_key(key: str, known: list[str] | set[str]) -> TornadoError:
    """`key: no such setting (did you mean ...?)`, as Hydra's own refusal of `key=` reads: a setting nothing reads
    (Hydra's `+key=` adds any). The names are compared without their shared group (`data.label.`), which would make
    any two alike."""
    group, _, name = key.rpartition(".")
    names = {k.rpartition(".")[2]: k for k in known if k.rpartition(".")[0] == group}
    close = closest(name, sorted(names))
    return TornadoError(f"{key}: no such setting" + (f" (did you mean {names[close]}?)" if close else ""))


def counted(n: int, thing: str, things: str | None = None) -> str:
    """'1 job', '2 jobs': n and the noun, its plural (`things`, else an s added) unless n is 1."""
    return f"{n} {thing if n == 1 else things or thing + 's'}"


def hydra_quoted(value: str) -> str:
    """A Hydra override value read back as it is, spaces, commas and '=' included (one quoted string).

    Hydra reads backslashes before a quote in pairs (`\\'` is a quote, `\\\\'` a backslash and the closing quote),
    and the config then reads `${` as an interpolation unless escaped (`\\${`), backslashes before it in pairs too."""
    value = re.sub(r"(\\*)\$\{", lambda m: 2 * m.group(1) + "\\${", value)
    value = re.sub(r"(\\*)'", lambda m: 2 * m.group(1) + "\\'", value)
    return "'" + re.sub(r"(\\+)$", r"\1\1", value) + "'"


def override_text(key: str, value: Any) -> str:
    """`key=value` for a command line that the shell and Hydra both read back as it is (quoted where needed)."""
    value = str(value)
    if re.search(r"[^A-Za-z0-9_/.:@%*?|+$-]", value):  # what Hydra would split, parse or refuse
        value = hydra_quoted(value)
    return shlex.quote(f"{key}={value}")


def convert(key: str, value: str, default: Any) -> Any:
    kind: Callable[[str], Any] | None = type(default) if default is not None else None
    try:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        return kind(value) if kind is not None else value
    except ValueError:
        raise TornadoError(f"{key}={value}: expected a {kind.__name__}") from None


def run_hydra_app(main: Callable[[], Any], config_dir: Path, config_name: str,
                  refused: Callable[[Path, Any], Any] | None = None) -> None:
    """Run a `@hydra.main` app with Hydra's own input errors (a misspelled setting, a config option that does
    not exist, an override it cannot parse) as one `error:` line and exit 2, like every other bad input.
    `refused(folder, hydra_cfg)` removes a run folder Hydra made before it refused a setting of its own (the log's
    name: `hydra.job.name='${nope}'`)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises these instead of printing its own report of them
    run_cli(lambda: refuse_empty_folders(sys.argv[1:]))
    try:
        main()
    except OmegaConfBaseException as e:  # a setting of Hydra's own that does not resolve (`hydra.run.dir='${x}'`)
        key = str(e.full_key or "")  # none where Hydra resolved a copy (the launcher's settings): the one typed so
        typed = [k for k in (a.lstrip("+~").split("=", 1)[0] for a in sys.argv[1:] if "${" in a)
                 if k.startswith("hydra.")]
        if typed and (not key.startswith("hydra.") or (key not in typed and len(typed) == 1)):
            key = typed[0]  # what the user typed (`hydra.job.name`), not the setting made of it (the log's file name)
        elif not key.startswith("hydra."):
            key = ""
        if not key:
            raise  # the command's own settings are checked, and said, by the command
        print(f"error: {key}: {_first_line(e.msg or str(e))}", file=sys.stderr)
        from omegaconf import DictConfig, OmegaConf

        hc = OmegaConf.select(e.parent_node._get_root(), "hydra") if e.parent_node is not None else None
        made = OmegaConf.select(hc, "runtime.output_dir") if isinstance(hc, DictConfig) else None
        if refused is not None and made:  # Hydra made the folder before it found the setting
            refused(Path(made).resolve(), hc)
        raise SystemExit(2) from None
    except (OSError, ValueError, HydraException) as e:
        line = composition_error_line(e, config_dir, config_name, sys.argv[1:])
        if line is None and not isinstance(e, HydraException) and _raised_in(e, "_run_hydra"):
            line = _first_line(str(e))  # Hydra's command line misused: `-m --cfg job`, `--resolve` alone
        if line is not None:
            print(f"error: {line}", file=sys.stderr)
            raise SystemExit(2) from None
        if isinstance(e, HydraException):
            raise
        # the run's folder or log file, which Hydra makes, cannot be written
        cause = e if isinstance(e, OSError) else e.__cause__ or e.__context__
        if not isinstance(cause, OSError):
            raise
        print(f"error: {unwritable_text(cause)}", file=sys.stderr)
        raise SystemExit(2) from None


def check_resolves(cfg: Any) -> None:
    """Every interpolation of a command's settings resolves (`lr='${oc.env:NOPE}'`); the first that does not is
    refused in one line naming it."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        raise TornadoError(f"{e.full_key}: {_first_line(e.msg or str(e))}") from None


def composition_error_line(e: Exception, config_dir: Path, config_name: str, argv: list[str]) -> str | None:
    """The one line for Hydra's refusal of the settings `argv` gives (a misspelt setting, a missing option, an
    override it cannot read, a number where an option goes); None for any other error."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    if isinstance(e, (ConfigCompositionException, MissingConfigException, OverrideParseException)):
        return hydra_error_line(e, lambda: setting_names(config_dir, config_name))
    if isinstance(e, ValueError) and str(e).startswith("Config group override must be"):  # `data=5`
        return group_value_line(config_dir, argv) or _first_line(str(e))
    return None


def typed_overrides(hc: Any) -> list[str]:
    """The command's `hydra.*` overrides (of a HydraConfig) as typed: iterating them resolves any `${...}` they hold,
    which may not resolve where they are read (`hydra.sweep.subdir=j${hydra.job.num}` in the launcher)."""
    from omegaconf import OmegaConf

    return [str(o) for o in OmegaConf.to_container(hc.overrides.hydra, resolve=False)]


def names_run_dir(override: str) -> bool:
    """Whether a command-line override sets Hydra's run folder (`hydra.run.dir=`, `++hydra.run.dir=`)."""
    return override.lstrip("+").startswith("hydra.run.dir=")


def missing_folders(path: str | os.PathLike) -> set[str]:
    """`path` (resolved) and the folders above it that do not exist yet: those that making it would make."""
    path = Path(os.path.realpath(path))
    found = set()
    for p in (path, *path.parents):
        if p.exists():
            break
        found.add(str(p))
    return found


def remove_hydra_only_folder(out: Path, hc: Any, extra: tuple[str, ...] = (), made: set[str] = frozenset()) -> bool:
    """Removes the run folder `out` where it holds only what Hydra wrote there (the job's log, .hydra/*.yaml; `hc`:
    its HydraConfig) and `extra` (names in it), and the folders above it in `made` (`missing_folders` before the
    command made them) that are left empty: a refused command leaves nothing. Returns whether it did."""
    from omegaconf.errors import OmegaConfBaseException

    saved = out / hc.output_subdir if hc.output_subdir else None  # .hydra: the config Hydra wrote
    files = {out / name for name in extra}
    try:
        files.add(out / f"{hc.job.name}.log")
    except OmegaConfBaseException:  # `hydra.job.name='${nope}'`: refused before the log was made
        pass
    if saved is not None:
        files |= {saved / f"{name}.yaml" for name in ("config", "hydra", "overrides")}
    present = {p for p in out.rglob("*") if p != saved}
    if not present <= files:
        return False
    for f in present:
        f.unlink()
    if saved is not None and saved.exists():
        saved.rmdir()
    out.rmdir()
    for parent in out.parents:
        if str(parent) not in made or any(parent.iterdir()):
            break
        parent.rmdir()
    return True


def folder_fault(folder: str | os.PathLike, e: OSError) -> str:
    """Why `folder` could not be made: the file in its way where one is (`a is a file`), else the system's reason."""
    folder = Path(folder)
    above = next((p for p in (folder, *folder.parents) if p.exists()), None)
    return f"{above} is a file" if above is not None and not above.is_dir() else (e.strerror or str(e))


EMPTY_REFUSED = ("hydra.run.dir", "hydra.sweep.dir")  # empty, Hydra takes the working directory


def refuse_empty_folders(argv: list[str]) -> None:
    """`hydra.run.dir=` or `hydra.sweep.dir=` given empty (`=$DIR`, DIR unset), which Hydra would take as the working
    directory and write the run or sweep into, is refused naming it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    for arg in argv:
        key, eq, _ = arg.lstrip("+").partition("=")
        if not eq or key not in EMPTY_REFUSED:
            continue
        try:
            value = OverridesParser.create().parse_override(arg).value()
        except HydraException:  # Hydra refuses it itself
            continue
        if isinstance(value, str) and not value.strip():
            raise TornadoError(f"{key}=: must name a folder (leave the setting out for the default)")


def unwritable_text(e: OSError, where: Any = None) -> str:
    """A run's or sweep's folder that cannot be made or written, and the setting that chooses another."""
    place = f"{e.filename or where}: " if e.filename or where else ""
    return (f"{place}cannot write there ({e.strerror or e}); hydra.run.dir= (hydra.sweep.dir= for a sweep) sets "
            "another folder")


def group_value_line(config_dir: Path, argv: list[str]) -> str | None:
    """The first override that gives a config group (a folder of conf/) what Hydra refuses there: a value that is
    not a name (`data=5`), also among a sweep's (`model=paper,paper_code` is not one)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, Glob, Sweep

    for arg in argv:
        key, eq, _ = arg.lstrip("+~").partition("=")
        folder = config_dir / key
        options = sorted(p.stem for p in folder.glob("*.yaml")) if eq and folder.is_dir() else []
        try:
            given = OverridesParser.create().parse_overrides([arg])[0].value() if options else None
        except Exception:  # not an override Hydra reads: another error
            continue
        values = given.list if isinstance(given, ChoiceSweep) else [] if isinstance(given, (Sweep, Glob)) else [given]
        if options and not all(isinstance(v, (str, list, dict)) for v in values):
            return f"{arg}: {key} names a file of conf/{key}/: use one of {', '.join(options)}"
    return None


def _raised_in(e: BaseException, function: str) -> bool:
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_name == function


def hydra_error_line(e: Exception, names: Callable[[], list[str]]) -> str:
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(e, MissingConfigException) and e.missing_cfg_file and "/" in e.missing_cfg_file:
        group, option = e.missing_cfg_file.rsplit("/", 1)
        known = f" (use one of {', '.join(e.options)})" if e.options else ""
        return f"{group}={option}: no such option in conf/{group}/{known}"
    if isinstance(e, OverrideParseException):
        return f"{e.override}: not an override Hydra can read ({_first_line(e.message)})"
    m = re.match(r"Could not override '([^']+)'\.\s*To append", str(e))
    if m:
        try:
            close = closest(m.group(1), names())
        except Exception:  # the suggestion is a courtesy: never let it hide the error
            close = None
        return f"{m.group(1)}: no such setting" + (f" (did you mean {close}?)" if close else "")
    m = re.match(r"Could not delete from config\. '([^']+)' does not exist", str(e))
    if m and not m.group(1).startswith("hydra"):  # Hydra says so of a setting whose value is null, too
        try:
            known = names()
        except Exception:  # as above
            known = None
        if known is not None and m.group(1) in known:
            return f"~{m.group(1)}: its value is null: Hydra removes only a setting that holds a value"
        close = closest(m.group(1), known) if known else None
        return f"~{m.group(1)}: no such setting" + (f" (did you mean {close}?)" if close else "")
    cause = f": {_first_line(str(e.__cause__))}" if e.__cause__ is not None else ""
    return _first_line(str(e)) + cause


def setting_names(config_dir: Path, config_name: str) -> list[str]:
    """Every setting of the default config, dotted (`data.split.val_fraction`), Hydra's own left out."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from tornado.records import flatten

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose(config_name)
    return sorted(flatten(OmegaConf.to_container(cfg, resolve=False)))


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
