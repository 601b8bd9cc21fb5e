"""Fuzzed input at every edge a config enters by: the config loader (mappings, and files of any bytes), the
CLI's --set, and the Set-up form handler with the values Gradio delivers (and any JSON an HTTP caller
sends). The project's own validation error (ConfigError, naming the field) is the only exception allowed;
anything else is a traceback a user would see."""
import dataclasses
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench.cli import main
from workbench.config.fields import ConfigError, apply_overrides
from workbench.config.gate import Gate
from workbench.config.schema import DistillConfig
from workbench.store.rundir import EXIT_CONFIG
from workbench.ui.app import DEFAULT_CONFIG
from workbench.ui.form import DATA_KINDS, STUDENT_CHECKPOINT, STUDENT_PRUNED, SetupForm, form_to_config, setup_fields

EXAMPLES = 1500
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def valid() -> dict:
    return {"teacher": {"name_or_path": "gpt2"}, "student": {"name_or_path": "distilgpt2"},
            "data": {"source": "corpus.txt"}}


def field_paths(cls, prefix="") -> list[str]:
    hints, out = typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += field_paths(tp, f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


PATHS = field_paths(DistillConfig)
# Text users reach first: paths with odd parts, digits that are not ASCII, URLs, control characters.
WEIRD_TEXT = st.sampled_from(["", " ", "²:1", "1:²", "0:1", "http://[::1", "http://x:99999999/v1", "~nosuchuser/x",
                              "~", "a\x00b", "x" * 300, "/" + "y" * 5000, "\ud800", "defaults:teacher", ".nan",
                              "inf", "10" * 300, "1e-4", "on", "off", "<img src=x onerror=alert(1)>", "../../etc"])
# Lone surrogates too (JSON can carry "\ud800"; st.text() never makes one), also where a path starts.
SURROGATE = st.sampled_from(["\ud800", "/tmp/\udcff", "~/\ud83d.txt"])
TEXT = st.one_of(st.text(max_size=40), WEIRD_TEXT, SURROGATE)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=10**300, max_value=10**400),
                    st.floats(allow_nan=True, allow_infinity=True), TEXT)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(TEXT, inner, max_size=4)), max_leaves=10)


def set_path(data: dict, path: str, value) -> None:
    *sections, key = path.split(".")
    node = data
    for section in sections:
        node = node.setdefault(section, {})
    node[key] = value


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(PATHS), VALUES), min_size=1, max_size=5),
       st.dictionaries(TEXT, VALUES, max_size=2))
def test_config_mappings(changes, extra):
    data = valid()
    for path, value in changes:
        set_path(data, path, value)
    data.update(extra)
    try:
        DistillConfig.from_dict(data)
    except ConfigError:
        pass


FILE_TEXT = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(lambda t: t.encode("utf-16")),
    # Nesting past the parser's recursion limit (a few depths: each such parse is slow).
    st.sampled_from([3, 200, 700]).map(lambda n: ("[" * n).encode()),
    st.integers(min_value=1, max_value=3000).map(lambda n: ("a:\n" + "  " * n + "b").encode()),
    st.sampled_from([b"loss:\n  alpha: .nan\n", b'{"loss": {"alpha": NaN}}', b"train: {lr: 1e999}\n",
                     b"!!python/object:os.system {}\n", b"teacher: [\n", b"\xff\xfe\x00\x00"]),
    st.text(max_size=300).map(str.encode))


@settings(FUZZ, max_examples=EXAMPLES // 3)  # each example parses a file and runs the CLI: the slow target
@given(FILE_TEXT, st.sampled_from([".yaml", ".json"]))
def test_config_files(tmp_path_factory, content, suffix):
    """`validate` on a file of any bytes exits 0 or with the bad-config code, never a crash (code 1)."""
    path = tmp_path_factory.getbasetemp() / f"fuzzed{suffix}"
    path.write_bytes(content)
    assert main(["validate", str(path)]) in (0, EXIT_CONFIG)


OVERRIDE = st.one_of(
    st.tuples(st.sampled_from(PATHS), st.one_of(TEXT, st.sampled_from(
        ["[", "*x", "'unterminated", "!!python/object:os.system {}", "!!float nope", "\x07\x1b", "{a: [}", "&a *a",
         "!!binary x", "2001-01-01", "[" * 700, ".inf", "- a\n- b"]))).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.text(max_size=40))


@FUZZ
@given(st.lists(OVERRIDE, min_size=1, max_size=4))
def test_set_overrides(overrides):
    try:
        DistillConfig.from_dict(apply_overrides(valid(), overrides))
    except ConfigError:
        pass


# What Gradio's components send (str, float, int, bool, None, a file path), and what any HTTP caller can.
GRADIO = st.one_of(st.none(), st.booleans(), st.integers(min_value=-10**6, max_value=10**6),
                   st.integers(min_value=10**300, max_value=10**400), st.floats(allow_nan=True, allow_infinity=True),
                   TEXT, st.lists(TEXT, max_size=2), st.dictionaries(TEXT, TEXT, max_size=2))
FORM_FIELDS = [f.key for f in setup_fields()]
START = SetupForm.from_config(DistillConfig.load(DEFAULT_CONFIG))  # as the app starts the form


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("form")
    (root / "uploads").mkdir()
    (root / "a-folder.txt").mkdir()  # an "upload" that is a folder
    (root / "data.txt").write_text("a line\n")
    (root / LONG_NAME).write_text("a line\n")  # fits, but not with the time stamp the kept copy adds
    return root


LONG_NAME = "é" * 124 + ".txt"  # 252 bytes


UPLOADS = st.sampled_from(["folder", "file", "long", "/no/such/file.txt", None])


@FUZZ
@given(st.dictionaries(st.sampled_from(FORM_FIELDS), GRADIO, min_size=1, max_size=8),
       st.sampled_from(["soft_label", "hard_label", "hidden_state", "co_distillation"]),
       st.one_of(st.sampled_from(DATA_KINDS), TEXT), st.one_of(st.sampled_from([STUDENT_CHECKPOINT, STUDENT_PRUNED]),
                                                               TEXT), UPLOADS, UPLOADS)
def test_form_handler(folders, values, strategy, data_kind, student_kind, upload, gen_upload):
    """Data kind and student kind drawn mostly from the real choices, so the upload and pruned paths run;
    uploads that are a folder, a file, a file with a 250-byte name, or nothing at all."""
    def file_for(kind):
        return {"folder": str(folders / "a-folder.txt"), "file": str(folders / "data.txt"),
                "long": str(folders / LONG_NAME)}.get(kind, kind)
    form = START.replace({"strategy": strategy, "data_kind": data_kind, "student_kind": student_kind,
                          "data_upload": file_for(upload), "prompt_upload": file_for(gen_upload), **values})
    try:
        form_to_config(form, Gate((folders,)), folders / "uploads")
    except ConfigError:
        pass


def test_the_reproduced_cases_are_refused_naming_the_field(folders, tmp_path):
    """Each input the issue reproduced, refused with the field it came in by."""
    cases = [({"train": {"lr": 10**400}}, "train.lr"), ({"hidden": {"layer_map": ["²:1"]}}, "hidden.layer_map[0]"),
             ({"strategy": "hard_label", "generation": {"backend": "openai", "api_base_url": "http://[::1",
                                                        "api_model": "m"}}, "generation.api_base_url"),
             ({"loss": {"temperature": float("nan")}}, "loss.temperature"),
             ({"loss": {"alpha": float("inf")}}, "loss.alpha"),
             ({"data": {"source": "a\x00b"}}, "data.source"), ({"data": {"source": "~nosuchuser/x"}}, "data.source"),
             ({"teacher": {"name_or_path": "/x" * 5000}}, "teacher.name_or_path"),
             ({"data": {"source": "x" * 10_000_000}}, "data.source")]
    for change, field in cases:
        data = valid()
        for section, values in change.items():
            data[section] = {**data.get(section, {}), **values} if isinstance(values, dict) else values
        with pytest.raises(ConfigError) as err:
            DistillConfig.from_dict(data)
        assert err.value.field == field, (change, err.value)
        assert len(str(err.value)) < 500  # a 10 MB value is not echoed back
    for item in ("teacher=[", "loss.alpha=*x", "teacher='unterminated", "teacher=!!python/object:os.system {}",
                 "loss.alpha=!!float nope", "teacher=\x07"):
        with pytest.raises(ConfigError):
            DistillConfig.from_dict(apply_overrides(valid(), [item]))
    for name, value, field in (("train.max_steps", 10**400, "train.max_steps"),
                               ("student.init_from_teacher_layers", float("nan"), "student.init_from_teacher_layers"),
                               ("num_processes", 0, "num_processes"), ("num_processes", -3, "num_processes"),
                               ("data_upload", str(folders / "a-folder.txt"), "data.source"),
                               ("train.lr", 10**400, "train.lr"), ("hidden.layer_map", "²:1", "hidden.layer_map[0]")):
        pruned = name == "student.init_from_teacher_layers"
        form = START.replace({name: value, "student_kind": STUDENT_PRUNED if pruned else STUDENT_CHECKPOINT,
                              "data_kind": "upload a file" if name == "data_upload" else "offline default corpus",
                              "strategy": "hidden_state" if name == "hidden.layer_map" else "soft_label"})
        with pytest.raises(ConfigError) as err:
            form_to_config(form, Gate((folders,)), folders / "uploads")
        assert err.value.field == field, (name, err.value)
    for content in (b"\xff\xfe\x00garbage", "teacher: x".encode("utf-16"), b"[" * 100_000):
        path = tmp_path / "bad.yaml"
        path.write_bytes(content)
        assert main(["validate", str(path)]) == EXIT_CONFIG


@FUZZ
@given(st.one_of(FILE_TEXT.map(lambda b: b.decode("utf-8", "replace")), st.text(max_size=200)))
def test_config_tab(text):
    """The Config tab's check answers any text with a verdict, never a traceback."""
    from workbench.ui.config_tab import check_config
    verdict, _ = check_config(text)
    assert verdict.startswith(("**Valid.**", "**Invalid config:**", "**Not valid YAML:**"))
