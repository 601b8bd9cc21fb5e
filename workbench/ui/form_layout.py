"""Gradio components for the generated set-up form: one per FormField (its kind from the field's type
and choices, labelled by its path, its help as the info line, elem_id setup-<path with - for .>), laid
out by a table of Groups. Every config field no group places shows in the Advanced accordion, grouped by
section; a group that owns a section shows that section's unplaced fields in a last row of its own."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from workbench.ui.form_fields import FormField, section_help

ROW = 4  # components per generated row
Maker = Callable[[Any], gr.components.Component]  # start value -> component, for a UI-only key or a panel


@dataclass(frozen=True)
class Group:
    """A block of the Set-up tab: rows of form keys (config paths, UI-only keys, or a maker's own key such
    as the pair picker), shown for `strategies` only (None: always). `section`: the config section whose
    fields no row places follow in a last row here, not in Advanced."""
    rows: tuple[tuple[str, ...], ...]
    strategies: tuple[str, ...] | None = None
    note: str = ""  # markdown above the rows; such a group is boxed (gr.Group)
    section: str | None = None


def elem_id(key: str) -> str:
    """Stable handles for browser tests and custom CSS: setup-train-lr, setup-data_kind."""
    return "setup-" + key.replace(".", "-")


def component(field: FormField, value: Any) -> gr.components.Component:
    """The component of a config field: choices -> Dropdown, bool -> Checkbox, int/float -> Number, text,
    lists (comma-separated or one item per line) and optional numbers (empty = unset) -> Textbox."""
    hints = [field.help] + (["comma-separated, or one per line"] if field.kind is list else []) \
        + (["empty = unset"] if field.optional and field.kind is not bool else [])
    info = "; ".join(h for h in hints if h).replace("*", "∗")  # Gradio reads *x* in info as emphasis, escaped or not
    common = dict(label=field.key, info=info or None, elem_id=elem_id(field.key))
    if field.choices:
        return gr.Dropdown(list(field.choices), value=value, **common)
    if field.kind is bool:
        return gr.Checkbox(value, **common)
    if field.kind in (int, float) and not field.optional:
        return gr.Number(value, precision=0 if field.kind is int else None, **common)
    lines = value.count("\n") + 1 if field.kind is list and value else 1
    return gr.Textbox(value, lines=lines, **common)


def _put(keys: list[str], fields: dict[str, FormField], values: dict, makers: dict[str, Maker], out: dict) -> None:
    """The components of one row; a row of one needs no gr.Row (a panel sits on its own)."""
    def make(key: str) -> None:
        if key in makers:
            out[key] = makers[key](values.get(key))
            out[key].elem_id = elem_id(key)
        else:
            out[key] = component(fields[key], values[key])

    if len(keys) == 1:
        make(keys[0])
        return
    with gr.Row():
        for key in keys:
            make(key)


def _rows(keys: list[str]) -> list[list[str]]:
    return [keys[i:i + ROW] for i in range(0, len(keys), ROW)]


def build_form(groups: tuple[Group, ...], fields: tuple[FormField, ...], ui_keys: tuple[str, ...], values: dict,
               makers: dict[str, Maker], config_cls: type) -> tuple[dict, list]:
    """(key -> component for every key the groups and the Advanced accordion hold, each group's container).
    `ui_keys`: the fields that are no config field, each placed by a group. A group naming an unknown key,
    or a UI-only key no group places, fails here, when the app builds."""
    by_key = {f.key: f for f in fields}
    placed = [key for group in groups for row in group.rows for key in row]
    unknown = [key for key in placed if key not in by_key and key not in makers]
    unplaced = [key for key in ui_keys if key not in placed]
    if unknown or unplaced:
        raise KeyError(f"set-up layout: unknown keys {unknown}, UI-only keys placed nowhere {unplaced}")
    owned = {group.section for group in groups if group.section}
    rest = [f.key for f in fields if f.key not in placed and f.key not in ui_keys]
    components: dict = {}
    containers = []
    for group in groups:
        mine = [key for key in rest if key.split(".")[0] == group.section]
        with (gr.Group() if group.note else gr.Column()) as box:
            if group.note:
                gr.Markdown(group.note)
            for row in [*group.rows, *_rows(mine)]:
                _put(list(row), by_key, values, makers, components)
        containers.append(box)
    _advanced([by_key[key] for key in rest if key.split(".")[0] not in owned], values, config_cls, components)
    return components, containers


def _advanced(fields: list[FormField], values: dict, config_cls: type, out: dict) -> None:
    """Every other config field, by section: a field added to the config shows here with no other change."""
    sections: dict[str, list[FormField]] = {}
    for field in fields:
        sections.setdefault(field.key.rpartition(".")[0], []).append(field)
    with gr.Accordion("Advanced: every other config field", open=False, elem_id="setup-advanced"):
        for section, members in sections.items():
            gr.Markdown(f"**{section}** — {section_help(config_cls, section)}" if section else "**top level**")
            for row in _rows([f.key for f in members]):
                _put(row, {f.key: f for f in members}, values, {}, out)


def wire_visibility(rules: list[tuple[Any, str, Callable[[Any], bool]]], components: dict, values: dict) -> None:
    """Show each target while its controlling key's value passes the test: (target, key, test) rules, one
    change handler per controlling key. The start value decides what shows first."""
    controllers: dict[str, list] = {}
    for target, key, test in rules:
        target.visible = bool(test(values[key]))
        controllers.setdefault(key, []).append((target, test))
    for key, shown in controllers.items():
        def show(value: Any, shown: list = shown) -> Any:
            updates = [gr.update(visible=bool(test(value))) for _, test in shown]
            return updates if len(updates) > 1 else updates[0]  # Gradio takes one output's value bare
        components[key].change(show, components[key], [target for target, _ in shown])
