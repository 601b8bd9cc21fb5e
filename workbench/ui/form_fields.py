"""The Set-up form's config fields, generated from the config class: one FormField per value field,
keyed by its dotted path (train.lr, generation.backend), described by its help text, and the values a
form shows for a config. A field added to a config section appears here with no other change.

No gradio here: the description and the value conversions are tested without a browser.
"""
from __future__ import annotations

import re
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any

from workbench.config.fields import help_text, leaves
from workbench.config.schema import DistillConfig

# Config fields that are never form fields, with why. Each keeps the base config's value unless the
# mapping (workbench/ui/form.py) sets it from the form's other choices.
EXCLUDED = {
    "teacher.trust_remote_code": "the host decides (--trust-remote-code), never a visitor; the gate refuses it",
    "student.trust_remote_code": "the host decides (--trust-remote-code), never a visitor; the gate refuses it",
    "data.source": "set by the data choice: the offline corpus, an upload, or a hub dataset id",
    "data.validation_source": "set by the data choice: the offline corpus's held-out file, else none",
    "data.validation_split": "set by the data choice: none, so held-out text is split off the training data",
    "output.runs_dir": "the app's runs folder: the job manager sets it for every run",
    "output.study": "set by the study that queues a run (Set up's Study panel), never typed",
}
KINDS = (bool, int, float, str, list)


@dataclass(frozen=True)
class FormField:
    """One value of the form: a config field (key = its path) or a UI-only choice (a key without dots)."""
    key: str
    kind: type                    # bool, int, float, str, or list (a text of items in the form)
    optional: bool = False        # None is a value: an empty text or number
    choices: tuple | None = None
    help: str = ""                # the field's help text with its allowed range
    names: str = ""               # the field an error about this value names; "" = the key itself

    @property
    def field(self) -> str:
        return self.names or self.key


@cache
def config_fields(cls: type = DistillConfig) -> tuple[FormField, ...]:
    """Every value field of `cls` but the EXCLUDED ones, in declaration order."""
    found = []
    for leaf in leaves(cls):
        if leaf.path in EXCLUDED:
            continue
        kind = list if typing.get_origin(leaf.type) is list else leaf.type
        if kind not in KINDS:  # a field of a new type fails when the app builds, not when a visitor sends it
            raise TypeError(f"{leaf.path}: the set-up form has no component for {leaf.type!r}")
        choices = leaf.owner.__dataclass_fields__[leaf.name].metadata.get("choices")
        found.append(FormField(leaf.path, kind, leaf.optional, choices, help_text(leaf.owner)[leaf.name]))
    return tuple(found)


def section_help(cls: type, section: str) -> str:
    """The help text of a section (train, student.lora), as the config declares it."""
    text = ""
    for part in section.split("."):
        text = help_text(cls)[part]
        cls = typing.get_type_hints(cls)[part]
    return text


def value_at(config: Any, path: str) -> Any:
    for part in path.split("."):
        config = getattr(config, part)
    return config


def items_text(items: list[str]) -> str:
    """A list as the form shows it: comma-separated, or one item per line when an item holds a separator
    (an evaluation prompt with a comma); text_items reads both back to the same list."""
    if not any(re.search(r"[,;\n]", item) for item in items):
        return ", ".join(items)
    return "\n".join(items) + ("\n" if len(items) == 1 else "")  # one line more: the text reads as lines


def text_items(text: str) -> list[str]:
    """The items of a list field's text: one per line if it has several lines, else separated by , or ;."""
    parts = text.splitlines() if "\n" in text else re.split(r"[,;]", text)
    return [part.strip() for part in parts if part.strip()]


def form_value(field: FormField, value: Any) -> Any:
    """A config value as the form's component holds it: a list as text, an unset text as empty text, and
    an optional number as text (Gradio's Number shows and sends 0 for no value, so it cannot say unset)."""
    if field.kind is list:
        return items_text(value)
    if field.optional and field.kind in (str, int, float):
        return "" if value is None else str(value)
    return value


def config_values(config: DistillConfig) -> dict[str, Any]:
    """What the form shows for a config: each field's value, keyed by its path."""
    return {f.key: form_value(f, value_at(config, f.key)) for f in config_fields(type(config))}
