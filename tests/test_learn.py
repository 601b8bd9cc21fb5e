"""The Learn tab: its loss terms and gradient sizes against torch's own (F.cross_entropy, F.kl_div, autograd),
the storage arithmetic against numbers worked out by hand, every knob refused by name, and the view built
end to end from tiny saved models, where a slider move runs no model."""
import json
import threading
from dataclasses import asdict
from types import SimpleNamespace

import gradio as gr
import plotly.graph_objects as go
import pytest
import torch
import torch.nn.functional as F

import tiny
from workbench.config.fields import ConfigError
from workbench.config.schema import ModelSpec
from workbench.engine.storage_cost import (
    CACHE_K,
    DEFAULT_CORPUS_TOKENS,
    PRESETS,
    Scenario,
    check_scenario,
    costs,
    human_bytes,
    per_token,
)
from workbench.engine.teacher_cache import MANIFEST, Manifest
from workbench.eval.lesson import (
    GRADIENT_TEMPERATURES,
    check_alpha,
    check_position,
    check_temperature,
    gradient_size,
    gradient_sizes,
    kl_gradient,
    loss_terms,
    position_view,
    teaching_position,
)
from workbench.eval.lesson_reader import LessonReader, LessonUnavailable, _loaded_student, check_text, on_torch_thread
from workbench.eval.preview import loaded_teacher, spec_key
from workbench.eval.token_stats import TokenAnalysis
from workbench.losses.divergences import ce_loss, combine, kd_loss
from workbench.ui.learn_tab import create_learn_tab, first_view, moved_view, refusal, storage_view
from workbench.ui.plots import token_labels

TEXT = "the cat sees the red ball by the river."
V = 11


@pytest.fixture
def rows() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(V, generator=gen) * 3, torch.randn(V, generator=gen) * 3  # teacher, student


def kl_reference(teacher: torch.Tensor, student: torch.Tensor, t: float) -> torch.Tensor:
    return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), log_target=True, reduction="sum")


@pytest.mark.parametrize("alpha", [0.0, 1.0, 0.3])
@pytest.mark.parametrize("t", [1.0, 4.0])
def test_loss_terms_match_torch(rows, alpha, t):
    teacher, student = rows
    actual = 4
    terms = loss_terms(teacher, student, actual, alpha, t)
    ce = F.cross_entropy(student[None], torch.tensor([actual]))
    kl = kl_reference(teacher, student, t)
    assert terms.ce == pytest.approx(float(ce), rel=1e-5)
    assert terms.kl == pytest.approx(float(kl), rel=1e-5)
    assert terms.kd == pytest.approx(t * t * float(kl), rel=1e-5)
    assert terms.weighted_ce == pytest.approx(alpha * float(ce), rel=1e-5, abs=1e-7)
    assert terms.weighted_kd == pytest.approx((1 - alpha) * t * t * float(kl), rel=1e-5, abs=1e-7)
    # What training optimises at this position, through the training losses themselves.
    label = torch.tensor([actual])
    trained = combine(ce_loss(student[None], label), kd_loss(student[None], teacher[None], label, temperature=t), alpha)
    assert terms.total == pytest.approx(float(trained), rel=1e-5)
    if alpha == 1.0:
        assert terms.total == pytest.approx(float(ce), rel=1e-6)
    if alpha == 0.0:
        assert terms.total == pytest.approx(t * t * float(kl), rel=1e-5)


@pytest.mark.parametrize("t", [0.5, 1.0, 4.0, 20.0])
def test_gradient_size_matches_autograd(rows, t):
    teacher, student = rows
    student = student.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(kl_reference(teacher, student, t), student)
    assert torch.allclose(kl_gradient(teacher, student.detach(), t), grad, atol=1e-6)
    assert gradient_size(teacher, student.detach(), t) == pytest.approx(float(grad.norm()), rel=1e-4)
    (scaled,) = torch.autograd.grad(t * t * kl_reference(teacher, student, t), student)
    assert float(scaled.norm()) == pytest.approx(t * t * float(grad.norm()), rel=1e-4)  # = ‖T·(q_T − p_T)‖


def test_the_gradient_curve_falls_without_t_squared_and_levels_off_with_it(rows):
    teacher, student = rows
    curve = gradient_sizes(teacher, student)
    assert curve.temperatures == list(GRADIENT_TEMPERATURES)
    for t, plain, scaled in zip(curve.temperatures, curve.plain, curve.scaled):
        assert plain == pytest.approx(gradient_size(teacher, student, t), rel=1e-4)
        assert scaled == pytest.approx(plain * t * t, rel=1e-9)
    ten, twenty = curve.temperatures.index(10.0), curve.temperatures.index(20.0)
    assert curve.plain[twenty] / curve.plain[ten] == pytest.approx(0.25, rel=0.1)  # ~1/T²
    assert curve.scaled[twenty] / curve.scaled[ten] == pytest.approx(1.0, rel=0.1)  # ~flat


def test_storage_arithmetic_by_hand():
    assert per_token(49_152, 32) == {"full logits, fp32": 196_608, "full logits, fp16": 98_304, "top-k cache": 130,
                                     "hard labels": 2}
    # 32 fp16 log-probs + 32 int32 ids + one fp16 tail; ids need 4 bytes past 65,536 entries.
    assert per_token(128_256, 32) == {"full logits, fp32": 513_024, "full logits, fp16": 256_512, "top-k cache": 194,
                                      "hard labels": 4}
    assert per_token(65_536, 1)["hard labels"] == 2 and per_token(65_537, 1)["hard labels"] == 4
    # The cache's own manifest says the same per token.
    manifest = Manifest("t", "h", "d", k=32, vocab=49_152, seq_len=8, blocks=1)
    assert manifest.bytes_per_token == per_token(49_152, 32)["top-k cache"]
    found = {(c.scenario, c.format): c.total for c in costs([Scenario("1B", 49_152, 10**9)], 32)}
    assert found[("1B", "full logits, fp16")] == 98_304 * 10**9
    assert found[("1B", "top-k cache")] == 130 * 10**9
    assert found[("1B", "hard labels")] == 2 * 10**9
    assert human_bytes(98_304 * 10**9) == "98.3 TB" and human_bytes(130 * 10**9) == "130 GB"
    assert human_bytes(196_608 * 10**12) == "197 PB" and human_bytes(999) == "999 B"
    assert human_bytes(999_999) == "1 MB"  # not "1e+03 kB"
    assert PRESETS[0].tokens == DEFAULT_CORPUS_TOKENS
    assert {(p.vocab, p.tokens) for p in PRESETS[1:]} == {(49_152, 10**9), (128_256, 10**9), (49_152, 10**12),
                                                         (128_256, 10**12)}


@pytest.mark.parametrize("check, value, field", [
    (check_alpha, 1.5, "alpha"), (check_alpha, -0.1, "alpha"), (check_alpha, float("nan"), "alpha"),
    (check_alpha, "0.5", "alpha"), (check_alpha, True, "alpha"), (check_alpha, None, "alpha"),
    (check_temperature, 0, "temperature"), (check_temperature, 20.5, "temperature"),
    (check_temperature, float("inf"), "temperature"), (check_temperature, 10**400, "temperature"),
    (check_temperature, -1, "temperature"),
    (lambda v: check_position(v, 5), 5, "position"), (lambda v: check_position(v, 5), -1, "position"),
    (lambda v: check_position(v, 5), 1.5, "position"), (lambda v: check_position(v, 5), "2", "position"),
    (check_text, "", "text"), (check_text, "   ", "text"), (check_text, None, "text"), (check_text, "x" * 1001, "text"),
    (lambda v: check_scenario(v, 100, 8), 1, "vocabulary"), (lambda v: check_scenario(49_152, v, 8), 0, "tokens"),
    (lambda v: check_scenario(49_152, v, 8), 10**17, "tokens"), (lambda v: check_scenario(100, 10, v), 101, "k"),
    (lambda v: check_scenario(100, 10, v), 2.5, "k"), (lambda v: check_scenario(100, 10, v), "8", "k"),
])
def test_every_knob_is_refused_by_name(check, value, field):
    with pytest.raises(ConfigError) as refused:
        check(value)
    assert refused.value.field == field
    assert refusal(refused.value).startswith(f"**{field}**")


def test_good_knobs_pass():
    assert check_alpha(0) == 0.0 and check_alpha(1) == 1.0
    assert check_temperature(20) == 20.0 and check_temperature(0.1) == 0.1
    assert check_position(4.0, 5) == 4  # a slider sends floats
    assert check_scenario(49_152.0, 10**12, 32.0) == (Scenario("your numbers", 49_152, 10**12), 32)


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tokenizer, student_dir):
    """A random tiny teacher (wider weights than the student's: its distributions have a shape) and the
    session's tiny student; nothing trained, nothing from the hub."""
    teacher = tiny.save_llama(tmp_path_factory.mktemp("learn") / "teacher", tokenizer, layers=2, hidden=32, seed=3,
                              init_range=0.3)
    return teacher, student_dir


@pytest.fixture
def reader(pair) -> LessonReader:
    return LessonReader(*(str(folder) for folder in pair))


def test_the_view_end_to_end_from_tiny_saved_models(reader, tokenizer):
    view = first_view(reader, TEXT, 0.5, 2.0)
    reading = reader.read(TEXT)
    analysis = reading.analysis
    assert view.rows == len(analysis) == len(tokenizer(TEXT).input_ids) - 1
    assert view.position == reading.first == teaching_position(analysis)
    assert [text for text, _ in view.tokens] == analysis.tokens
    assert [label for _, label in view.tokens][view.position + 1] == "predicted here"
    assert all(isinstance(f, go.Figure) for f in (view.labels, view.loss, view.gradient))
    assert "both models ran once" in view.status
    shown = position_view(analysis, tokenizer, view.position, 2.0)
    assert sum(shown.hard) == 1 and shown.hard[shown.ids.index(shown.actual_id)] == 1
    assert shown.actual_id == analysis.token_ids[view.position + 1]
    assert shown.teacher_t[:10] == sorted(shown.teacher_t[:10], reverse=True)  # the teacher's top 10 at T
    assert sum(shown.teacher_t) + shown.teacher_rest_t == pytest.approx(1, abs=1e-5)
    terms = loss_terms(analysis.teacher_logits[view.position], analysis.student_logits[view.position],
                       shown.actual_id, 0.5, 2.0)
    assert f"{terms.total:.3f}" in view.loss_note


def test_a_slider_move_runs_no_model(reader, pair, monkeypatch):
    assert reader.warm() is True
    first = first_view(reader, TEXT, 0.5, 2.0)

    def no_model(*args, **kwargs):
        raise AssertionError("a slider move ran a model")
    teacher, student = (spec_key(ModelSpec(name_or_path=str(folder))) for folder in pair)
    for model in (loaded_teacher(teacher)[1], _loaded_student(student)):
        monkeypatch.setattr(model, "forward", no_model)
    again = moved_view(reader, TEXT, 0.5, 2.0, first.position)
    assert again.loss_note == first.loss_note and again.labels_note == first.labels_note
    for position in (0, first.rows // 2, first.rows - 1):
        for alpha, t in ((0.0, 1.0), (1.0, 4.0), (0.3, 20.0)):
            assert "no model ran" in moved_view(reader, TEXT, alpha, t, position).status
    with pytest.raises(ConfigError) as refused:
        moved_view(reader, TEXT, 0.5, 2.0, first.rows)
    assert refused.value.field == "position"
    with pytest.raises(AssertionError, match="ran a model"):  # a new sentence does run them: the patch holds
        first_view(reader, TEXT + " again", 0.5, 2.0)


def test_token_text_is_escaped(reader):
    hostile = "the cat <script>alert(1)</script> [x](http://a) sees"
    view = first_view(reader, hostile, 0.5, 2.0)
    analysis = reader.read(hostile).analysis
    risky = [row for row in range(view.rows) if set(analysis.tokens[row + 1]) & set("<>[]()")]
    assert risky
    for position in risky:  # where the token predicted, which the note and the title name, is hostile
        shown = moved_view(reader, hostile, 0.5, 2.0, position)
        assert "<" not in shown.labels_note and "](" not in shown.labels_note  # no HTML, no Markdown link
        for text in (shown.labels.layout.title.text, *shown.labels.data[0].x):
            assert "<" not in text


def test_an_unprepared_default_says_so_and_fetches_nothing(tmp_path):
    reader = LessonReader(cache_dir=tmp_path)
    assert "not prepared yet" in reader.unavailable()
    assert reader.warm() is False  # the page keeps asking until the default is ready
    with pytest.raises(LessonUnavailable) as refused:
        first_view(reader, TEXT, 0.5, 2.0)
    assert "prepare-defaults" in refusal(refused.value)
    assert list(tmp_path.iterdir()) == []  # no download started, no lock taken


def test_storage_view_shows_a_cache_s_recorded_mass_share(tmp_path, reader):
    services = SimpleNamespace(caches_dir=tmp_path / "caches", cache_dir=None)
    _, note = storage_view(services, reader, 49_152, DEFAULT_CORPUS_TOKENS, CACHE_K, None, None)
    assert "no teacher cache" in note and "32·2 + 32·2 + 2 = 130 bytes" in note
    folder = services.caches_dir / "k32_<b>"
    folder.mkdir(parents=True)
    manifest = Manifest("t", "h", "d", k=32, vocab=49_152, seq_len=8, blocks=1, shards_done=[0], mass_sum=85.0,
                        positions=100)
    (folder / MANIFEST).write_text(json.dumps(asdict(manifest)), encoding="utf-8")
    first_view(reader, TEXT, 0.5, 2.0)
    figure, note = storage_view(services, reader, 128_256, 10**9, 32, TEXT, 2)
    assert "85.0%" in note and "k32&#95;&lt;b&gt;" in note and "<b>" not in note
    assert "At position 2 of your sentence" in note
    assert "32·2 + 32·4 + 2 = 194 bytes" in note and "full logits, fp16 257 TB" in note  # 128,256·2·10⁹ B
    assert figure.layout.yaxis.type == "log"
    assert {trace.name for trace in figure.data} == {"full logits, fp32", "full logits, fp16", "top-32 cache",
                                                     "hard labels"}


def test_the_tab_offers_its_endpoints(tmp_path):
    services = SimpleNamespace(caches_dir=tmp_path / "caches", cache_dir=tmp_path)
    with gr.Blocks() as app, gr.Tabs() as tabs:
        create_learn_tab(services)
    names = {fn.api_name for fn in app.fns.values()}
    assert {"learn_read", "learn_view", "learn_storage"} <= names
    assert [type(child) for child in tabs.children] == [gr.Tab]  # anything else in Tabs repeats or drops tabs


def test_the_tab_s_torch_work_runs_on_one_thread_and_leaves_the_others_alone():
    before = torch.get_num_threads()
    assert on_torch_thread(torch.get_num_threads) == 1
    started = []
    later = threading.Thread(target=lambda: started.append(torch.get_num_threads()))
    later.start()
    later.join()
    assert torch.get_num_threads() == before and started == [before]


def test_token_labels_keep_quotes_readable():
    assert token_labels(['"', "'", "<b>&"]) == ['"', "'", "&lt;b&gt;&amp;"]  # plotly shows &quot; as is


def test_the_first_position_shown_predicts_a_word_where_the_teacher_hesitates():
    # rows 0..3 predict tokens 1..4; row 2's teacher hesitates most, but it predicts punctuation
    logits = torch.tensor([[5.0, 5.0, 0.0], [4.0, 1.0, 0.0], [3.0, 3.0, 3.0], [4.0, 2.0, 0.0]])
    analysis = TokenAnalysis([0, 1, 2, 3, 4], ["The", " cat", " sat", ",", " on"], logits, logits.clone(), 0.0)
    assert teaching_position(analysis) == 3  # not row 0 (one token of context), not row 2 (","), row 3 > row 1
