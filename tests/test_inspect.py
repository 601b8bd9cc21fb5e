"""The dark-knowledge inspector on tiny models: distributions are distributions, top-k is ordered, a
model against itself diverges by nothing, temperature re-softens the kept logits exactly, hostile token
text stays text, token statistics equal the losses' own divergences, and a run's saved students move toward
the teacher."""
import html
import re

import pytest
import torch
from transformers import AutoModelForCausalLM

from workbench.eval.inspector import Inspector
from workbench.eval.token_stats import STATS, TokenAnalysis, analyse, entropy, softened, token_stats, top_k
from workbench.losses.divergences import forward_kl, generalized_jsd, reverse_kl
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


def losses_stats(found: TokenAnalysis, temperature: float) -> dict:
    """token_stats as the losses compute each statistic, one full softmax per statistic: the reference."""
    t, s = found.teacher_logits, found.student_logits
    p, q = softened(t, temperature), softened(s, temperature)
    nxt = torch.tensor(found.token_ids[1:])
    return {"forward_kl": forward_kl(s, t, temperature), "reverse_kl": reverse_kl(s, t, temperature),
            "jsd": generalized_jsd(s, t, temperature, beta=0.5), "dark_mass": 1 - p.max(-1).values,
            "teacher_entropy": entropy(p), "student_entropy": entropy(q),
            "student_nll": -q.gather(-1, nxt[:, None]).squeeze(-1).log(),
            "agree": (p.argmax(-1) == q.argmax(-1)).float()}


def assert_same_stats(found: TokenAnalysis, temperature: float):
    fast, reference = token_stats(found, temperature), losses_stats(found, temperature)
    assert set(fast) == set(reference) == set(STATS) | {"agree"}
    for name, expected in reference.items():
        assert fast[name].shape == expected.shape, name
        assert torch.allclose(fast[name], expected, rtol=1e-4, atol=1e-5, equal_nan=False), name


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_token_stats_equal_the_losses_divergences_on_a_model(pair, temperature):
    teacher, student, tok = pair
    assert_same_stats(analyse(teacher, student, tok, TEXT), temperature)


def test_token_stats_equal_the_losses_divergences_across_row_blocks():
    """A vocabulary wide enough that the rows are read in several blocks (the last one short), with tokens
    one model gives no mass (-inf logits, as the losses allow): each adds 0, never NaN."""
    generator = torch.Generator().manual_seed(0)
    rows, vocab = 9, 50_000
    teacher, student = (4 * torch.randn(rows, vocab, generator=generator) for _ in range(2))
    teacher[:, :7] = float("-inf")
    found = TokenAnalysis(torch.randint(7, vocab, (rows + 1,), generator=generator).tolist(), ["x"] * (rows + 1),
                          teacher, student, 0.0)
    for temperature in (0.5, 2.0):
        assert_same_stats(found, temperature)
    assert torch.isfinite(token_stats(found, 2.0)["forward_kl"]).all()


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
