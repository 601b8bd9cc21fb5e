import json

import pytest
import yaml

from workbench.config.fields import ConfigError, apply_overrides, help_text
from workbench.config.schema import DIVERGENCES, STRATEGIES, DistillConfig
from workbench.engine import strategies


def valid() -> dict:
    return {"teacher": {"name_or_path": "gpt2"}, "student": {"name_or_path": "distilgpt2"},
            "data": {"source": "corpus.txt"}}


def test_yaml_and_json_round_trip_keep_every_field(tmp_path):
    cfg = DistillConfig.from_dict({**valid(), "loss": {"divergence": "jsd", "alpha": 0.3, "temperature": 2.0,
                                                        "beta": 0.7},
                                   "student": {"name_or_path": "s", "lora": {"enabled": True, "r": 4,
                                                                             "target_modules": ["q_proj"]}},
                                   "train": {"lr": 3e-4, "bf16": "on", "max_steps": 7}})
    for name in ("c.yaml", "c.json"):
        path = cfg.save(tmp_path / name)
        back = DistillConfig.load(path)
        assert back == cfg
        assert back.to_dict() == cfg.to_dict()
    assert json.loads((tmp_path / "c.json").read_text())["loss"]["beta"] == 0.7


def test_defaults_fill_unspecified_fields():
    cfg = DistillConfig.from_dict(valid())
    assert cfg.loss.divergence == "forward_kl" and cfg.teacher.trust_remote_code is False
    assert cfg.student.lora.enabled is False and cfg.train.bf16 == "auto"


@pytest.mark.parametrize("section,key,value,allowed", [
    ("loss", "alpha", 1.5, "[0, 1]"),
    ("loss", "alpha", -0.1, "[0, 1]"),
    ("loss", "temperature", 0, "(0, 100]"),
    ("loss", "beta", 2, "[0, 1]"),
    ("loss", "skew_lambda", -1, "[0, 1]"),
    ("loss", "divergence", "kl", "forward_kl"),
    ("train", "max_steps", 0, "[1, 10000000]"),
    ("train", "batch_size", 0, "[1, 65536]"),
    ("train", "grad_accum", 0, "[1, 4096]"),
    ("train", "lr", 0, "(0, 1]"),
    ("train", "warmup_steps", -1, "in [0, 10000000]"),
    ("train", "seq_len", 4, "[8, 131072]"),
    ("train", "bf16", "maybe", "auto, native, on, off"),
    ("train", "seed", -3, "[0,"),
    ("train", "logging_steps", 0, "in [1, 10000000]"),
    ("train", "save_steps", 0, "in [1, 10000000]"),
    ("train", "eval_steps", -1, "in [0, 10000000]"),
    ("teacher", "dtype", "int8", "float32"),
    ("data", "validation_fraction", 0.9, "[0, 0.5]"),
    ("data", "format", "xml", "prompt_completion"),
])
def test_each_invalid_field_is_named_with_value_and_range(section, key, value, allowed):
    data = valid()
    data.setdefault(section, {})[key] = value
    with pytest.raises(ConfigError) as err:
        DistillConfig.from_dict(data)
    assert err.value.field == f"{section}.{key}"
    msg = str(err.value)
    assert f"{section}.{key}" in msg and repr(value) in msg and allowed in msg


def test_nested_lora_field_is_named():
    data = valid()
    data["student"]["lora"] = {"r": 0}
    with pytest.raises(ConfigError) as err:
        DistillConfig.from_dict(data)
    assert err.value.field == "student.lora.r"


def test_unknown_keys_get_did_you_mean():
    with pytest.raises(ConfigError) as err:
        DistillConfig.from_dict({**valid(), "loss": {"temprature": 2}})
    assert err.value.field == "loss.temprature"
    assert "did you mean 'loss.temperature'" in str(err.value)
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        DistillConfig.from_dict({**valid(), "trian": {}})


def test_wrong_types_are_refused_but_yaml_number_strings_accepted():
    cfg = DistillConfig.from_dict({**valid(), "train": {"lr": "1e-4", "max_steps": "20"}})
    assert cfg.train.lr == 1e-4 and cfg.train.max_steps == 20
    for section, key, value in (("train", "max_steps", "many"), ("train", "max_steps", 2.5),
                                ("teacher", "trust_remote_code", "yes"), ("loss", "alpha", [1])):
        data = valid()
        data.setdefault(section, {})[key] = value
        with pytest.raises(ConfigError) as err:
            DistillConfig.from_dict(data)
        assert err.value.field == f"{section}.{key}"


def test_required_fields_and_several_problems_in_one_error():
    with pytest.raises(ConfigError) as err:
        DistillConfig.from_dict({"loss": {"alpha": 3}})
    fields = [f for f, _ in err.value.problems]
    assert {"teacher.name_or_path", "student.name_or_path", "data.source", "loss.alpha"} <= set(fields)


def test_run_name_must_be_a_plain_folder_name():
    for bad in ("../escape", "a/b", ".."):
        with pytest.raises(ConfigError) as err:
            DistillConfig.from_dict({**valid(), "output": {"run_name": bad}})
        assert err.value.field == "output.run_name"


def test_yaml_on_off_booleans_are_read_as_the_on_off_choices(tmp_path):
    """YAML 1.1 reads a bare `off` as false; for an auto/on/off field that must still mean "off"."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(valid()) + "train:\n  bf16: off\n")
    assert DistillConfig.load(path).train.bf16 == "off"
    assert DistillConfig.load(path, ["train.bf16=on"]).train.bf16 == "on"
    with pytest.raises(ConfigError) as err:
        DistillConfig.from_dict({**valid(), "loss": {"divergence": True}})
    assert err.value.field == "loss.divergence"


def test_overrides_apply_dotted_keys_with_yaml_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(valid()))
    cfg = DistillConfig.load(path, ["loss.alpha=0.25", "train.bf16=off", "student.lora.enabled=true"])
    assert cfg.loss.alpha == 0.25 and cfg.train.bf16 == "off" and cfg.student.lora.enabled is True
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides({}, ["loss.alpha"])


def test_bad_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("loss: [unclosed")
    with pytest.raises(ConfigError, match="broken.yaml is not valid YAML"):
        DistillConfig.load(path)


def test_every_field_has_help_and_names_match_registries():
    from workbench.config.schema import LossSpec, TrainSpec
    from workbench.losses.divergences import DIVERGENCES as LOSS_FNS
    for cls in (LossSpec, TrainSpec):
        assert all(text for text in help_text(cls).values())
    assert "in [0, 1]" in help_text(LossSpec)["alpha"]
    assert set(STRATEGIES) == set(strategies.STRATEGIES)
    assert set(DIVERGENCES) == set(LOSS_FNS)


def test_held_out_evaluations_default_to_four_a_run_of_a_hundred_steps_or_more():
    def interval(**train):
        return DistillConfig.from_dict({"teacher": {"name_or_path": "a"}, "student": {"name_or_path": "b"},
                                        "data": {"source": "x"}, "train": train}).train.eval_interval()
    assert interval(max_steps=200) == 50 and interval(max_steps=99) == 0  # a short run: before and at the end
    assert interval(max_steps=150) == 38  # 38, 76, 114 and the end: not 37, 74, 111, 148 and the end
    assert interval(max_steps=200, eval_steps=0) == 0 and interval(max_steps=200, eval_steps=20) == 20
