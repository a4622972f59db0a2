"""key=value command lines for the small commands that are not Hydra apps."""
from __future__ import annotations

from typing import Any, Callable

from tornado.errors import TornadoError


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
            raise TornadoError(f"{key}: unknown argument (keys: {', '.join(defaults)})")
        out[key] = _convert(key, value, defaults[key])
    return out


def _convert(key: str, value: str, default: Any) -> Any:
    kind: Callable[[str], Any] | None = type(default) if default is not None else None
    try:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        return kind(value) if kind is not None else value
    except ValueError:
        raise TornadoError(f"{key}={value}: expected a {kind.__name__}") from None
