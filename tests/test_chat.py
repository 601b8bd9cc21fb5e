"""Chat side by side: the streamed answers grow token by token to the full answer (greedy: what generate()
writes), a seed gives one answer, the teacher's rating of each student token is F.kl_div's reverse KL and 0
for a student that is its teacher, settings a caller sends are refused naming the field, hostile text stays
text, a run without a baseline, a run of two tokenizers and a deleted run are each told apart clearly, and the
tab's handlers work inside the app's gr.Tabs. Runs here are config.json alone (their step-0 student) unless
marked slow."""
import dataclasses
import html
import re
import shutil
from types import SimpleNamespace

import gradio as gr
import pytest
import tiny
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from workbench.config.schema import DistillConfig
from workbench.eval.chat import (
    MAX_NEW_TOKENS,
    MAX_PROMPT_CHARS,
    NO_BASELINE,
    ONE_TOKENIZER,
    Answer,
    ChatSettings,
    chat_settings,
    chat_stream,
    open_chat,
    prompt_ids,
    rate,
)
from workbench.eval.inspector import Inspector
from workbench.eval.on_policy_measure import sample_answer, settings_for
from workbench.eval.token_stats import TopK, top_k, top_k_rows
from workbench.models.sampling import sample, stream
from workbench.store.rundir import CONFIG
from workbench.ui.chat_tab import answer_head, answer_html, create_chat_tab, inspect_token

PROMPT = "the cat sees"
HOSTILE = "<script>alert(1)</script> <img src=x onerror=alert(2)> [a](http://x) **b**"
GREEDY = ChatSettings(0.0, 1.0, 8, 0)


def _config(teacher, student, corpus, name, runs, **loss) -> DistillConfig:
    return DistillConfig.from_dict({
        "teacher": {"name_or_path": str(teacher)}, "student": {"name_or_path": str(student)},
        "data": {"source": str(corpus[0]), "validation_source": str(corpus[1])}, "loss": {"alpha": 0.2, **loss},
        "train": {"max_steps": 10, "batch_size": 4, "seq_len": 32},
        "output": {"runs_dir": str(runs), "run_name": name}})


@pytest.fixture(scope="module")
def runs(tmp_path_factory, teacher_dir, student_dir, corpus_files):
    """A runs folder of runs that only have their config (so only a step-0 student): "plain", its CE-only
    baseline "plain-ce-baseline", and "cross", whose student reads another tokenizer than the teacher."""
    root = tmp_path_factory.mktemp("chat-runs")
    sp = tmp_path_factory.mktemp("sp")
    sp_student = tiny.save_llama(sp / "student", tiny.build_sentencepiece_tokenizer(sp / "tok"), layers=2, hidden=32,
                                 seed=1)
    for name, student, loss in (("plain", student_dir, {}), ("plain-ce-baseline", student_dir, {"alpha": 1.0}),
                                ("cross", sp_student, {"cross_tokenizer": "hybrid"})):
        (root / name).mkdir()
        _config(teacher_dir, student, corpus_files, name, root, **loss).save(root / name / CONFIG)
    return root


@pytest.fixture(scope="module")
def models(teacher_dir, student_dir):
    load = lambda folder: AutoModelForCausalLM.from_pretrained(folder).eval()  # noqa: E731
    return load(teacher_dir), load(student_dir)


def _services(runs, baselines=None):
    baselines = baselines or {}
    return SimpleNamespace(inspector=Inspector(runs), baseline_of=lambda run_id: baselines.get(run_id))


def _last(stream_of_answers) -> tuple[Answer, ...]:
    answers = None
    for answers in stream_of_answers:
        pass
    return answers


def test_settings_out_of_range_are_refused_naming_the_field():
    assert chat_settings(0, 1, MAX_NEW_TOKENS, 2**32 - 1) == ChatSettings(0.0, 1.0, MAX_NEW_TOKENS, 2**32 - 1)
    assert chat_settings(0.7, 0.9, 64.0, 3.0).max_new_tokens == 64  # a slider sends floats
    bad = [("temperature", (-0.1, 0.9, 8, 0)), ("temperature", (2.5, 0.9, 8, 0)), ("temperature", ("1", 0.9, 8, 0)),
           ("temperature", (float("nan"), 0.9, 8, 0)), ("top_p", (1, 0, 8, 0)), ("top_p", (1, 1.01, 8, 0)),
           ("top_p", (1, True, 8, 0)), ("max_new_tokens", (1, 1, 0, 0)), ("max_new_tokens", (1, 1, 8.5, 0)),
           ("max_new_tokens", (1, 1, MAX_NEW_TOKENS + 1, 0)), ("max_new_tokens", (1, 1, 10**400, 0)),
           ("seed", (1, 1, 8, -1)), ("seed", (1, 1, 8, 2**32)), ("seed", (1, 1, 8, float("inf"))),
           ("seed", (1, 1, 8, None))]
    for field, values in bad:
        with pytest.raises(ValueError, match=rf"^invalid config: {field}: must be a (whole )?number in [\[(]"):
            chat_settings(*values)


def test_the_prompt_follows_the_chat_template_or_is_plain_text(tokenizer):
    ids = prompt_ids(tokenizer, PROMPT)
    assert tokenizer.decode(ids) == f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    base = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    base.chat_template = None
    assert prompt_ids(base, PROMPT) == base(PROMPT).input_ids


def test_greedy_streams_what_generate_writes_and_a_seed_gives_one_answer(models, tokenizer):
    _, student = models
    prompt = prompt_ids(tokenizer, PROMPT)
    greedy = settings_for(tokenizer, len(tokenizer), 0.0, 12)
    assert list(stream(student, prompt, greedy, 0)) == sample(student, [prompt], greedy, 0)[0]
    hot = settings_for(tokenizer, len(tokenizer), 1.5, 12)
    first = list(stream(student, prompt, hot, 7))
    assert list(stream(student, prompt, hot, 7)) == first and len(first) == 12  # a random student never stops
    assert any(list(stream(student, prompt, hot, seed)) != first for seed in (8, 9))
    narrow = dataclasses.replace(hot, top_p=1e-6)
    assert list(stream(student, prompt, narrow, 3)) == list(stream(student, prompt, greedy, 0))  # top-p → 0: argmax
    limited = settings_for(tokenizer, 40, 1.5, 30)
    assert max(stream(student, prompt, limited, 1)) < 40  # ids past the shared rows are never drawn


def test_the_stream_grows_to_the_full_answer_then_rates_it(runs, models, tokenizer):
    inspector = Inspector(runs)
    key = inspector.points("plain")[0].key
    chat = open_chat(inspector, "plain", key, None, PROMPT, ChatSettings(1.0, 0.9, 10, 5))
    assert [c.role for c in chat.columns] == ["teacher", "student"] and chat.missing == {"baseline": NO_BASELINE}
    rounds = list(chat_stream(chat, 5))
    for role in ("teacher", "student"):
        seen = [next(a for a in answers if a.role == role) for answers in rounds]
        lengths = [len(a.ids) for a in seen]
        assert lengths == sorted(lengths) and lengths[0] == 1 and len(set(lengths)) > 3  # one token a round
        assert all(later.ids[:len(a.ids)] == a.ids for a, later in zip(seen, seen[1:]))  # each extends the last
        column = next(c for c in chat.columns if c.role == role)
        assert seen[-1].done and list(seen[-1].ids) == list(stream(column.model, column.prompt, column.sampling, 5))
        assert seen[-1].text == tokenizer.decode(list(seen[-1].ids), skip_special_tokens=True)
    final = {a.role: a for a in rounds[-1]}
    assert final["teacher"].rated is None and final["student"].rated is not None
    assert len(final["student"].rated.rkl) == len(final["student"].ids) == len(final["student"].rated.top)
    again = _last(chat_stream(chat, 5))
    assert [a.ids for a in again] == [a.ids for a in rounds[-1]]  # the same seed: the same answers


def test_the_teachers_rating_is_reverse_kl_per_student_token(models, tokenizer):
    teacher, student = models
    prompt = prompt_ids(tokenizer, PROMPT)
    answer = list(stream(student, prompt, settings_for(tokenizer, len(tokenizer), 1.0, 10), 1))
    rated = rate(teacher, student, tokenizer, prompt, answer)
    ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        p_log = F.log_softmax(teacher(input_ids=ids).logits[0, len(prompt) - 1:-1].float(), -1)
        q_log = F.log_softmax(student(input_ids=ids).logits[0, len(prompt) - 1:-1].float(), -1)
    # KL(q ‖ p) per position = F.kl_div(input = log p, target = log q)
    reference = F.kl_div(p_log, q_log, reduction="none", log_target=True).sum(-1)
    assert torch.allclose(torch.tensor(rated.rkl), reference, atol=1e-5) and (reference > 0.1).all()
    chosen = torch.tensor(answer)[:, None]
    assert torch.allclose(torch.tensor(rated.teacher_logp), p_log.gather(-1, chosen).squeeze(-1), atol=1e-5)
    assert rated.tokens == [tokenizer.decode([i]) for i in answer]
    assert all(top.actual == token for top, token in zip(rated.top, rated.tokens))
    same = rate(teacher, teacher, tokenizer, prompt, answer)
    assert max(abs(v) for v in same.rkl) < 1e-6 and same.teacher_logp == same.student_logp
    # Inspect's Sample view reads its answers through the same code: the same answer, the same rating.
    sampled = sample_answer(teacher, student, tokenizer, prompt, 10, 4)
    again = rate(teacher, student, tokenizer, prompt, sampled.analysis.token_ids[sampled.prompt_len:])
    assert torch.allclose(torch.tensor(again.rkl), sampled.terms()["rkl"], atol=1e-6)
    # The top-k of all the answer's rows at once is each row's own.
    analysis, rows = sampled.analysis, list(range(len(sampled.analysis)))
    for together, alone in zip(top_k_rows(analysis, tokenizer, rows, 2.0, 5),
                               [top_k(analysis, tokenizer, row, 2.0, 5) for row in rows]):
        assert together.ids == alone.ids and together.actual == alone.actual
        assert together.teacher == pytest.approx(alone.teacher, abs=1e-6)
        assert together.student_rest == pytest.approx(alone.student_rest, abs=1e-6)


def _fn(blocks: gr.Blocks, api_name: str):
    return next(f for f in blocks.fns.values() if f.api_name == api_name).fn


def _send(blocks: gr.Blocks, *args) -> list[tuple]:
    return list(_fn(blocks, "chat")(*args))


def _app(services) -> gr.Blocks:
    """The tab as app.py will place it: inside gr.Tabs, after the others."""
    with gr.Blocks() as blocks:
        with gr.Tabs():
            create_chat_tab(services)
    return blocks


def test_the_tab_streams_rates_and_shows_a_clicked_token(runs):
    services = _services(runs, {"plain": "plain-ce-baseline"})
    blocks = _app(services)
    tabs = next(b for b in blocks.blocks.values() if isinstance(b, gr.Tabs))
    assert [type(c).__name__ for c in tabs.children] == ["Tab"]  # nothing else lands in the tab bar
    step, note = _fn(blocks, "chat_run")("plain")
    assert step.value == "initial (step 0)" and "CE-only baseline: plain-ce-baseline" in note
    rounds = _send(blocks, "plain", "initial (step 0)", PROMPT, 0.8, 0.9, 6, 3)
    message, heads, bodies, rated = rounds[-1][0], rounds[-1][1:4], rounds[-1][4:7], rounds[-1][7]
    assert message == "" and set(rated) == {"student", "baseline"}  # both students rated by one teacher
    assert any(not r[7] for r in rounds) and "▍" in rounds[0][5]  # streamed: written first, rated at the end
    assert "T = 0.8, top-p 0.9, up to 6 new tokens, seed 3" in heads[0] and "tokens/s" in heads[2]
    assert "KL(student ‖ teacher)" in heads[1] and 'data-pos="0"' in bodies[1] and 'data-pos' not in bodies[0]
    assert "CE-only baseline plain-ce-baseline: initial (step 0)" in heads[2]
    body, detail, figure = inspect_token("baseline", rated, 1)
    assert "dw-selected" in body and f"{rated['baseline'].rated.rkl[1]:.3f}" in detail
    assert {trace.name for trace in figure.data} == {"teacher", "CE-only baseline"}
    for clicked in (-1, 99, "1", None, 1.5):
        assert "**position**: must be a whole number" in inspect_token("student", rated, clicked)[1]
    assert "not rated" in inspect_token("student", {}, 0)[1]


def test_refusals_name_the_field_or_the_run(runs, tmp_path):
    blocks = _app(_services(runs))
    rounds = _send(blocks, "plain", "initial (step 0)", PROMPT, 0.8, 0.9, MAX_NEW_TOKENS + 1, 0)
    assert len(rounds) == 1 and html.unescape(rounds[0][0]).startswith("**max_new_tokens**: must be a whole number "
                                                                       "in [1, 256], got 257")
    assert all(value == gr.skip() for value in rounds[0][1:])  # what was shown stays
    assert "prompt: at most" in _send(blocks, "plain", "initial (step 0)", "x" * (MAX_PROMPT_CHARS + 1), 1, 1, 4, 0)[0][0]
    assert "prompt: write a prompt" in _send(blocks, "plain", "initial (step 0)", "  ", 1, 1, 4, 0)[0][0]
    assert "no student" in _send(blocks, "plain", "checkpoint-7 (step 7)", PROMPT, 1, 1, 4, 0)[0][0]
    assert "Pick a run" in _send(blocks, {"x": 1}, "initial (step 0)", PROMPT, 1, 1, 4, 0)[0][0]
    for missing in ("nope", "../plain", "plain/x"):
        assert "no started run" in _send(blocks, missing, "initial (step 0)", PROMPT, 1, 1, 4, 0)[0][0]
    shutil.copytree(runs / "plain", tmp_path / "gone")  # deleted after the picker listed it
    blocks = _app(_services(tmp_path))
    assert _send(blocks, "gone", "initial (step 0)", PROMPT, 1, 1, 4, 0)[-1][0] == ""
    shutil.rmtree(tmp_path / "gone")
    assert "no started run" in _send(blocks, "gone", "initial (step 0)", PROMPT, 1, 1, 4, 0)[0][0]


def test_a_run_without_a_baseline_says_so_and_two_tokenizers_answer_uncoloured(runs):
    blocks = _app(_services(runs))
    final = _send(blocks, "plain", "initial (step 0)", PROMPT, 0, 1, 4, 0)[-1]
    assert "no CE-only baseline for this run" in final[3] and final[6] == ""
    assert "No CE-only baseline" in _fn(blocks, "chat_run")("plain")[1]
    final = _send(blocks, "cross", "initial (step 0)", PROMPT, 0, 1, 4, 0)[-1]
    message, rated, bodies = final[0], final[7], final[4:7]
    assert message == "" and rated == {} and "needs one tokenizer" in final[2]
    assert "data-pos" not in bodies[1] and bodies[0] and bodies[1]  # both answered, neither coloured
    assert "needs one tokenizer" in ONE_TOKENIZER


def test_hostile_text_in_prompt_and_answer_stays_text(runs):
    hostile = SimpleNamespace(text=HOSTILE, ids=(1, 2), done=True, seconds=0.5, note=HOSTILE, title=HOSTILE,
                              role="student", rated=None)
    page = answer_html(Answer("student", HOSTILE, (1, 2), HOSTILE, False, 0.5))
    head = answer_head("student", hostile, GREEDY)
    tokens = ["<script>", "alert(1)", "</script>"]
    top = TopK([1, 2], ["<img src=x onerror=alert(2)>", "<b>"], [0.5, 0.2], [0.1, 0.3], 0.3, 0.6, tokens[0])
    rated = SimpleNamespace(tokens=tokens, rkl=[0.1, 0.2, 0.3], teacher_logp=[-1.0] * 3, student_logp=[-2.0] * 3,
                            top=[top] * 3, context=HOSTILE)
    body, detail, figure = inspect_token("student", {"student": SimpleNamespace(rated=rated)}, 0)
    for raw in ("<script", "<img", "onerror=alert(2)>"):
        assert raw not in page and raw not in body and raw not in figure.to_json()
    for raw in ("<script", "<img", "](http", "**b**"):  # Markdown: no link, no emphasis either
        assert raw not in head and raw not in detail
    assert HOSTILE in html.unescape(re.sub(r"<[^>]+>", "", page))
    # A hostile prompt reaches the models as text and comes back nowhere unescaped.
    for shown in _send(_app(_services(runs)), "plain", "initial (step 0)", HOSTILE, 1.0, 1.0, 6, 0):
        assert not any("<script" in str(value) for value in shown)


@pytest.mark.slow
def test_a_trained_students_baseline_answers_at_the_same_step(distilled_run):
    run, _, _ = distilled_run
    shutil.copytree(run.path, run.path.parent / "distilled-ce-baseline", symlinks=True)  # a stand-in baseline
    shutil.rmtree(run.path.parent / "distilled-ce-baseline" / "checkpoints" / "checkpoint-10")
    blocks = _app(_services(run.path.parent, {"distilled": "distilled-ce-baseline"}))
    step = _fn(blocks, "chat_run")("distilled")[0]
    assert step.value == "final (step 30)" and "checkpoint-20 (step 20)" in [c[0] for c in step.choices]
    final = _send(blocks, "distilled", "checkpoint-20 (step 20)", PROMPT, 0, 1, 8, 0)[-1]
    assert "distilled-ce-baseline: checkpoint-20 (step 20)" in final[3] and set(final[7]) == {"student", "baseline"}
    # The same weights at the same step: the same greedy answer and the same rating.
    assert final[7]["student"].ids == final[7]["baseline"].ids
    assert final[7]["student"].rated.rkl == final[7]["baseline"].rated.rkl
    final = _send(blocks, "distilled", "checkpoint-10 (step 10)", PROMPT, 0, 1, 8, 0)[-1]
    assert "has no student saved at step 10" in final[3] and set(final[7]) == {"student"}
