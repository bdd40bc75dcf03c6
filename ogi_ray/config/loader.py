"""Strict YAML → dataclass conversion with errors that name the file and the field.

Supported field types: bool, int, float, str, ``X | None``, ``list[X]``, ``dict[str, X]``,
``Literal[...]`` and nested dataclasses. A dataclass may define ``validate(self) -> None``
that raises ``ValueError``; the message is re-raised as a ConfigError at that field.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


COMMAND_LINE = "command line"


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid.

    ``file`` is the YAML file (or ``"command line"`` for a ``key=value`` override),
    ``field`` the dotted key path. ``problems`` holds every error found at once (this
    one first); ``str()`` lists them all.
    """

    def __init__(self, file: str | Path | None, field: str, message: str) -> None:
        self.file = str(file) if file is not None else "<config>"
        self.field = field
        self.message = message
        self.problems: list[ConfigError] = [self]
        super().__init__(self.line)

    @property
    def line(self) -> str:
        where = f"{self.file}: {self.field}" if self.field else self.file
        return f"{where}: {self.message}"

    @classmethod
    def many(cls, errors: list[ConfigError]) -> ConfigError:
        """One error carrying several problems (the first one's file, field, message)."""
        flat = [p for e in errors for p in e.problems]
        if len(flat) == 1:
            return flat[0]
        first = flat[0]
        err = cls(first.file, first.field, first.message)
        err.problems = flat
        err.args = (f"{len(flat)} problems:\n  " + "\n  ".join(p.line for p in flat),)
        return err


def blame_overrides(err: ConfigError, overrides: typing.Sequence[str]) -> ConfigError:
    """The same problems, each one at or below an override's key blamed on the command
    line (with the override as typed) instead of on the YAML file."""
    keys = [(o.partition("=")[0], o) for o in overrides]
    out = []
    for p in err.problems:
        hit = next((o for k, o in keys if p.field == k or p.field.startswith(k + ".")), None)
        out.append(ConfigError(COMMAND_LINE, p.field, f"{p.message} (from `{hit}`)") if hit else p)
    return ConfigError.many(out)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a parse error or a non-mapping top level is a ConfigError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(path, "", f"cannot read file ({e.strerror})") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(path, "", f"malformed YAML{line}: {e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, "", f"top level must be a mapping, got {type(data).__name__}")
    return data


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, file: str | Path | None, field: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, file, field)
            except ConfigError as e:
                errors.append(e.message)
        raise ConfigError(file, field, "; ".join(errors))
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(file, field, f"must be one of {list(allowed)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(file, field, f"expected a list, got {type(value).__name__}")
        (item_tp,) = get_args(tp) or (Any,)
        return [_convert(item_tp, v, file, f"{field}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(file, field, f"expected a mapping, got {type(value).__name__}")
        key_tp, val_tp = get_args(tp) or (str, Any)
        return {
            _convert(key_tp, k, file, f"{field}.{k}"): _convert(val_tp, v, file, f"{field}.{k}")
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, file=file, prefix=field)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(file, field, f"expected a boolean, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(file, field, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        # YAML reads 1e-3 as a string (no dot in mantissa); accept numeric strings.
        if isinstance(value, bool):
            raise ConfigError(file, field, f"expected a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(file, field, f"expected a number, got {value!r}")
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(file, field, f"expected a string, got {value!r}")
        return value
    raise ConfigError(file, field, f"unsupported field type {_type_name(tp)}")


def from_dict(
    cls: type[T], data: Any, *, file: str | Path | None = None, prefix: str = ""
) -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(file, prefix, f"expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    errors = [ConfigError(file, f"{prefix}.{k}" if prefix else str(k), f"unknown key (allowed: {', '.join(sorted(fields))})")
              for k in sorted(set(data) - set(fields), key=str)]  # fmt: skip
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            try:
                kwargs[name] = _convert(hints[name], data[name], file, key)
            except ConfigError as e:  # every field's problems are reported at once
                errors.append(e)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            errors.append(ConfigError(file, key, "required key is missing"))
    if errors:
        raise ConfigError.many(errors)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError:
            raise
        except ValueError as e:
            # validate() messages start with the field name: "steps: must be > 0".
            msg = str(e)
            sub, _, rest = msg.partition(": ")
            if rest and sub in fields:
                raise ConfigError(file, f"{prefix}.{sub}" if prefix else sub, rest) from e
            raise ConfigError(file, prefix, msg) from e
    return obj


def to_dict(obj: Any) -> Any:
    """Dataclass (nested) → plain dict/list/scalars, suitable for YAML/JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def apply_overrides(data: dict[str, Any], overrides: typing.Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested mapping, in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(COMMAND_LINE, item, "an override must look like key.path=value")
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(COMMAND_LINE, key, f"{p} is not a mapping")
        node[parts[-1]] = yaml.safe_load(raw)
    return data
