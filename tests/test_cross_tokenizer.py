"""Cross-tokenizer distillation: the ULD and hybrid distances, the alignment of two tokenizers over one text,
and soft-label runs whose teacher and student come from different tokenizer families."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

import tiny
from workbench.config.fields import ConfigError
from workbench.config.schema import DistillConfig
from workbench.engine.preflight import preflight
from workbench.losses.cross_tokenizer import hybrid_distance, uld_distance
from workbench.losses.divergences import total_variation
from workbench.losses.signal import AlignedLogits
from workbench.models.token_bridge import TokenBridge
from workbench.store.ingest import run_row
from workbench.store.rundir import RunDir

TEXT = "the cat sees a green book by the river. my sister paints ünïcode ☃ after dinner."


def _sorted_l1_by_hand(p: list[float], q: list[float]) -> float:
    width = max(len(p), len(q))
    p = sorted(p, reverse=True) + [0.0] * (width - len(p))
    q = sorted(q, reverse=True) + [0.0] * (width - len(q))
    return sum(abs(a - b) for a, b in zip(p, q))


def test_uld_is_zero_for_one_distribution_and_blind_to_which_token_holds_it():
    torch.manual_seed(0)
    teacher = torch.randn(5, 11)
    assert torch.allclose(uld_distance(teacher, teacher), torch.zeros(5), atol=1e-6)
    permuted = teacher[:, torch.randperm(11)]
    assert torch.allclose(uld_distance(permuted, teacher), torch.zeros(5), atol=1e-6)
    student = torch.randn(5, 7)
    assert torch.allclose(uld_distance(student, teacher[:, torch.randperm(11)]), uld_distance(student, teacher), atol=1e-6)


def test_uld_follows_its_definition_across_vocabulary_sizes_and_temperatures():
    torch.manual_seed(1)
    student, teacher = torch.randn(3, 6), torch.randn(3, 9)
    for temperature in (1.0, 2.5):
        got = uld_distance(student, teacher, temperature)
        for row in range(3):
            p = F.softmax(student[row] / temperature, -1).tolist()
            q = F.softmax(teacher[row] / temperature, -1).tolist()
            assert got[row].item() == pytest.approx(_sorted_l1_by_hand(p, q), abs=1e-6)
    # Tokens with no probability (a larger vocabulary's unused rows) change nothing: they are the padding.
    padded = torch.cat([teacher, torch.full((3, 4), float("-inf"))], -1)
    assert torch.allclose(uld_distance(student, padded), uld_distance(student, teacher), atol=1e-6)


def test_hybrid_is_the_l1_distance_on_one_vocabulary_and_uld_with_nothing_shared():
    torch.manual_seed(2)
    student, teacher = torch.randn(4, 10), torch.randn(4, 10)
    every = torch.arange(10)
    l1 = (F.softmax(student, -1) - F.softmax(teacher, -1)).abs().sum(-1)
    assert torch.allclose(hybrid_distance(student, teacher, every, every), l1, atol=1e-6)
    assert torch.allclose(l1, 2 * total_variation(student, teacher), atol=1e-6)
    # Sorting is the best matching of the two vectors' entries: ULD never exceeds the direct comparison.
    assert (uld_distance(student, teacher) <= l1 + 1e-6).all()
    none = torch.zeros(0, dtype=torch.long)
    assert torch.allclose(hybrid_distance(student, teacher, none, none), uld_distance(student, teacher), atol=1e-6)
    # Some shared: those entries compared directly (by id pair), the rest sorted.
    s_ids, t_ids = torch.tensor([0, 3]), torch.tensor([5, 1])
    p, q = F.softmax(student, -1), F.softmax(teacher, -1)
    for row in range(4):
        direct = abs(p[row, 0] - q[row, 5]) + abs(p[row, 3] - q[row, 1])
        rest = _sorted_l1_by_hand([p[row, i].item() for i in range(10) if i not in (0, 3)],
                                  [q[row, i].item() for i in range(10) if i not in (5, 1)])
        assert hybrid_distance(student, teacher, s_ids, t_ids)[row].item() == pytest.approx(float(direct) + rest, abs=1e-6)


def test_distances_give_the_student_a_finite_gradient():
    student = torch.randn(3, 8, requires_grad=True)
    teacher = torch.randn(3, 12)
    (uld_distance(student, teacher).sum() + hybrid_distance(student, teacher, torch.tensor([1]), torch.tensor([4])).sum()
     ).backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def other_tokenizer(tmp_path_factory):
    """Another tokenizer family over the toy grammar (SentencePiece-style, its own ids and special tokens)."""
    return tiny.build_sentencepiece_tokenizer(tmp_path_factory.mktemp("sentencepiece"))


def _align(bridge: TokenBridge, ids: list[int]):
    return bridge.align(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))


@pytest.mark.parametrize("direction", ["byte_level_student", "sentencepiece_student"])
def test_aligned_positions_have_read_exactly_the_same_text(tokenizer, other_tokenizer, direction):
    student, teacher = (tokenizer, other_tokenizer) if direction == "byte_level_student" else (other_tokenizer, tokenizer)
    ids = student(TEXT, add_special_tokens=False).input_ids
    found = _align(TokenBridge(student, teacher), ids)
    teacher_ids = found.teacher_ids[0].tolist()
    assert teacher.decode(teacher_ids) == student.decode(ids) == TEXT  # the teacher reads the same text
    aligned = found.aligned[0].tolist()
    assert 0.5 < sum(aligned) / len(ids) < 1  # most positions pair up, some cannot
    for i, ok in enumerate(aligned):
        if ok:
            j = found.partner[0, i].item()
            assert student.decode(ids[:i + 1]) == teacher.decode(teacher_ids[:j + 1]), i
    assert found.characters.item() == len(TEXT)


def test_one_tokenizer_pairs_every_position_with_itself(tokenizer):
    ids = tokenizer(TEXT, add_special_tokens=False).input_ids
    found = _align(TokenBridge(tokenizer, tokenizer), ids)
    assert found.teacher_ids[0].tolist() == ids
    # A character split over byte tokens has no partner before its last byte, on either side.
    whole = [tokenizer.decode(ids[:i + 1]).endswith("\ufffd") is False for i in range(len(ids))]
    assert found.aligned[0].tolist() == whole
    assert found.partner[0][found.aligned[0]].tolist() == [i for i, ok in enumerate(whole) if ok]


def test_an_end_of_text_token_becomes_the_teachers_and_the_text_after_it_stays_aligned(tokenizer, other_tokenizer):
    ids = (tokenizer("the cat sees a dog.", add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
           + tokenizer("my sister reads", add_special_tokens=False).input_ids)
    found = _align(TokenBridge(tokenizer, other_tokenizer), ids)
    eos = ids.index(tokenizer.eos_token_id)
    assert found.aligned[0, eos] and found.teacher_ids[0, found.partner[0, eos]] == other_tokenizer.eos_token_id
    assert found.aligned[0, -1]  # "reads" ends where the teacher's last token ends
    assert other_tokenizer.decode(found.teacher_ids[0, found.partner[0, eos] + 1:]) == "my sister reads"


def test_positions_past_the_teachers_context_have_no_partner(tokenizer, other_tokenizer):
    ids = tokenizer(TEXT, add_special_tokens=False).input_ids
    full = _align(TokenBridge(tokenizer, other_tokenizer), ids)
    short = _align(TokenBridge(tokenizer, other_tokenizer, teacher_context=10), ids)
    assert short.teacher_ids.shape[1] == 10
    assert (short.partner[0][short.aligned[0]] < 10).all()
    assert short.aligned.sum() < full.aligned.sum()


def test_shared_tokens_are_pairs_with_one_text(tokenizer, other_tokenizer):
    bridge = TokenBridge(tokenizer, other_tokenizer)
    student_ids, teacher_ids = bridge.shared_ids()
    student_texts, teacher_texts = bridge.token_texts()
    assert 0 < len(student_ids) < len(tokenizer)
    for s, t in zip(student_ids.tolist(), teacher_ids.tolist()):
        assert student_texts[s] == teacher_texts[t] is not None
    assert len(set(teacher_ids.tolist())) == len(teacher_ids)
    same_s, same_t = TokenBridge(tokenizer, tokenizer).shared_ids()
    assert torch.equal(same_s, same_t)


def test_the_kd_term_counts_unaligned_targets_but_adds_nothing_for_them():
    torch.manual_seed(3)
    student, teacher = torch.randn(1, 4, 6), torch.randn(1, 4, 6)
    labels = torch.tensor([[1, 2, -100, 3]])
    aligned = torch.tensor([[True, False, True, True]])
    every = torch.arange(6)
    signal = AlignedLogits(teacher[aligned], aligned, "hybrid", 6, every, every)  # rows kept for aligned positions
    spec = DistillConfig().loss
    l1 = (F.softmax(student, -1) - F.softmax(teacher, -1)).abs().sum(-1)[0]
    # Targets at 0, 1 and 3; position 1 has no partner, position 2 no target: (l1[0] + l1[3]) over 3 targets.
    assert signal.kd(student, labels, spec).item() == pytest.approx(float(l1[0] + l1[3]) / 3, abs=1e-6)
    assert signal.kd(student, labels, spec, num_items_in_batch=6).item() == pytest.approx(float(l1[0] + l1[3]) / 6, abs=1e-6)
    assert signal.share(labels).item() == pytest.approx(2 / 3)


@pytest.fixture(scope="module")
def other_student(tmp_path_factory, other_tokenizer):
    return tiny.save_llama(tmp_path_factory.mktemp("other-student"), other_tokenizer, layers=2, hidden=32, seed=1)


def _config(teacher_dir, student_dir, corpus_files, runs, **loss) -> DistillConfig:
    return DistillConfig.from_dict({
        "teacher": {"name_or_path": str(teacher_dir)}, "student": {"name_or_path": str(student_dir)},
        "data": {"source": str(corpus_files[0]), "validation_source": str(corpus_files[1])},
        "loss": {"alpha": 0.5, **loss}, "evaluation": {"prompts": ["the cat"], "max_new_tokens": 4, "speed": False},
        "train": {"max_steps": 30, "batch_size": 8, "seq_len": 32, "lr": 1e-2, "logging_steps": 5, "eval_steps": 15},
        "output": {"runs_dir": str(runs), "run_name": loss.get("cross_tokenizer", "run")}})


@pytest.mark.parametrize("mode", ["uld", "hybrid"])
def test_a_student_of_another_tokenizer_family_moves_toward_the_teacher(tmp_path, teacher_dir, other_student,
                                                                         corpus_files, mode):
    from workbench.engine.runner import run_training
    config = _config(teacher_dir, other_student, corpus_files, tmp_path, cross_tokenizer=mode)
    run_training(config.validate())
    lines = [json.loads(line) for line in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
    held = [line for line in lines if "eval_kd" in line]
    assert held[-1]["eval_kd"] < 0.8 * held[0]["eval_kd"]  # the aligned distance fell
    shares = [line["aligned_share"] for line in lines if "aligned_share" in line]
    assert shares and all(0.5 < share < 1 for share in shares)
    report = json.loads(sorted((tmp_path / mode / "evaluations").glob("*.json"))[-1].read_text())
    metrics = report["metrics"]
    assert 0 < metrics["aligned_share"] < 1 and 0 <= metrics["aligned_top1_agreement"] <= 1
    assert metrics["teacher_nats_per_char"] < metrics["student_nats_per_char"]  # a trained teacher, a 30-step student
    assert "top1_agreement" not in metrics and "Across tokenizers" in report["card"]
    # The store and the model card name the distance trained with, not the unused loss.divergence.
    assert run_row(RunDir(tmp_path / mode))["divergence"] == mode
    assert f"{mode} (across tokenizers)" in (tmp_path / mode / "student" / "README.md").read_text()


def test_cross_tokenizer_kd_is_refused_where_it_cannot_work(teacher_dir, other_student, corpus_files, tmp_path):
    config = _config(teacher_dir, other_student, corpus_files, tmp_path, cross_tokenizer="uld")
    for change in ({"strategy": "co_distillation"}, {"loss": {"cross_tokenizer": "uld", "teacher_cache": str(tmp_path)}}):
        with pytest.raises(ConfigError) as err:
            DistillConfig.from_dict({**config.to_dict(), **change}).validate()
        assert [name for name, _ in err.value.problems] == ["loss.cross_tokenizer"]


def test_pre_flight_says_what_cross_tokenizer_kd_will_compare(teacher_dir, other_student, corpus_files, tmp_path):
    refused = preflight(_config(teacher_dir, other_student, corpus_files, tmp_path))
    assert [name for name, _ in refused.problems] == ["student.name_or_path"]
    assert "loss.cross_tokenizer" in refused.problems[0][1]
    ready = preflight(_config(teacher_dir, other_student, corpus_files, tmp_path, cross_tokenizer="hybrid"))
    assert ready.ok, ready.problems
    note = next(note for note in ready.notes if note.startswith("cross-tokenizer KD (hybrid)"))
    assert "of the student's have a teacher partner" in note and "exist in both vocabularies" in note


def test_picking_the_two_family_pair_in_set_up_turns_cross_tokenizer_kd_on():
    from workbench.ui.setup_tab import DEFAULT_PAIR, GEMMA_PAIR, pick_pair
    assert pick_pair(GEMMA_PAIR) == ("defaults:gemma-3-270m", "defaults:student", "hybrid")
    assert pick_pair(DEFAULT_PAIR) == ("defaults:teacher", "defaults:student", "off")
    import gradio as gr
    assert pick_pair("not a pair") == (gr.skip(),) * 3  # nothing changes


@pytest.mark.parametrize("mode", ["uld", "hybrid"])
def test_pure_kd_on_a_batch_with_no_aligned_position_is_a_zero_step_not_a_crash(mode):
    from workbench.losses.distill import distill_loss
    spec = dataclasses.replace(DistillConfig().loss, alpha=0.0, cross_tokenizer=mode)
    student = torch.randn(2, 5, 7, requires_grad=True)
    signal = AlignedLogits(torch.randn(0, 9), torch.zeros(2, 5, dtype=torch.bool), mode, 7,
                           torch.tensor([0, 1]), torch.tensor([3, 4]))
    terms = distill_loss(student, signal, torch.randint(0, 7, (2, 5)), spec, num_items_in_batch=10)
    terms["loss"].backward()
    assert terms["loss"].item() == 0 and torch.equal(student.grad, torch.zeros_like(student))


def test_a_teacher_that_starts_texts_with_its_begin_token_reads_exactly_one(tokenizer, other_tokenizer, tmp_path):
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast
    backend = Tokenizer.from_str(other_tokenizer.backend_tokenizer.to_str())  # a copy: the fixture is shared
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    teacher = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                      bos_token="<bos>", eos_token="<eos>")
    assert teacher("the cat").input_ids[0] == teacher.bos_token_id  # it adds its own
    plain_ids = tokenizer("the cat sees a dog.", add_special_tokens=False).input_ids
    for ids in (plain_ids, [tokenizer.bos_token_id, *plain_ids]):
        found = _align(TokenBridge(tokenizer, teacher), ids)
        teacher_ids = found.teacher_ids[0].tolist()
        assert teacher_ids.count(teacher.bos_token_id) == 1 and teacher_ids[0] == teacher.bos_token_id


def test_the_teachers_rows_are_its_logits_at_each_partner(teacher_dir, other_student, tokenizer, other_tokenizer):
    from transformers import AutoModelForCausalLM
    from workbench.engine.strategies.soft import SoftLabelStrategy
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    config = DistillConfig.from_dict({"teacher": {"name_or_path": str(teacher_dir)},
                                      "student": {"name_or_path": str(other_student)},
                                      "data": {"source": "unused.txt"}, "loss": {"cross_tokenizer": "uld"}})
    bridge = TokenBridge(other_tokenizer, tokenizer)
    strategy = SoftLabelStrategy(config, teacher, None, None, bridge)
    rows = [other_tokenizer(text, add_special_tokens=False).input_ids for text in (TEXT, "a dog reads.")]
    ids = torch.full((2, len(rows[0])), other_tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), 1
    signal = strategy._live_signal({"input_ids": ids, "attention_mask": mask}, fused=False)
    found = bridge.align(ids, mask)
    with torch.no_grad():
        full = teacher(input_ids=found.teacher_ids, attention_mask=found.teacher_mask).logits
    expected = [full[b, found.partner[b, i]] for b, i in zip(*found.aligned[:, :-1].nonzero(as_tuple=True))]
    assert torch.allclose(signal.logits, torch.stack(expected), atol=1e-4)  # the head on hidden states = the logits
    assert torch.equal(signal.aligned, found.aligned[:, :-1]) and not signal.aligned[1, len(rows[1]):].any()


def test_per_character_numbers_count_the_same_characters_for_both_models():
    from workbench.eval.aligned import _scored
    # Student "the| cat|." ends 3, 7, 8; teacher "t|he| c|at|." ends 1, 3, 5, 7, 8. Packed text: the student
    # scores " cat." (tokens 1 and 2: 5 characters); the teacher's tokens wholly inside it are " c", "at", ".".
    assert _scored([3, 7, 8], [1, 3, 5, 7, 8], [True, True]) == (5, [False, True, True, True])
    # A prompt and its completion ".": only that character is scored, for both.
    assert _scored([3, 7, 8], [1, 3, 5, 7, 8], [False, True]) == (1, [False, False, False, True])
    # A character split over two teacher byte tokens counts with the one that completes it.
    assert _scored([2, 4], [2, None, 4], [True]) == (2, [True, True])
