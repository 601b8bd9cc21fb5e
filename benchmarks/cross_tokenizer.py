"""Cross-tokenizer distillation against plain fine-tuning, at the same steps: ULD, hybrid and CE-only students
of one teacher with another tokenizer, and (for speed) the same student distilled by plain soft-label KD from a
teacher that shares its tokenizer.
Scored by the run's own evaluation on the held-out text: the student's perplexity (its own tokens), nats per
character (teacher and student, comparable across tokenizers), the aligned share and the aligned top-1
agreement (the two most likely next tokens have the same text). One run each, same seed: noisy.

    python benchmarks/cross_tokenizer.py --teacher T --student S --data TRAIN [--validation VAL]
        [--steps 60] [--runs-dir runs/cross_tokenizer] [--set train.seq_len=128 ...] [--same-teacher T2]
    python benchmarks/cross_tokenizer.py --tiny     # the tests' tiny pair (toy grammar), built in a temp folder

--same-teacher: a teacher sharing the student's tokenizer, for the speed reference (seconds per step of
cross-tokenizer KD against same-tokenizer KD of the same student on the same data).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from workbench.config.fields import apply_overrides  # noqa: E402
from workbench.config.schema import DistillConfig  # noqa: E402
from workbench.data.defaults import resolve_defaults  # noqa: E402
from workbench.engine.runner import run_training  # noqa: E402

# CE-only keeps cross_tokenizer on so that its evaluation compares it with the teacher the same way.
SETTINGS = {"ce_only": ["loss.alpha=1", "loss.cross_tokenizer=uld"],
            "uld": ["loss.cross_tokenizer=uld"],
            "hybrid": ["loss.cross_tokenizer=hybrid"]}
SHOWN = ("student_perplexity", "student_nats_per_char", "teacher_nats_per_char", "aligned_share",
         "aligned_top1_agreement", "aligned_uld")


def _tiny_pair(folder: Path) -> tuple[str, str, str, str, str]:
    """(teacher, student, a teacher with the student's tokenizer, train file, validation file) from tests/tiny.py."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import tiny
    byte_level = tiny.build_tokenizer(folder / "byte-level")
    sentencepiece = tiny.build_sentencepiece_tokenizer(folder / "sentencepiece")
    teacher = tiny.pretrain(tiny.save_llama(folder / "teacher", byte_level, layers=4, hidden=64, seed=0), byte_level)
    student = tiny.save_llama(folder / "student", sentencepiece, layers=2, hidden=32, seed=1)
    same = tiny.pretrain(tiny.save_llama(folder / "same-teacher", sentencepiece, layers=4, hidden=64, seed=0),
                         sentencepiece)
    train, val = tiny.write_corpus_files(folder / "corpus", n_train=2000, n_val=200)
    return str(teacher), str(student), str(same), str(train), str(val)


def _run(base: dict, overrides: list[str], runs: Path, name: str) -> dict:
    data = apply_overrides(copy.deepcopy(base), [*overrides, f"output.runs_dir={runs}", f"output.run_name={name}"])
    config = resolve_defaults(DistillConfig.from_dict(data))
    start = time.perf_counter()
    run_training(config)
    wall = time.perf_counter() - start
    lines = [json.loads(line) for line in (runs / name / "metrics.jsonl").read_text().splitlines()]
    train_s = [line["train_runtime"] for line in lines if "train_runtime" in line]
    report = json.loads(sorted((runs / name / "evaluations").glob("*.json"))[-1].read_text())
    seconds = train_s[-1] if train_s else wall
    return {"setting": name, "steps": config.train.max_steps, "s_per_step": seconds / config.train.max_steps,
            **{key: report["metrics"].get(key) for key in SHOWN}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher")
    parser.add_argument("--student")
    parser.add_argument("--same-teacher")
    parser.add_argument("--data")
    parser.add_argument("--validation")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/cross_tokenizer"))
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    args = parser.parse_args()
    if args.tiny:
        args.teacher, args.student, args.same_teacher, args.data, args.validation = _tiny_pair(Path(tempfile.mkdtemp()))
        args.set = ["train.batch_size=8", "train.seq_len=32", "train.lr=1e-2", "train.logging_steps=10", *args.set]
    if not (args.teacher and args.student and args.data):
        parser.error("give --teacher, --student and --data, or --tiny")
    base = apply_overrides(DistillConfig().to_dict(), [
        f"teacher.name_or_path={args.teacher}", f"student.name_or_path={args.student}", f"data.source={args.data}",
        *([f"data.validation_source={args.validation}"] if args.validation else []),
        f"train.max_steps={args.steps}", "train.eval_steps=0", "evaluation.speed=false", "train.bf16=off",
        *args.set])
    rows = [_run(base, overrides, args.runs_dir, name) for name, overrides in SETTINGS.items()]
    if args.same_teacher:
        same = apply_overrides(copy.deepcopy(base), [f"teacher.name_or_path={args.same_teacher}"])
        rows.append(_run(same, [], args.runs_dir, "same_tokenizer_kd"))
    print(json.dumps(rows, indent=1))
    print("\n| setting | steps | s/step | " + " | ".join(SHOWN) + " |")
    print("|" + " --- |" * (3 + len(SHOWN)))
    for row in rows:
        values = [f"{row[key]:.3f}" if isinstance(row[key], float) else str(row[key]) for key in SHOWN]
        print(f"| {row['setting']} | {row['steps']} | {row['s_per_step']:.3f} | " + " | ".join(values) + " |")


if __name__ == "__main__":
    main()
