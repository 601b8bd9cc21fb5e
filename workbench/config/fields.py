"""Generic machinery behind the typed config dataclasses: field declarations with help text and
allowed ranges, validation that names the bad field, and dict/YAML/JSON conversion that rejects
unknown keys with a did-you-mean.

The concrete sections live in workbench/config/schema.py; nothing here knows about distillation.
"""
from __future__ import annotations

import dataclasses
import datetime
import difflib
import json
import math
import reprlib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

MAX_TEXT = 4096       # characters in one text field (a path, an id, a prompt): PATH_MAX on Linux
MAX_ITEMS = 1024      # items in one list field
MAX_FILE_BYTES = 8 * 2**20  # a config file bigger than this is not a config
_INT64 = 2**63


class ConfigError(ValueError):
    """One clear error for a bad config. `problems` holds (dotted field, message) pairs; `field` is the first."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        self.field = problems[0][0]
        lines = [f"{name}: {msg}" for name, msg in problems]
        super().__init__("invalid config:\n  " + "\n  ".join(lines) if len(lines) > 1 else "invalid config: " + lines[0])


_SHORT = reprlib.Repr()  # Python 3.11 takes no arguments: the limits are set below
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict = 3, 80, 80, 6, 6
_SHORT.maxlong = 80


def show(value: Any, limit: int = 80) -> str:
    """repr of a value for an error message, cut to `limit` characters: a 10 MB string pasted into a field
    must not come back in the message, and a huge nested value is never turned into text whole."""
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + f"... ({len(value):,} characters)"
    text = _SHORT.repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _bound(x: float) -> str:
    return f"{x:,}" if isinstance(x, int) else f"{x:g}"


def whole_problem(value: Any, low: int, high: int, limit: int = 80) -> str | None:
    """What is wrong with `value` as an int in [low, high] (a bool or a float is not one), or None. For fields read
    back from JSON files, where 32.0 is not a count; number_in is the check for a form's values."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return f"must be a whole number from {low} to {high:,}, got {show(value, limit)}"
    return None


def number_in(value: Any, field: str, low: float, high: float, *, whole: bool = False,
              open_low: bool = False) -> Any:
    """`value` as a finite number in [low, high] ((low, high] if `open_low`), an int if `whole` (a whole float
    passes: a gr.Number sends 32.0); ConfigError naming `field` otherwise. For handler arguments: a handler is
    an HTTP endpoint, so its value may be anything (a bool, a string, 10**400, NaN)."""
    try:
        fits = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                and (not whole or float(value).is_integer()) and (value > low if open_low else value >= low)
                and value <= high)
    except OverflowError:  # an int too large for a float (10**400)
        fits = False
    if not fits:
        bounds = f"{'(' if open_low else '['}{_bound(low)}, {_bound(high)}]"
        raise ConfigError([(field, f"must be {'a whole number' if whole else 'a number'} in {bounds}, "
                                   f"got {show(value)}")])
    return int(value) if whole else float(value)


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


def text_problem(value: str) -> str | None:
    """Why a text cannot be a config value, or None: too long, a NUL byte, not encodable as UTF-8."""
    if len(value) > MAX_TEXT:
        return f"is {len(value):,} characters long; at most {MAX_TEXT:,} are allowed"
    if "\x00" in value:
        return "contains a NUL byte"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode text (a lone surrogate)"
    return None


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
            raise ConfigError([(path, f"expected a mapping of {base.__name__} fields, got {show(value)}")])
        return from_dict(base, value, prefix=path + ".")
    if typing.get_origin(base) is list:
        item_tp = typing.get_args(base)[0]
        if isinstance(value, str):
            if problem := text_problem(value):
                raise ConfigError([(path, problem)])
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError([(path, f"expected a list, got {show(value)}")])
        if len(value) > MAX_ITEMS:
            raise ConfigError([(path, f"has {len(value):,} items; at most {MAX_ITEMS:,} are allowed")])
        return [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if base is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError([(path, f"expected true or false, got {show(value)}")])
    if base is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError([(path, f"expected an integer, got {show(value)}")])
        try:
            return int(value)
        except ValueError:  # also a string of more digits than Python converts
            raise ConfigError([(path, f"expected an integer, got {show(value)}")]) from None
    if base is float:
        # YAML 1.1 reads `1e-4` (no dot) as a string; accept it as the number the user meant.
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError([(path, f"expected a number, got {show(value)}")])
        try:
            return float(value)
        except ValueError:
            raise ConfigError([(path, f"expected a number, got {show(value)}")]) from None
        except OverflowError:  # an integer beyond the float range, e.g. 10**400
            raise ConfigError([(path, f"{show(value)} is too large for a number")]) from None
    if base is str:
        # Numbers and dates are what YAML makes of a bare 123 or 2024-01-01; anything else is no text.
        if isinstance(value, bool) or not isinstance(value, (str, int, float, datetime.date)):
            raise ConfigError([(path, f"expected text, got {show(value)}")])
        text = value if isinstance(value, str) else str(value)
        if problem := text_problem(text):
            raise ConfigError([(path, problem)])
        return text
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
            # Cut, and printable whatever the terminal's encoding (a key may hold a lone surrogate).
            name = str(key)[:80].encode("utf-8", "backslashreplace").decode("utf-8")
            close = difflib.get_close_matches(name, list(fields), n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys: {', '.join(fields)}"
            problems.append((f"{prefix}{name}", "unknown key" + hint))
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
        texts = [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)] \
            if isinstance(value, list) else []
        problem = next((p for p in map(text_problem, texts) if p), None)
        if problem:
            problems.append((path, problem))
            continue
        if value is None or not meta:
            continue
        if meta.get("choices") and value not in meta["choices"]:
            problems.append((path, f"{show(value)} is not allowed; allowed: {describe_range(meta)}"))
            continue
        if isinstance(value, float) and not math.isfinite(value):
            problems.append((path, f"{value!r} is not a number this field can take; give a finite number"
                                   + (f" {describe_range(meta)}" if describe_range(meta) else "")))
            continue
        if isinstance(value, int) and not isinstance(value, bool) and not -_INT64 <= value < _INT64:
            problems.append((path, f"{show(value)} is too large; allowed: {describe_range(meta) or 'a 64-bit integer'}"))
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            low, high = meta.get("low"), meta.get("high")
            too_low = low is not None and (value <= low if meta["low_open"] else value < low)
            too_high = high is not None and (value >= high if meta["high_open"] else value > high)
            if too_low or too_high:
                problems.append((path, f"{show(value)} is out of range; allowed: {describe_range(meta)}"))
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
    try:
        if not path.is_file():
            raise ConfigError([("config", f"file not found: {path}")])
        raw = path.read_bytes()[:MAX_FILE_BYTES + 1]
    except OSError as err:
        raise ConfigError([("config", f"cannot read {path}: {err.strerror or err}")]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError([("config", f"{path} is over {MAX_FILE_BYTES // 2**20} MiB: not a config file")])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError([("config", f"{path} is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset "
                                      f"{err.start}); save it as UTF-8")]) from None
    kind = "JSON" if path.suffix == ".json" else "YAML"
    try:
        data = parse_text(text, kind)
    except ValueError as err:
        raise ConfigError([("config", f"{path} is not valid {kind}: {err}")]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([("config", f"{path} must hold a mapping at the top level")])
    return data


class _NoAliasLoader(yaml.SafeLoader):
    """YAML's safe loader without aliases (*name): a few hundred bytes of nested aliases expand to gigabytes
    (the billion laughs), and a config has no use for them."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not accepted in a config",
                                              self.peek_event().start_mark)
        return super().compose_node(parent, index)


def parse_text(text: str, kind: str = "YAML") -> Any:
    """JSON or YAML (safe: plain data only) -> Python data; ValueError with the parser's reason for
    anything that is not. Every parser failure is one type here: PyYAML raises several (scanner,
    constructor, reader errors, ValueError for `!!float nope`), and nesting too deep for the parser
    raises RecursionError."""
    try:
        return json.loads(text) if kind == "JSON" else yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, AttributeError) as err:
        raise ValueError(str(err)[:300]) from None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b=value` strings (value parsed as YAML) to a nested dict, as the CLI's --set does."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError([(show(item, 60), "an override must look like section.key=value")])
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError([(show(key, 60), "an override must look like section.key=value")])
        try:
            value = parse_text(raw) if raw.strip() else ""
        except ValueError as err:
            raise ConfigError([(key.strip(), f"{show(raw, 60)} is not a value YAML can read ({err}); quote text "
                                             "that has special characters")]) from None
        node = data
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


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One field that holds a value rather than a section: where it sits and what it takes."""
    path: str      # dotted from the top, as errors name it: train.lr, student.lora.r
    name: str      # its name in the section that declares it
    type: Any      # the declared type with Optional stripped: str, int, list[str], ...
    optional: bool
    owner: type    # the section dataclass that declares it (help_text(owner)[name] is its help)


def leaves(cls: type, prefix: str = "") -> list[Leaf]:
    """Every value field of a config class, sections walked depth first in declaration order: what a form
    generated from the config shows, so a field added to a section appears there with no other change."""
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        base, optional = _strip_optional(hints[f.name])
        if dataclasses.is_dataclass(base):
            found.extend(leaves(base, f"{prefix}{f.name}."))
        else:
            found.append(Leaf(prefix + f.name, f.name, base, optional, cls))
    return found
