"""Generic machinery behind the typed config dataclasses: field declarations with help text and
allowed ranges, validation that names the bad field, and dict/YAML/JSON conversion that rejects
unknown keys with a did-you-mean.

The concrete sections live in workbench/config.py; nothing here knows about distillation.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """One clear error for a bad config. `problems` holds (dotted field, message) pairs; `field` is the first."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        self.field = problems[0][0]
        lines = [f"{name}: {msg}" for name, msg in problems]
        super().__init__("invalid config:\n  " + "\n  ".join(lines) if len(lines) > 1 else "invalid config: " + lines[0])


def knob(default: Any = dataclasses.MISSING, help: str = "", *, choices: tuple | None = None,
         low: float | None = None, high: float | None = None, low_open: bool = False,
         high_open: bool = False, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field that carries its help text and its allowed values for validation and the UI."""
    meta = {"help": help, "choices": choices, "low": low, "high": high, "low_open": low_open, "high_open": high_open}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def describe_range(meta: dict) -> str:
    """'in [0, 1]', '> 0', 'one of a, b' ... as shown in errors and help."""
    if meta.get("choices"):
        return "one of " + ", ".join(str(c) for c in meta["choices"])
    low, high = meta.get("low"), meta.get("high")
    if low is not None and high is not None:
        return f"in {'(' if meta['low_open'] else '['}{low}, {high}{')' if meta['high_open'] else ']'}"
    if low is not None:
        return f"{'>' if meta['low_open'] else '>='} {low}"
    if high is not None:
        return f"{'<' if meta['high_open'] else '<='} {high}"
    return ""


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Convert a YAML/JSON scalar to the declared type, or raise ConfigError naming the field."""
    base, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError([(path, "must not be empty")])
    if dataclasses.is_dataclass(base):
        if isinstance(value, base):
            return value
        if not isinstance(value, dict):
            raise ConfigError([(path, f"expected a mapping of {base.__name__} fields, got {value!r}")])
        return from_dict(base, value, prefix=path + ".")
    if typing.get_origin(base) is list:
        item_tp = typing.get_args(base)[0]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError([(path, f"expected a list, got {value!r}")])
        return [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if base is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError([(path, f"expected true or false, got {value!r}")])
    if base is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError([(path, f"expected an integer, got {value!r}")])
        try:
            return int(value)
        except ValueError:
            raise ConfigError([(path, f"expected an integer, got {value!r}")]) from None
    if base is float:
        # YAML 1.1 reads `1e-4` (no dot) as a string; accept it as the number the user meant.
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError([(path, f"expected a number, got {value!r}")])
        try:
            return float(value)
        except ValueError:
            raise ConfigError([(path, f"expected a number, got {value!r}")]) from None
    if base is str:
        if isinstance(value, (dict, list, bool)):
            raise ConfigError([(path, f"expected text, got {value!r}")])
        return str(value)
    return value


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested dict; unknown keys are rejected with a did-you-mean."""
    if not isinstance(data, dict):
        raise ConfigError([(prefix.rstrip(".") or "config", f"expected a mapping, got {data!r}")])
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    problems: list[tuple[str, str]] = []
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys: {', '.join(fields)}"
            problems.append((f"{prefix}{key}", "unknown key" + hint))
            continue
        choices = fields[key].metadata.get("choices") or ()
        if isinstance(value, bool) and {"on", "off"} <= set(choices):
            value = "on" if value else "off"  # YAML 1.1 reads a bare on/off as a boolean
        try:
            kwargs[key] = _coerce(value, hints[key], prefix + key)
        except ConfigError as err:
            problems.extend(err.problems)
    if problems:
        raise ConfigError(problems)
    return cls(**kwargs)


def check_fields(obj: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Range and choice problems of every declared field, recursing into nested sections."""
    problems = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        path = prefix + f.name
        if dataclasses.is_dataclass(value):
            problems.extend(check_fields(value, path + "."))
            continue
        meta = f.metadata
        if value is None or not meta:
            continue
        if meta.get("choices") and value not in meta["choices"]:
            problems.append((path, f"{value!r} is not allowed; allowed: {describe_range(meta)}"))
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            low, high = meta.get("low"), meta.get("high")
            too_low = low is not None and (value <= low if meta["low_open"] else value < low)
            too_high = high is not None and (value >= high if meta["high_open"] else value > high)
            if too_low or too_high:
                problems.append((path, f"{value!r} is out of range; allowed: {describe_range(meta)}"))
    return problems


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def dump(obj: Any, path: str | Path) -> Path:
    """Write a config as YAML or JSON, chosen by the file's suffix."""
    path = Path(path)
    data = to_dict(obj)
    if path.suffix == ".json":
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    else:
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def load_mapping(path: str | Path) -> dict:
    """Read a YAML or JSON file into a dict, with an error that names the file on bad syntax."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([("config", f"file not found: {path}")])
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise ConfigError([("config", f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {err}")]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([("config", f"{path} must hold a mapping at the top level")])
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b=value` strings (value parsed as YAML) to a nested dict, as the CLI's --set does."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError([(item, "an override must look like section.key=value")])
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError([(key, f"'{part}' is not a section")])
        node[parts[-1]] = value
    return data


def help_text(cls: type) -> dict[str, str]:
    """Field name -> help text with its allowed range, for CLI --help and UI info lines."""
    out = {}
    for f in dataclasses.fields(cls):
        rng = describe_range(f.metadata) if f.metadata else ""
        out[f.name] = (f.metadata.get("help", "") + (f" ({rng})" if rng else "")).strip()
    return out
