"""The on-policy measure: its per-token terms against torch.nn.functional on tiny tensors, a student that is
its teacher measured at zero, greedy answers that repeat, the metrics in a finished run's evaluation and in
DuckDB, and the Inspect tab's view of a student's own answer (validated, escaped, per-token values)."""
import html
import re
from types import SimpleNamespace

import datasets
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from workbench.data.loading import heldout_dataset
from workbench.eval.inspector import Inspector
from workbench.eval.on_policy_measure import (
    HELDOUT_PROMPTS,
    KINDS,
    answer_batch,
    answer_terms,
    fitted,
    heldout_prompts,
    on_policy_measure,
    settings_for,
    vocab_limit,
)
from workbench.losses.divergences import IGNORE_INDEX
from workbench.models.sampling import sample
from workbench.store.database import Store
from workbench.store.ingest import Ingestor
from workbench.ui.inspect_tab import inspect_view

METRICS = [f"onpolicy_{name}_{kind}" for kind in KINDS for name in ("rkl", "teacher_logp", "student_logp",
                                                                     "answer_tokens")]


def test_answer_terms_match_torch_references():
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 3, 5, generator=gen), torch.randn(2, 3, 7, generator=gen) * 3
    targets = torch.tensor([[IGNORE_INDEX, 4, 1], [2, IGNORE_INDEX, 6]])  # 6: a row only the teacher has
    student = torch.cat([student, torch.zeros(2, 3, 2)], -1)  # both 7 wide; the student's last 2 are padding
    terms = answer_terms(student, teacher, targets, vocab=5)
    mask = targets != IGNORE_INDEX
    log_q, log_p = F.log_softmax(student[mask][:, :5], -1), F.log_softmax(teacher[mask][:, :5], -1)
    # KL(q || p) = F.kl_div(input=log p, target=log q)
    assert torch.allclose(terms["rkl"], F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(-1), atol=1e-6)
    assert torch.allclose(terms["teacher_logp"], -F.cross_entropy(teacher[mask], targets[mask], reduction="none"))
    assert torch.allclose(terms["student_logp"], -F.cross_entropy(student[mask], targets[mask], reduction="none"))
    assert terms["rkl"].shape == (4,) and (terms["rkl"] > 0).all()
    same = answer_terms(teacher, teacher.clone(), targets, vocab=7)
    assert same["rkl"].abs().max() == 0 and torch.equal(same["teacher_logp"], same["student_logp"])


def test_answer_batch_targets_only_the_answer_aligned_with_the_logits():
    ids, mask, targets = answer_batch([[1, 2], [3]], [[4, 5], [6, 7, 8]], pad_id=0)
    assert ids.tolist() == [[1, 2, 4, 5], [3, 6, 7, 8]] and mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1]]
    # logits at position i predict token i + 1: the first answer token is predicted by the prompt's last
    assert targets.tolist() == [[IGNORE_INDEX, 4, 5], [6, 7, 8]]
    ids, mask, targets = answer_batch([[1, 2, 3], [9]], [[4], [5]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3, 4], [9, 5, 0, 0]] and mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert targets.tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 4], [5, IGNORE_INDEX, IGNORE_INDEX]]


def test_prompts_are_block_prefixes_or_the_end_of_an_examples_prompt():
    blocks = datasets.Dataset.from_dict({"input_ids": [list(range(10)), list(range(10, 20))] * 20,
                                         "labels": [list(range(10)), list(range(10, 20))] * 20})
    prompts = heldout_prompts(blocks, prompt_tokens=4)
    assert len(prompts) == HELDOUT_PROMPTS and prompts[:2] == [[0, 1, 2, 3], [10, 11, 12, 13]]
    examples = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3, 4, 5, 6, 7]],
                                           "labels": [[IGNORE_INDEX] * 5 + [6, 7]]})
    assert heldout_prompts(examples, prompt_tokens=3) == [[3, 4, 5]]  # the tokens the answer continues


def test_prompt_and_answer_are_fitted_into_the_models_positions():
    model = lambda n: SimpleNamespace(config=SimpleNamespace(get_text_config=lambda: SimpleNamespace(  # noqa: E731
        max_position_embeddings=n)))
    long = list(range(600))
    prompts, new = fitted(model(512), model(1024), [long, [1, 2]], 400)
    assert new == 256 and prompts == [long[-256:], [1, 2]]  # a prompt keeps the tokens the answer continues
    assert fitted(model(512), model(512), [[1, 2]], 32) == ([[1, 2]], 32)


@pytest.fixture(scope="module")
def models(teacher_dir, student_dir):
    load = lambda folder: AutoModelForCausalLM.from_pretrained(folder).eval()  # noqa: E731
    return load(teacher_dir), load(teacher_dir), load(student_dir)


@pytest.fixture(scope="module")
def prompts(distilled_config, tokenizer):
    c = distilled_config
    return heldout_prompts(heldout_dataset(c.data, tokenizer, c.train.seq_len, c.train.seed), 16)


def test_a_student_that_is_its_teacher_measures_zero(models, tokenizer, prompts):
    teacher, same, _ = models
    m = on_policy_measure(teacher, same, tokenizer, prompts, max_new_tokens=8, batch_size=5)
    assert set(METRICS) <= set(m) and m["onpolicy_prompts"] == len(prompts) == HELDOUT_PROMPTS
    for kind in KINDS:
        assert 0 < m[f"onpolicy_answer_tokens_{kind}"] <= 8 * len(prompts)
        assert abs(m[f"onpolicy_rkl_{kind}"]) < 1e-6
        assert m[f"onpolicy_teacher_logp_{kind}"] == pytest.approx(m[f"onpolicy_student_logp_{kind}"], abs=1e-6)
        assert m[f"onpolicy_teacher_logp_{kind}"] < 0
    assert on_policy_measure(teacher, same, tokenizer, [], 8) == {}


def test_greedy_answers_repeat_and_an_untrained_student_is_far_from_the_teacher(models, tokenizer, prompts):
    teacher, _, student = models
    greedy = settings_for(tokenizer, vocab_limit(teacher, student, tokenizer), 0.0, 8)
    assert sample(student, prompts, greedy, seed=1) == sample(student, prompts, greedy, seed=2)
    first = on_policy_measure(teacher, student, tokenizer, prompts, 8)
    assert on_policy_measure(teacher, student, tokenizer, prompts, 8) == first  # the sampled seed is fixed too
    assert first["onpolicy_rkl_greedy"] > 0.5 and first["onpolicy_rkl_sampled"] > 0.5
    # the teacher finds a random student's text unlikely: far below its own answers' log-probability
    own = on_policy_measure(teacher, models[1], tokenizer, prompts, 8)
    assert first["onpolicy_teacher_logp_greedy"] < own["onpolicy_teacher_logp_greedy"] - 1


@pytest.mark.slow
def test_the_measure_is_in_a_finished_runs_evaluation_card_and_store(distilled_run, tmp_path):
    run, _, _ = distilled_run
    report = run.read_evaluations()[-1]
    m = report["metrics"]
    assert set(METRICS) <= set(m) and m["onpolicy_prompts"] == HELDOUT_PROMPTS
    assert m["onpolicy_rkl_greedy"] > 0 and m["onpolicy_teacher_logp_sampled"] < 0
    assert "On its own answers (16 held-out prompts" in report["card"]
    assert f"{m['onpolicy_rkl_greedy']:.3f}" in report["card"]
    store = Store(tmp_path / "db.duckdb")
    Ingestor(store, run.path.parent).ingest_all()
    evals = store.evals(["distilled"])
    judged = evals[(evals.split == "evaluation") & (evals.step == 30)].set_index("metric").value
    assert judged["onpolicy_rkl_sampled"] == pytest.approx(m["onpolicy_rkl_sampled"])
    compared = store.compare(["distilled"]).iloc[0]  # beside the other headline numbers in Compare
    assert compared.own_answers_rkl_greedy == pytest.approx(m["onpolicy_rkl_greedy"])
    assert compared.own_answers_rkl_sampled == pytest.approx(m["onpolicy_rkl_sampled"])
    store.close()


HOSTILE = "<script>alert(1)</script> <img src=x onerror=alert(2)> [a](http://x) **b**"


@pytest.mark.slow
def test_inspect_shows_the_students_own_answer_escaped_with_per_token_values(distilled_source, tokenizer):
    run, config, _ = distilled_source
    inspector = Inspector(run.path.parent)  # reads the shared run and writes nothing into it
    prompts = inspector.heldout_prompts("distilled")
    assert len(prompts) == HELDOUT_PROMPTS and inspector.prompt_texts("distilled")[0] == tokenizer.decode(prompts[0])
    final = inspector.points("distilled")[-1].key
    found = inspector.sampled("distilled", final, 1, 7)
    assert inspector.sampled("distilled", final, 1, 7) is found  # cached: sliders never re-sample
    assert found.analysis.token_ids[:found.prompt_len] == prompts[1] and len(found.analysis) > found.prompt_len - 1
    terms = found.terms()
    assert len(terms["rkl"]) == len(found.analysis.token_ids) - found.prompt_len and (terms["rkl"] >= 0).all()

    services = SimpleNamespace(inspector=inspector)
    view = inspect_view(services, "distilled", None, "", 1.0, 5, "reverse_kl", None, (1, 7))
    assert view.first == found.prompt_len - 1 and view.first <= view.position < view.positions
    assert f'data-pos="{view.first}"' in view.heatmap and f'data-pos="{view.first - 1}"' not in view.heatmap
    assert "KL(student ‖ teacher)" in view.summary and f"{float(terms['rkl'].mean()):.3f}" in view.summary
    assert inspect_view(services, "distilled", None, "", 1.0, 5, "reverse_kl", 0, (1, 7)).position == view.first

    for prompt, seed in ((HELDOUT_PROMPTS, 0), (-1, 0), (1.5, 0), (True, 0), ("0", 0), (float("nan"), 0),
                         (float("inf"), 0), (0, -1), (0, 2**32)):
        with pytest.raises(ValueError, match="whole number"):
            inspector.sampled("distilled", final, prompt, seed)
    with pytest.raises(ValueError, match="no student"):
        inspector.sampled("distilled", "checkpoint-7 (step 7)", 0, 0)
    with pytest.raises(ValueError, match="no started run"):
        inspector.sampled("../distilled", final, 0, 0)

    # Held-out data is not ours: a prompt with markup shows as text, in the heatmap and the summary.
    inspector._prompts["distilled"] = [tokenizer(HOSTILE, add_special_tokens=False).input_ids]
    view = inspect_view(services, "distilled", None, "", 1.0, 5, "reverse_kl", 0, (0, 0))
    for raw in ("<script", "<img", "onerror=alert(2)>"):
        assert raw not in view.heatmap and raw not in view.summary
    assert HOSTILE in html.unescape(re.sub(r"<[^>]+>", "", view.heatmap))
