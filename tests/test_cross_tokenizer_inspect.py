"""The inspector on a cross-tokenizer run (a byte-level BPE teacher, a SentencePiece-style student): the
teacher's distributions are over its own vocabulary, read where it has read the same text as the student;
the colour is the ULD training optimises, recomputed here from the two models directly; positions with
no teacher partner are marked as such (never 0); hostile text stays text; Sample and a one-tokenizer
run's view are unchanged."""
import dataclasses
import html
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import tiny
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from workbench.config.schema import DistillConfig
from workbench.eval.aligned_tokens import (
    UNALIGNED,
    AlignedAnalysis,
    aligned_stats,
    aligned_top_k,
)
from workbench.eval.inspector import Inspector
from workbench.losses.cross_tokenizer import uld_distance
from workbench.ui import inspect_tab
from workbench.ui.heatmap import token_heatmap

TEXT = "the cat sees the red ball by the river. a dog likes an apple every day."
HOSTILE = "<script>alert(1)</script> and <img src=x onerror=alert(2)> the cat"


@pytest.fixture(scope="module")
def cross_run(tmp_path_factory, teacher_dir, corpus_files):
    from workbench.engine.runner import run_training
    tmp = tmp_path_factory.mktemp("cross")
    student_tok = tiny.build_sentencepiece_tokenizer(tmp / "sp")
    student_dir = tiny.save_llama(tmp / "student", student_tok, layers=2, hidden=32, seed=1)
    config = DistillConfig.from_dict({
        "teacher": {"name_or_path": str(teacher_dir)}, "student": {"name_or_path": str(student_dir)},
        "data": {"source": str(corpus_files[0]), "validation_source": str(corpus_files[1])},
        "loss": {"cross_tokenizer": "uld"},
        "evaluation": {"at_end": False, "prompts": ["the cat"], "max_new_tokens": 4},
        "train": {"max_steps": 10, "batch_size": 8, "seq_len": 32, "lr": 1e-2, "logging_steps": 5, "save_steps": 5},
        "output": {"runs_dir": str(tmp / "runs"), "run_name": "cross"}})
    run_training(config)
    return Inspector(tmp / "runs"), Path(config.output.runs_dir) / "cross", config


def _models(run_dir: Path, teacher_dir: Path):
    load = lambda path: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()  # noqa: E731
    return (load(teacher_dir), load(run_dir / "student"), AutoTokenizer.from_pretrained(teacher_dir),
            AutoTokenizer.from_pretrained(run_dir / "student"))


def _final(inspector: Inspector, text: str = TEXT) -> AlignedAnalysis:
    key = inspector.points("cross")[-1].key
    return inspector.analysis("cross", key, text)


def test_the_teacher_is_read_over_its_own_vocabulary_where_it_has_read_the_same_text(cross_run, teacher_dir):
    inspector, run_dir, _ = cross_run
    found = _final(inspector)
    assert isinstance(found, AlignedAnalysis) and inspector.cross_tokenizer("cross")
    teacher, student, t_tok, s_tok = _models(run_dir, teacher_dir)
    assert found.token_ids == s_tok(TEXT).input_ids  # the student's own tokens
    assert found.teacher_logits.shape == (len(found), teacher.config.vocab_size)
    assert found.student_logits.shape == (len(found), student.config.vocab_size)
    assert t_tok.vocab_size != s_tok.vocab_size
    aligned = found.aligned.nonzero().squeeze(-1).tolist()
    assert aligned
    with torch.no_grad():
        rows = teacher(input_ids=torch.tensor([found.teacher_ids])).logits[0].float()
    for i in aligned:
        j = int(found.partner[i])
        # Both have read exactly the same text, and the row is the teacher's own next-token distribution.
        assert t_tok.decode(found.teacher_ids[:j + 1]) == s_tok.decode(found.token_ids[:i + 1])
        assert torch.allclose(found.teacher_logits[i], rows[j], atol=1e-5)
        assert torch.allclose(torch.softmax(found.teacher_logits[i], -1).sum(), torch.tensor(1.0), atol=1e-5)


def test_the_colour_is_uld_between_the_two_models_at_aligned_positions(cross_run, teacher_dir):
    inspector, run_dir, _ = cross_run
    found = _final(inspector)
    teacher, student, t_tok, s_tok = _models(run_dir, teacher_dir)
    with torch.no_grad():
        s_rows = student(input_ids=torch.tensor([found.token_ids])).logits[0, :-1].float()
        t_rows = teacher(input_ids=torch.tensor([found.teacher_ids])).logits[0].float()
    mask = found.aligned
    for temperature in (1.0, 2.5):
        expected = uld_distance(s_rows[mask], t_rows[found.partner[mask]], temperature)
        uld = aligned_stats(found, temperature)["uld"]
        assert torch.allclose(uld[mask], expected, atol=1e-5)
        assert float(expected.max()) > 0  # a 10-step student is not its teacher: the check can fail
        view = inspect_tab.inspect_view(SimpleNamespace(inspector=inspector), "cross", None, TEXT, temperature, 5,
                                        "forward_kl", int(mask.nonzero()[0]))
        shown = [float(v) for v in re.findall(r'data-pos="\d+" style="[^"]*" title="ULD[^:]*: ([^"]+)"', view.heatmap)]
        assert shown == pytest.approx(expected.tolist(), rel=1e-3, abs=1e-4)  # KL across tokenizers reads as ULD


def test_positions_without_a_teacher_partner_are_marked_never_zero(cross_run):
    inspector, _, _ = cross_run
    found = _final(inspector)
    gaps = (~found.aligned).nonzero().squeeze(-1).tolist()
    assert gaps, "this pair splits ' every' differently: some student positions have no partner"
    stats = aligned_stats(found)
    for key in ("uld", "dark_mass", "teacher_entropy", "agree"):
        assert all(math.isnan(float(stats[key][i])) for i in gaps), key
    assert not stats["uld"][found.aligned].isnan().any() and not stats["student_entropy"].isnan().any()
    view = inspect_tab.inspect_view(SimpleNamespace(inspector=inspector), "cross", None, TEXT, 1.0, 5, "uld", gaps[0])
    for i in gaps:
        span = re.search(rf'<span class="dw-tok dw-gap[^"]*" data-pos="{i}"[^>]*>', view.heatmap).group(0)
        assert "background-color" not in span and html.escape(UNALIGNED) in span
    assert len(re.findall(r"dw-gap", view.heatmap)) == len(gaps)
    assert f"{found.aligned.sum()} of {len(found)}" in view.summary and "no teacher position ends here" in view.summary
    assert {t.name for t in view.distributions.data} == {"student"}  # nothing to set beside it
    top = aligned_top_k(found, gaps[0])
    assert top.teacher_tokens == [] and math.isnan(top.uld)
    with pytest.raises(ValueError, match="no teacher position ends here"):
        inspector.trajectory("cross", TEXT, gaps[0], 1.0)


def test_the_detail_shows_each_models_own_top_k_with_its_own_texts(cross_run):
    inspector, _, _ = cross_run
    found = _final(inspector)
    i = int(found.aligned.nonzero()[-1])
    top = aligned_top_k(found, i, temperature=1.0, k=5)
    s_texts, t_texts = found.bridge.token_texts()
    p, q = torch.softmax(found.teacher_logits[i], -1), torch.softmax(found.student_logits[i], -1)
    assert top.teacher_tokens == [t_texts[j] for j in p.topk(5).indices.tolist()]
    assert top.student_tokens == [s_texts[j] for j in q.topk(5).indices.tolist()]
    assert top.teacher == pytest.approx(p.topk(5).values.tolist()) and top.teacher == sorted(top.teacher, reverse=True)
    assert set(top.shared) == set(top.teacher_tokens) & set(top.student_tokens)
    assert top.uld == pytest.approx(float(aligned_stats(found)["uld"][i]), abs=1e-6)
    view = inspect_tab.inspect_view(SimpleNamespace(inspector=inspector), "cross", None, TEXT, 1.0, 5, "jsd", i)
    assert {t.name for t in view.distributions.data} == {"teacher", "student"}
    assert "ULD compares the two sorted probability vectors" in view.summary and "Same text in both" in view.summary
    path = inspector.trajectory("cross", TEXT, i, 1.0, k=3)
    assert path.steps == [0, 5, 10] and path.tokens == top.teacher_tokens[:3]
    assert path.forward_kl[-1] == pytest.approx(top.uld, abs=1e-6)  # the distance followed is ULD


def test_hostile_text_stays_text(cross_run):
    inspector, _, _ = cross_run
    found = _final(inspector, HOSTILE)
    assert HOSTILE in "".join(found.tokens)  # byte fallback: every character survives the student's tokens
    view = inspect_tab.inspect_view(SimpleNamespace(inspector=inspector), "cross", None, HOSTILE, 1.0, 5, "uld", 1)
    for part in (view.heatmap, view.summary, view.distributions.to_json(), view.profile.to_json()):
        assert "<script" not in part and "<img" not in part
    shown = html.unescape(re.sub(r"<[^>]+>", "", view.heatmap.split('<div class="dw-legend">')[0]))
    assert HOSTILE in shown
    page = token_heatmap(["a", "<b>", "c"], [0.5, math.nan], "ULD", gaps=[False, True], gap_title="<i>none</i>")
    assert "<i>" not in page and "&lt;i&gt;none" in page and "<b>" not in page


def test_sampling_needs_one_tokenizer(cross_run):
    inspector, _, _ = cross_run
    with pytest.raises(ValueError, match="needs one tokenizer"):
        inspector.sampled("cross", inspector.points("cross")[-1].key, 0, 0)


def test_a_cross_tokenizer_run_with_one_tokenizer_is_read_token_by_token(cross_run):
    inspector, _, config = cross_run
    same = config.replace(student=dataclasses.replace(config.student, name_or_path=config.teacher.name_or_path))
    assert inspector._crosses(config) and not inspector._crosses(same)


def test_the_colour_choice_follows_the_run_and_any_other_value_is_refused_by_name(cross_run, distilled_source):
    """The colour dropdown takes any value (its choices change with the run), so the view checks it."""
    inspector, _, _ = cross_run
    services = SimpleNamespace(inspector=inspector)
    assert inspect_tab.inspect_view(services, "cross", None, TEXT, 1.0, 5, "forward_kl", 1).heatmap  # read as ULD
    for stat in ("bogus", "agree"):
        with pytest.raises(ValueError, match="colour by"):
            inspect_tab.inspect_view(services, "cross", None, TEXT, 1.0, 5, stat, 1)
    run, _, _ = distilled_source
    plain_services = SimpleNamespace(inspector=Inspector(run.path.parent))
    with pytest.raises(ValueError, match="colour by: 'uld' is not measured here"):
        inspect_tab.inspect_view(plain_services, run.path.name, None, TEXT, 1.0, 5, "uld", 1)
