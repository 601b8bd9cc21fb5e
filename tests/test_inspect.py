"""The dark-knowledge inspector on tiny models: distributions are distributions, top-k is ordered, a
model against itself diverges by nothing, temperature re-softens the kept logits exactly, hostile token
text stays text, and a run's saved students move toward the teacher."""
import html
import re

import pytest
import torch
from transformers import AutoModelForCausalLM

from workbench.eval.inspector import Inspector
from workbench.eval.token_stats import STATS, analyse, softened, token_stats, top_k
from workbench.ui.heatmap import token_heatmap
from workbench.ui.plots import token_distributions, token_labels

TEXT = "the cat sees the red ball by the river. a dog likes an apple every day."


@pytest.fixture(scope="module")
def pair(teacher_dir, student_dir, tokenizer):
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    student = AutoModelForCausalLM.from_pretrained(student_dir).eval()
    return teacher, student, tokenizer


def test_distributions_sum_to_one_and_top_k_is_ordered(pair):
    teacher, student, tok = pair
    found = analyse(teacher, student, tok, TEXT)
    assert len(found) == len(found.tokens) - 1 == found.teacher_logits.shape[0]
    for t in (0.5, 1.0, 4.0):
        for logits in (found.teacher_logits, found.student_logits):
            assert torch.allclose(softened(logits, t).sum(-1), torch.ones(len(found)), atol=1e-5)
        top = top_k(found, tok, position=3, temperature=t, k=5)
        assert top.teacher == sorted(top.teacher, reverse=True)  # ordered by the teacher's probability
        assert sum(top.teacher) + top.teacher_rest == pytest.approx(1, abs=1e-5)
        assert sum(top.student) + top.student_rest == pytest.approx(1, abs=1e-5)
        p, q = softened(found.teacher_logits[3], t), softened(found.student_logits[3], t)
        assert top.ids[0] == int(p.argmax())
        assert set(p.topk(5).indices.tolist()) | set(q.topk(5).indices.tolist()) == set(top.ids)
    assert top.actual == found.tokens[4]  # row 3 predicts token 4


def test_a_model_against_itself_has_zero_divergence(pair):
    teacher, _, tok = pair
    stats = token_stats(analyse(teacher, teacher, tok, TEXT), temperature=2.0)
    for name in ("forward_kl", "reverse_kl", "jsd"):
        assert stats[name].abs().max() < 1e-5, name
    assert stats["agree"].min() == 1 and torch.allclose(stats["teacher_entropy"], stats["student_entropy"])


def test_temperature_resoftens_the_kept_logits_exactly(pair):
    teacher, student, tok = pair
    found = analyse(teacher, student, tok, TEXT)
    ids = torch.tensor([found.token_ids])
    with torch.no_grad():
        fresh = teacher(input_ids=ids).logits[0, :-1].float()
    for t in (0.5, 3.0):
        assert torch.allclose(softened(found.teacher_logits, t), torch.softmax(fresh / t, -1), atol=1e-6)
    hotter, colder = token_stats(found, 4.0), token_stats(found, 0.5)
    assert (hotter["teacher_entropy"] > colder["teacher_entropy"]).all()  # higher T = flatter = more entropy
    assert set(STATS) <= set(hotter)


HOSTILE = "<script>alert(1)</script> and <img src=x onerror=alert(2)> \" ' &amp;"


def test_hostile_token_text_is_escaped(pair):
    teacher, student, tok = pair
    found = analyse(teacher, student, tok, HOSTILE)
    assert "".join(found.tokens) == HOSTILE  # byte-level tokens: the text survives tokenizing
    page = token_heatmap(found.tokens, token_stats(found)["forward_kl"].tolist(), "KL <b>", selected=2)
    for raw in ("<script", "<img", "onerror=alert(2)>", "<b>"):
        assert raw not in page
    shown = html.unescape(re.sub(r"<[^>]+>", "", page))  # what a browser displays: the tags' text
    assert HOSTILE in shown and "KL <b>" in shown
    assert 'data-pos="2"' in page and "dw-selected" in page
    labels = token_labels(["<img src=x onerror=alert(1)>", "<b>", "<b>"])
    assert labels[0].startswith("&lt;img") and labels[1] != labels[2]  # escaped, and unique per token
    figure = token_distributions(top_k(found, tok, 0, 1.0, 5), 1.0, HOSTILE)
    assert "<script" not in figure.to_json() and "<img" not in figure.to_json()


def test_the_heatmap_needs_one_value_per_predicted_token():
    with pytest.raises(ValueError, match="one value per predicted token"):
        token_heatmap(["a", "b", "c"], [0.1, 0.2, 0.3], "KL")


@pytest.mark.slow
def test_inspector_walks_a_runs_students_toward_the_teacher(distilled_run):
    run, _, _ = distilled_run
    inspector = Inspector(run.path.parent)
    points = inspector.points("distilled")
    assert [(p.label, p.step) for p in points] == [("initial", 0), ("checkpoint-10", 10), ("checkpoint-20", 20),
                                                  ("final", 30)]
    first = inspector.analysis("distilled", points[-1].key, TEXT)
    assert inspector.analysis("distilled", points[-1].key, TEXT) is first  # cached: sliders never re-run models
    kl = [float(token_stats(inspector.analysis("distilled", p.key, TEXT))["forward_kl"].mean()) for p in points]
    assert kl[-1] < 0.5 * kl[0], kl
    path = inspector.trajectory("distilled", TEXT, position=2, temperature=1.0, k=3)
    assert path.steps == [0, 10, 20, 30] and len(path.tokens) == 3 and len(path.student) == 4
    assert path.forward_kl[-1] < path.forward_kl[0]
    assert inspector.validation_texts("distilled")  # held-out documents to pick from
    with pytest.raises(ValueError, match="no started run"):
        inspector.points("../elsewhere")
