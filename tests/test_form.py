"""The Set-up form generated from the config: every field is a form field keyed by its path with its help,
the form starts from the config's values, form -> config -> form gives the form back, and a field added to
a config section appears in the form (in Advanced, or in the group owning its section) and reaches the
config with no other change."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import pytest

from workbench.config.fields import ConfigError, help_text, knob, leaves
from workbench.config.gate import Gate
from workbench.config.schema import DistillConfig, GenerationSpec, TrainSpec
from workbench.ui import setup_tab
from workbench.ui.app import DEFAULT_CONFIG
from workbench.ui.form import (
    UI_FIELDS,
    SetupForm,
    form_to_config,
    setup_fields,
    start_values,
)
from workbench.ui.form_fields import EXCLUDED, config_fields, items_text, text_items, value_at
from workbench.ui.services import Services


@dataclass
class TrainWithEma(TrainSpec):
    ema_decay: float = knob(0.0, "Decay of an exponential moving average of the student's weights; 0 = off",
                            low=0, high=1, high_open=True)


@dataclass
class GenerationWithStop(GenerationSpec):
    stop: str = knob("", "Text at which the teacher stops writing a completion")


@dataclass
class ExtendedConfig(DistillConfig):
    """DistillConfig with one knob more in train and one in generation, and nothing else changed."""
    train: TrainWithEma = knob(help="Optimisation and logging", default_factory=TrainWithEma)
    generation: GenerationWithStop = knob(help="How the teacher writes the data, for strategy hard_label",
                                          default_factory=GenerationWithStop)


@pytest.fixture
def default():
    return DistillConfig.load(DEFAULT_CONFIG)


@pytest.fixture
def gate(tmp_path):
    return Gate((tmp_path,))


def test_every_config_field_is_a_form_field_with_its_help():
    paths = [leaf.path for leaf in leaves(DistillConfig)]
    fields = {f.key: f for f in setup_fields()}
    config_keys = [f.key for f in config_fields()]
    assert [p for p in paths if p not in EXCLUDED] == config_keys == list(fields)[:len(config_keys)]
    assert set(EXCLUDED) <= set(paths) and all(EXCLUDED.values())  # each exclusion says why
    assert fields["train.lr"].help == help_text(TrainSpec)["lr"] and "Peak learning rate" in fields["train.lr"].help
    assert fields["train.bf16"].choices == ("auto", "native", "on", "off") and fields["hidden.layer_map"].kind is list
    assert fields["generation.max_prompts"].optional and fields["train.max_steps"].kind is int
    assert [f.key for f in UI_FIELDS] == list(fields)[len(config_keys):]  # after the config's: the endpoints' order
    assert all("." not in f.key for f in UI_FIELDS)


def test_the_form_starts_from_the_config(default):
    """The offline default's lr 1e-3 and bf16 native come from assets/configs/default.yaml, not a table of the form."""
    values = start_values(default)
    assert values["train.lr"] == 1e-3 and values["train.bf16"] == "native" and values["train.max_steps"] == 150
    for field in config_fields():
        expected, shown = value_at(default, field.key), values[field.key]
        if field.kind is list:
            assert text_items(shown) == expected, field.key
        elif field.optional:  # a text: empty = unset
            assert shown == ("" if expected is None else str(expected)), field.key
        else:
            assert shown == expected, field.key
    assert values["data.max_eval_examples"] == "32" and values["generation.max_prompts"] == ""
    plain = DistillConfig()
    assert start_values(plain)["train.lr"] == 5e-5 and start_values(plain)["train.bf16"] == "auto"


def test_form_to_config_to_form_gives_the_form_back(default, gate):
    form = SetupForm.from_config(default)
    assert SetupForm.from_config(form_to_config(form, gate, gate.roots[0]).config).values == form.values
    data = default.to_dict()
    data.update(strategy="hidden_state", hidden={"layer_map": ["0:1", "1:3"], "loss": "cosine", "weight": 2.0})
    data["teacher"]["name_or_path"], data["student"]["name_or_path"] = "gpt2", "distilgpt2"
    data["data"].update(source="roneneldan/TinyStories", validation_source=None, max_examples=1000)
    data["train"].update(lr=0.001, grad_accum=4, lr_scheduler="linear", logging_steps=5)
    data["evaluation"]["prompts"] = ["Once upon a time, there was", "a; b"]
    data["output"]["run_name"] = "mine"
    config = DistillConfig.from_dict(data)
    form = SetupForm.from_config(config)
    assert form.values["data_kind"] == "hub dataset" and form.values["hub_dataset"] == "roneneldan/TinyStories"
    again = form_to_config(form, gate, gate.roots[0]).config
    assert again == config and SetupForm.from_config(again).values == form.values


def test_list_fields_read_back_as_the_same_list():
    for items in ([], ["0:1"], ["0:1", "1:3"], ["Once upon a time, there was"], ["a, b", "c"], ["x;y"]):
        assert text_items(items_text(items)) == items, items
    assert text_items("0:1; 1:3") == text_items("0:1, 1:3") == ["0:1", "1:3"]


def test_every_value_is_checked_and_named_by_its_path(default, gate):
    form = SetupForm.from_config(default)
    with pytest.raises(ConfigError) as err:
        form_to_config(form.replace({"train.warmup_steps": 1.5, "data.packing": "yes", "student.lora.r": None,
                                     "evaluation.prompts": ["not", "text"]}), gate, gate.roots[0])
    assert [name for name, _ in err.value.problems] == ["student.lora.r", "data.packing", "train.warmup_steps",
                                                        "evaluation.prompts"]
    with pytest.raises(ConfigError) as err:
        form_to_config(form.replace({"train.grad_accum": 0}), gate, gate.roots[0])
    assert err.value.field == "train.grad_accum"
    # An optional number is a text: empty = unset, else the number it reads as.
    data = form_to_config(form.replace({"data.max_examples": " 12 ", "data.max_eval_examples": ""}), gate,
                          gate.roots[0]).config.data
    assert (data.max_examples, data.max_eval_examples) == (12, None)
    for bad in ("lots", "1.5", "1e999", "\x00"):
        with pytest.raises(ConfigError) as err:
            form_to_config(form.replace({"data.max_examples": bad}), gate, gate.roots[0])
        assert err.value.field == "data.max_examples", bad
    with pytest.raises(KeyError, match="max_step"):
        form.replace({"train.max_step": 3})


def test_a_strategys_section_applies_only_when_it_is_chosen(default, gate):
    form = SetupForm.from_config(default).replace({"co_distillation.alpha_warmup_steps": 7, "hidden.weight": 3.0})
    soft = form_to_config(form, gate, gate.roots[0]).config
    assert soft.co_distillation == default.co_distillation and soft.hidden == default.hidden
    co = form_to_config(form.replace({"strategy": "co_distillation"}), gate, gate.roots[0]).config
    assert co.co_distillation.alpha_warmup_steps == 7 and co.hidden == default.hidden


def test_a_field_added_to_the_config_appears_in_the_form_and_reaches_the_config(default, gate, tmp_path):
    base = ExtendedConfig.from_dict(default.to_dict())
    fields = {f.key: f for f in setup_fields(ExtendedConfig)}
    assert fields["train.ema_decay"].help == help_text(TrainWithEma)["ema_decay"]
    assert "moving average" in fields["train.ema_decay"].help and fields["train.ema_decay"].kind is float
    form = SetupForm.from_config(base)
    assert form.values["train.ema_decay"] == 0.0 and form.values["generation.stop"] == ""
    plan = form_to_config(form.replace({"train.ema_decay": 0.99, "strategy": "hard_label", "generation.stop": "###"}),
                          gate, tmp_path)
    assert isinstance(plan.config, ExtendedConfig)
    assert plan.config.train.ema_decay == 0.99 and plan.config.generation.stop == "###"
    with pytest.raises(ConfigError) as err:
        form_to_config(form.replace({"train.ema_decay": 1.0}), gate, tmp_path)
    assert err.value.field == "train.ema_decay"

    services = Services.start(tmp_path / "runs")
    try:
        with gr.Blocks():
            inputs = setup_tab.create_setup_tab(services, base)
    finally:
        services.close()
    assert list(inputs) == list(fields)
    ema, stop = inputs["train.ema_decay"], inputs["generation.stop"]
    assert ema.label == "train.ema_decay" and fields["train.ema_decay"].help in ema.info
    assert ema.elem_id == "setup-train-ema_decay" and ema.value == 0.0
    assert "setup-advanced" in ancestors(ema)  # no place named it: the Advanced accordion holds it
    assert "setup-advanced" not in ancestors(stop)  # its section's group holds it, shown for hard_label
    assert stop.label == "generation.stop" and fields["generation.stop"].help in stop.info


def ancestors(block) -> list[str | None]:
    found = []
    while block.parent is not None:
        block = block.parent
        found.append(block.elem_id)
    return found


def test_the_layout_names_only_keys_the_form_has():
    keys = {f.key for f in setup_fields()} | {"pair"}
    placed = [key for group in setup_tab.LAYOUT for row in group.rows for key in row]
    assert set(placed) <= keys and len(placed) == len(set(placed))
    assert set(setup_tab.SHOWN_WHEN) <= keys
    assert {control for control, _ in setup_tab.SHOWN_WHEN.values()} <= keys

