"""Co-distillation, hidden-state matching and attention transfer on tiny models: the terms' math on tiny
tensors, the layer map, and short real runs (terms fall, schedules hold, resume restores every part)."""

import pytest
import tiny
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from workbench.config.fields import ConfigError
from workbench.config.schema import DistillConfig
from workbench.data.loading import PadCollator, tokenize_datasets
from workbench.engine.runner import run_training
from workbench.engine.strategies.co import scheduled_alpha
from workbench.engine.strategies.features import load_projection
from workbench.losses.features import attention_loss, hidden_state_loss, layer_map, reduce_heads
from workbench.models.loading import load_tokenizer
from workbench.store.rundir import RunDir


def make_config(teacher, student, corpus, runs, name, strategy, **sections):
    return DistillConfig.from_dict({
        "teacher": {"name_or_path": str(teacher)}, "student": {"name_or_path": str(student)},
        "data": {"source": str(corpus[0]), "validation_source": str(corpus[1])}, "strategy": strategy,
        "evaluation": {"at_end": False}, "loss": {"alpha": 0.5},
        "train": {"max_steps": 20, "batch_size": 8, "seq_len": 32, "lr": 1e-2, "logging_steps": 1, "save_steps": 10,
                  "lr_scheduler": "linear"},
        "output": {"runs_dir": str(runs), "run_name": name}, **sections})


def logged(run: RunDir, term: str) -> list[float]:
    return [m[term] for m in run.read_metrics() if term in m]


# ---------------------------------------------------------------- the math

def test_layer_map_defaults_and_refuses_bad_pairs():
    assert layer_map([], 2, 4, "hidden.layer_map") == [(0, 1), (1, 3)]
    assert layer_map([], 3, 30, "hidden.layer_map", pruned_from=[0, 14, 29]) == [(0, 0), (1, 14), (2, 29)]
    assert layer_map(["0:0", "1:2"], 2, 4, "hidden.layer_map") == [(0, 0), (1, 2)]
    with pytest.raises(ConfigError) as err:
        layer_map(["0:0", "1:9", "0:0"], 2, 4, "hidden.layer_map")
    assert [f for f, _ in err.value.problems] == ["hidden.layer_map[1]", "hidden.layer_map[2]"]
    assert "teacher 0..3" in str(err.value)


def test_hidden_state_loss_matches_references():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    labels = torch.tensor([[1, 1, 1, 1, -100], [1, 1, -100, -100, -100]])
    mask = labels[:, 1:] != -100  # positions 0..3 predicting a target
    expected = F.mse_loss(s[:, :-1][mask], t[:, :-1][mask], reduction="none").mean(-1).sum() / mask.sum()
    assert hidden_state_loss([s], [t], labels) == pytest.approx(float(expected), rel=1e-6)
    assert hidden_state_loss([s], [s], labels, "cosine") == pytest.approx(0.0, abs=1e-6)
    assert hidden_state_loss([s], [-s], labels, "cosine") == pytest.approx(2.0, rel=1e-6)
    # Normalised by the accumulated batch's targets: two pairs over twice the items average the same.
    assert hidden_state_loss([s, s], [t, t], labels, num_items=2 * mask.sum()) == pytest.approx(float(expected))


def test_attention_loss_matches_references_and_groups_heads():
    torch.manual_seed(0)
    causal = torch.full((6, 6), float("-inf")).triu(1)
    s = torch.softmax(torch.randn(1, 2, 6, 6) + causal, -1)
    t = torch.softmax(torch.randn(1, 4, 6, 6) + causal, -1)
    labels = torch.ones(1, 6, dtype=torch.long)
    assert attention_loss([t], [t], labels) == pytest.approx(0.0, abs=1e-6)
    grouped = reduce_heads(t, 2)
    assert torch.allclose(grouped[:, 0], t[:, :2].mean(1)) and torch.allclose(grouped[:, 1], t[:, 2:].mean(1))
    # KL(teacher row || student row) per head, averaged over heads and the 5 query rows with a target.
    reference = F.kl_div(s[:, :, :-1].clamp_min(1e-12).log(), grouped[:, :, :-1], reduction="none").sum(-1)
    assert attention_loss([s], [t], labels, mapped_heads=True) == pytest.approx(float(reference.mean(1).sum() / 5),
                                                                               rel=1e-5)
    with pytest.raises(ValueError, match="cannot be grouped"):
        reduce_heads(torch.softmax(torch.randn(1, 3, 6, 6), -1), 2)


@pytest.mark.parametrize("kind", ["mse", "cosine", "kl", "attention_mse"])
def test_non_finite_teacher_states_at_ignored_positions_add_exactly_zero(kind):
    """A NaN in the teacher's hidden states or attention rows where no target is learned changes neither
    the term nor any gradient (both models' values there are zeroed before the arithmetic)."""
    torch.manual_seed(1)
    labels = torch.tensor([[1, 1, 1, -100, -100, -100]])
    ignored = torch.tensor([False, False, True, True, True])  # query positions 0..4; 2.. predict nothing
    if kind in ("mse", "cosine"):
        s, t = torch.randn(1, 6, 8).requires_grad_(True), torch.randn(1, 6, 8)
        bad = t.clone()
        bad[0, 3] = float("nan")
        term = lambda teacher: hidden_state_loss([s], [teacher], labels, kind)  # noqa: E731
    else:
        causal = torch.full((6, 6), float("-inf")).triu(1)
        logits = (torch.randn(1, 2, 6, 6) + causal).requires_grad_(True)
        s, t = logits, torch.softmax(torch.randn(1, 2, 6, 6) + causal, -1)
        bad = t.clone()
        bad[0, :, 4] = float("nan")
        loss = "kl" if kind == "kl" else "mse"
        term = lambda teacher: attention_loss([torch.softmax(s, -1)], [teacher], labels, loss)  # noqa: E731
    (clean,), (poisoned,) = (torch.autograd.grad(term(x), [s]) for x in (t, bad))
    assert term(bad).item() == term(t).item()
    assert torch.isfinite(poisoned).all() and torch.equal(poisoned, clean)
    rows = poisoned[0, :5] if kind in ("mse", "cosine") else poisoned[0].transpose(0, 1)[:5]  # (position, ...)
    assert (rows[ignored] == 0).all()


def test_scheduled_alpha_moves_from_start_to_end():
    assert [scheduled_alpha(s, 1.0, 0.5, 10) for s in (0, 5, 10, 50)] == [1.0, 0.75, 0.5, 0.5]
    assert scheduled_alpha(5, 1.0, 0.5, 10, "cosine") == pytest.approx(0.75)
    assert scheduled_alpha(1, 1.0, 0.5, 10, "cosine") > scheduled_alpha(1, 1.0, 0.5, 10, "linear")  # slow start
    assert scheduled_alpha(0, 1.0, 0.2, 0) == 0.2


# ---------------------------------------------------------------- co-distillation

def co_config(teacher_dir, student_dir, corpus_files, runs, name, **co):
    return make_config(teacher_dir, student_dir, corpus_files, runs, name, "co_distillation",
                       co_distillation={"alpha_start": 1.0, "alpha_end": 0.2, "alpha_warmup_steps": 10,
                                        "teacher_lr": 3e-3, **co},
                       train={"max_steps": 30, "batch_size": 8, "seq_len": 32, "lr": 1e-2, "logging_steps": 1,
                              "save_steps": 10, "lr_scheduler": "linear"})


@pytest.fixture(scope="module")
def co_run(tmp_path_factory, teacher_dir, student_dir, corpus_files):
    runs = tmp_path_factory.mktemp("co")
    final = run_training(co_config(teacher_dir, student_dir, corpus_files, runs, "co"))
    return RunDir(runs / "co"), final


@pytest.mark.slow
def test_co_distillation_trains_both_models_on_a_schedule(co_run, teacher_dir):
    run, final = co_run
    teacher_ce, kd = logged(run, "teacher_ce"), logged(run, "kd")
    assert len(teacher_ce) == 30 and teacher_ce[-1] < teacher_ce[0] and kd[-1] < 0.5 * kd[0]
    for m in (m for m in run.read_metrics() if "alpha" in m):  # the loss used the α logged with it
        assert m["loss"] == pytest.approx(m["alpha"] * m["ce"] + (1 - m["alpha"]) * m["kd"] + m["teacher_ce"],
                                          rel=1e-4)
    alphas = {m["step"]: m["alpha"] for m in run.read_metrics() if "alpha" in m}
    assert [alphas[s] for s in (1, 6, 11, 30)] == pytest.approx([1.0, 0.6, 0.2, 0.2])  # the α step s was taken with
    assert final["eval_teacher_ce"] < logged(run, "eval_teacher_ce")[0]
    # Both models are saved at the end with model cards; the trained teacher has moved.
    trained = AutoModelForCausalLM.from_pretrained(run.path / "teacher")
    before = AutoModelForCausalLM.from_pretrained(teacher_dir)
    assert not torch.equal(trained.lm_head.weight, before.lm_head.weight)
    assert "co-distillation" in (run.path / "teacher" / "README.md").read_text()
    assert (run.student / "README.md").exists() and (run.checkpoints / "checkpoint-30" / "teacher").is_dir()


@pytest.mark.slow
def test_co_distillation_resumes_both_models_and_the_schedule(co_run, crash_at_step, tmp_path, teacher_dir,
                                                              student_dir, corpus_files):
    run = RunDir(tmp_path / "co")
    config = co_config(teacher_dir, student_dir, corpus_files, tmp_path, "co")
    arm, disarm = crash_at_step
    arm(15)
    with pytest.raises(KeyboardInterrupt):
        run_training(config, run)
    assert run.last_checkpoint().name == "checkpoint-10"
    disarm()
    final = run_training(config, run, resume=True)
    whole, whole_final = co_run
    # Resumed from step 10 with the teacher, the student, their optimizer state and α's position: the
    # same numbers as the uninterrupted run.
    assert final["eval_teacher_ce"] == pytest.approx(whole_final["eval_teacher_ce"], rel=1e-4)
    assert final["eval_ce"] == pytest.approx(whole_final["eval_ce"], rel=1e-4)
    assert logged(run, "alpha") == pytest.approx(logged(whole, "alpha"))


@pytest.mark.slow
def test_mutual_mode_gives_the_teacher_a_kd_term(tmp_path, teacher_dir, student_dir, corpus_files):
    config = co_config(teacher_dir, student_dir, corpus_files, tmp_path, "mutual", mutual=True, mutual_weight=0.5)
    run_training(config.replace(train=config.train.__class__(**{**config.train.__dict__, "max_steps": 3})))
    first = next(m for m in RunDir(tmp_path / "mutual").read_metrics() if "teacher_kd" in m)
    # alpha is 1 at step 1: loss = CE + teacher CE + 0.5 * teacher KD
    assert first["loss"] == pytest.approx(first["ce"] + first["teacher_ce"] + 0.5 * first["teacher_kd"], rel=1e-4)


# ---------------------------------------------------------------- hidden states and attention

@pytest.mark.slow
def test_hidden_state_term_falls_and_the_projection_reloads(tmp_path, teacher_dir, student_dir, corpus_files):
    config = make_config(teacher_dir, student_dir, corpus_files, tmp_path, "hidden", "hidden_state",
                         hidden={"weight": 1.0})
    run_training(config)
    run = RunDir(tmp_path / "hidden")
    term = logged(run, "hidden")
    assert len(term) == 20 and term[-1] < 0.7 * term[0]
    projection = load_projection(run.student / "hidden_projection.safetensors")
    assert (projection.in_features, projection.out_features) == (32, 64)  # student width -> teacher width
    # The reloaded projection is the trained one: it maps the student's states closer to the teacher's
    # than a fresh projection does.
    tok = load_tokenizer(config.student)
    _, held = tokenize_datasets(config.data, tok, 32, 0)
    batch = PadCollator(tok)([held[i] for i in range(8)])
    student, teacher = (AutoModelForCausalLM.from_pretrained(p) for p in (run.student, teacher_dir))
    with torch.no_grad():
        s = student(input_ids=batch["input_ids"], output_hidden_states=True).hidden_states
        t = teacher(input_ids=batch["input_ids"], output_hidden_states=True).hidden_states
        fresh = torch.nn.Linear(32, 64, bias=False)
        pairs = [(0, 1), (1, 3)]
        trained_term = hidden_state_loss([projection(s[i + 1]) for i, _ in pairs], [t[j + 1] for _, j in pairs],
                                         batch["labels"])
        fresh_term = hidden_state_loss([fresh(s[i + 1]) for i, _ in pairs], [t[j + 1] for _, j in pairs],
                                       batch["labels"])
    assert trained_term < 0.7 * fresh_term  # measured 0.96 vs 1.84


@pytest.mark.slow
def test_hidden_state_resumes_with_its_projection_and_tied_weights(tmp_path, crash_at_step, teacher_dir, tokenizer,
                                                                   corpus_files):
    tied = tiny.save_llama(tmp_path / "tied", tokenizer, layers=2, hidden=32, seed=6, tie=True)
    finals = []
    for name, crash in (("whole", None), ("resumed", 15)):
        config = make_config(teacher_dir, tied, corpus_files, tmp_path, name, "hidden_state")
        arm, disarm = crash_at_step
        if crash:
            arm(crash)
            with pytest.raises(KeyboardInterrupt):
                run_training(config)
            disarm()
            finals.append(run_training(config, RunDir(tmp_path / name), resume=True))
        else:
            finals.append(run_training(config))
    # The projection, the tied student and their optimizer state came back from checkpoint-10.
    assert finals[1]["eval_hidden"] == pytest.approx(finals[0]["eval_hidden"], rel=1e-4)
    assert finals[1]["eval_ce"] == pytest.approx(finals[0]["eval_ce"], rel=1e-4)
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "resumed" / "student")
    assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()


def test_a_bad_layer_map_is_a_clear_error(tmp_path, teacher_dir, student_dir, corpus_files):
    from workbench.engine.preflight import preflight
    config = make_config(teacher_dir, student_dir, corpus_files, tmp_path, "bad", "hidden_state",
                         hidden={"layer_map": ["0:1", "1:7"]})
    report = preflight(config)
    assert report.problems[0][0] == "hidden.layer_map[1]" and "teacher 0..3" in report.problems[0][1]
    with pytest.raises(ConfigError) as err:
        run_training(config)
    assert err.value.field == "hidden.layer_map[1]"
    with pytest.raises(ConfigError) as err:
        make_config(teacher_dir, student_dir, corpus_files, tmp_path, "worse", "attention",
                    attention={"layer_map": ["one:two"]})
    assert err.value.field == "attention.layer_map[0]"


@pytest.fixture(scope="module")
def two_head_student(tmp_path_factory, tokenizer):
    return tiny.save_llama(tmp_path_factory.mktemp("heads") / "student", tokenizer, layers=2, hidden=32, seed=5,
                           heads=2)


@pytest.mark.slow
def test_attention_term_falls_with_other_head_counts(tmp_path, teacher_dir, two_head_student, corpus_files):
    for heads in ("map", "average"):
        config = make_config(teacher_dir, two_head_student, corpus_files, tmp_path, heads, "attention",
                             attention={"heads": heads, "weight": 10.0})
        run_training(config)
        term = logged(RunDir(tmp_path / heads), "attention")
        assert len(term) == 20 and term[-1] < 0.7 * term[0], (heads, term[0], term[-1])


def test_padding_does_not_reach_the_attention_or_hidden_terms(teacher_dir, two_head_student, corpus_files,
                                                              tokenizer):
    teacher, student = (AutoModelForCausalLM.from_pretrained(p, attn_implementation="eager")
                        for p in (teacher_dir, two_head_student))
    rows = [tokenizer("the cat sees a dog.").input_ids, tokenizer("a dog").input_ids]
    batch = PadCollator(tokenizer)([{"input_ids": r, "attention_mask": [1] * len(r), "labels": r} for r in rows])
    changed = batch["input_ids"].clone()
    changed[batch["attention_mask"] == 0] = 7  # other tokens under the padding
    values = []
    for ids in (batch["input_ids"], changed):
        with torch.no_grad():
            s = student(input_ids=ids, attention_mask=batch["attention_mask"], output_attentions=True,
                        output_hidden_states=True)
            t = teacher(input_ids=ids, attention_mask=batch["attention_mask"], output_attentions=True,
                        output_hidden_states=True)
        values.append((float(attention_loss([s.attentions[1]], [t.attentions[3]], batch["labels"])),
                       float(hidden_state_loss([s.hidden_states[2]], [t.hidden_states[2][..., :32]],
                                               batch["labels"]))))
    assert (batch["attention_mask"] == 0).any() and values[0] == pytest.approx(values[1], rel=1e-6)
    assert values[0][0] > 0


def test_the_form_maps_each_strategy_to_its_section(tmp_path, teacher_dir, student_dir, corpus_files):
    from workbench.config.gate import Gate
    from workbench.ui.app import DEFAULT_CONFIG
    from workbench.ui.form import DATA_UPLOAD, SetupForm, form_to_config
    form = SetupForm.from_config(DistillConfig.load(DEFAULT_CONFIG)).replace({
        "teacher.name_or_path": str(teacher_dir), "student.name_or_path": str(student_dir),
        "data_kind": DATA_UPLOAD, "data_upload": str(corpus_files[0]), "strategy": "hidden_state",
        "hidden.layer_map": "0:1; 1:3", "hidden.weight": 2.0, "hidden.loss": "cosine",
        "attention.layer_map": "0:1, 1:3", "attention.heads": "map",
        "co_distillation.alpha_warmup_steps": 7, "co_distillation.mutual": True})
    roots = Gate((teacher_dir.parent, corpus_files[0].parent, tmp_path))  # tmp_path: where uploads are kept
    config = form_to_config(form, roots, tmp_path).config
    assert (config.hidden.layer_map, config.hidden.weight, config.hidden.loss) == (["0:1", "1:3"], 2.0, "cosine")
    co = form_to_config(form.replace({"strategy": "co_distillation"}), roots, tmp_path).config
    assert co.co_distillation.alpha_warmup_steps == 7 and co.co_distillation.mutual
    attention = form_to_config(form.replace({"strategy": "attention"}), roots, tmp_path).config
    assert attention.attention.layer_map == ["0:1", "1:3"] and attention.attention.heads == "map"
    with pytest.raises(ConfigError) as err:
        form_to_config(form.replace({"hidden.layer_map": "0-1"}), roots, tmp_path)
    assert err.value.field == "hidden.layer_map[0]"


def test_the_ce_baseline_of_a_layer_or_co_run_is_plain_fine_tuning(tmp_path, teacher_dir, student_dir, corpus_files):
    from workbench.engine.baseline import ce_baseline_config
    from workbench.engine.strategies import strategy_class
    for strategy in ("co_distillation", "hidden_state", "attention"):
        base = ce_baseline_config(make_config(teacher_dir, student_dir, corpus_files, tmp_path, "x", strategy))
        assert (base.strategy, base.loss.alpha) == ("soft_label", 1.0)
        assert not strategy_class(base.strategy).uses_teacher(base)  # the teacher is not even loaded
