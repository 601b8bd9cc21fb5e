"""Issue 9's numbers in one command, measured in one run on this machine with the default pair:

  (a) KD step time / (teacher forward as training runs it + student CE step), plain and chunked loss
  (b) cached KD step / student CE step (rows of k = 32: the top 24 and 8 drawn from the tail, as kept rows)
  (c) extra peak memory of the loss, chunked / plain, at vocab 49k and 128k   (benchmarks/kd_loss.py)
  (d) cache bytes/token and teacher mass kept for k = 8, 32, 64            (benchmarks/teacher_cache.py)
  (e) inspector time for 256 tokens                                        (benchmarks/inspector_speed.py)

    python benchmarks/performance.py [--reps 5] [--bf16 auto|on|off] [--chunk N] [--json out.json] [--cache-dir DIR]

A step is forward + backward of one batch of the default config (4 x 256 tokens). The steps are timed in
--reps rounds after one warm-up each, every step once per round in a shuffled order, and each ratio is taken
within a round: a machine that speeds up or slows down between rounds moves both sides of a ratio alike. Times
and ratios are reported as min / median / max over the rounds. (a) is given against the sum of the separately
timed teacher forward and CE step, and for the chunked loss also against the two run back to back as one step
(chunked_back_to_back), which meets the memory and caches a KD step meets. The teacher's
forward is timed as training runs it: full logits before the plain loss, last hidden states only (no LM
head) before the chunked one, which makes the teacher's logits chunk by chunk inside the loss. The CE step
compared with is the faster of the plain and the chunked one. --bf16 auto: bf16 autocast (as the default
config trains) where this CPU multiplies bf16 in hardware, float32 where torch would emulate it (many
times slower, and the pre-flight check says to turn it off there).

(a) has a floor set by arithmetic: the live KD step does the teacher's LM-head product that neither the
teacher's hidden-state forward nor the CE step does. `flop_floor` is the ratio of multiply-adds (LM heads,
decoder layers' weights; attention scores left out, small at 256 tokens) a step would have at equal speed.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import subprocess
import sys
import tempfile
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402

from workbench.config.schema import DistillConfig  # noqa: E402
from workbench.data.defaults import resolve_defaults  # noqa: E402
from workbench.data.loading import tokenize_datasets  # noqa: E402
from workbench.engine.strategies.soft import SoftLabelStrategy  # noqa: E402
from workbench.engine.teacher_cache import TeacherCache, build_cache, data_hash  # noqa: E402
from workbench.engine.trainer import native_cpu_bf16  # noqa: E402
from workbench.models.loading import tokenizer_hash  # noqa: E402
from workbench.models.students import initial_student, load_teacher_fp32, student_tokenizer  # noqa: E402


def rounds(steps: dict, reps: int) -> dict[str, list[float]]:
    """Seconds of each step in each of `reps` rounds (every step once per round, in a shuffled order so that no
    step always follows the one that leaves the caches cold or the memory fragmented, after one warm-up each)."""
    for step in steps.values():
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    order = random.Random(0)
    for _ in range(reps):
        for name in order.sample(list(steps), len(steps)):
            step = steps[name]
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return times


def min_median_max(values: list[float]) -> list[float]:
    return [round(min(values), 3), round(statistics.median(values), 3), round(max(values), 3)]


def flop_floor(teacher, student, tokens: int) -> float:
    """Live chunked KD step / (teacher hidden-state forward + CE step) in multiply-adds: the teacher's body
    forward (1x its weights), its head forward, the student's body forward and backward (3x) and its head's
    three products (logits, the hidden states' and the head's gradients)."""
    def body(model) -> int:
        head = model.get_output_embeddings().weight
        inputs = model.get_input_embeddings().weight
        return sum(p.numel() for p in model.parameters() if p is not head and p is not inputs)
    head = student.get_output_embeddings().weight.numel()
    teacher_body, ce = body(teacher) * tokens, (3 * body(student) + 3 * head) * tokens
    return (teacher_body + teacher.get_output_embeddings().weight.numel() * tokens + ce) / (teacher_body + ce)


def step_times(config: DistillConfig, reps: int, bf16: bool, chunk: int) -> dict:
    tokenizer = student_tokenizer(config)
    teacher32 = load_teacher_fp32(config)
    student, _ = initial_student(config, teacher32)
    teacher = teacher32.to(torch.bfloat16) if bf16 else teacher32
    train, _ = tokenize_datasets(config.data, tokenizer, config.train.seq_len, config.train.seed)
    blocks = train.select(range(config.train.batch_size))
    folder = Path(tempfile.mkdtemp(prefix="dw-cache-"))
    build_cache(teacher, tokenizer, blocks, folder, k=32, tail_samples=8)  # the rows loss.reuse_teacher keeps
    cache = TeacherCache.open(folder, tokenizer_hash(tokenizer), data_hash(blocks))
    ids = torch.tensor(blocks["input_ids"])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids,
              "block": torch.arange(len(ids))}

    def strategy(chunk: int, alpha: float, cached: bool) -> SoftLabelStrategy:
        loss = dataclasses.replace(config.loss, chunk_size=chunk, alpha=alpha)
        return SoftLabelStrategy(config.replace(loss=loss), None if cached or alpha == 1 else teacher, None,
                                 cache if cached else None)

    def strategy_step(chunk: int, alpha: float, cached: bool):
        run = strategy(chunk, alpha, cached)

        def step():
            student.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                run.compute_loss(student, inputs, None)["loss"].backward()
        return step

    def teacher_forward(fused: bool):
        run = strategy(0, config.loss.alpha, False)

        def forward():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                run.teacher_signal(inputs, fused)
        return forward

    def back_to_back(*steps):
        def run():
            for step in steps:
                step()
        return run

    times = rounds({"teacher_forward": teacher_forward(False),
                    "teacher_forward_hidden": teacher_forward(True),
                    # the reference as one step, in the memory and caches the KD step meets
                    "teacher_hidden_then_ce_chunked": back_to_back(teacher_forward(True),
                                                                   strategy_step(chunk, 1.0, False)),
                    "student_ce_step": strategy_step(0, 1.0, False),
                    "student_ce_step_chunked": strategy_step(chunk, 1.0, False),
                    "kd_plain": strategy_step(0, 0.5, False),
                    "kd_chunked": strategy_step(chunk, 0.5, False),
                    "kd_cached": strategy_step(0, 0.5, True),
                    "kd_cached_chunked": strategy_step(chunk, 0.5, True)}, reps)
    # The reference CE step is the faster of plain and chunked in each round: a KD mode must not look good
    # only because the CE step it is compared with was slow.
    ce = [min(pair) for pair in zip(times["student_ce_step"], times["student_ce_step_chunked"])]
    # Each KD mode against the teacher forward it runs: full logits for the plain loss, hidden states for the chunked.
    teacher_for = {"plain": times["teacher_forward"], "chunked": times["teacher_forward_hidden"]}
    per_round = lambda kd, reference: min_median_max([k / r for k, r in zip(kd, reference)])  # noqa: E731
    return {"bf16": bf16, "reps": reps, "chunk": chunk,
            "seconds_min_median_max": {k: min_median_max(v) for k, v in times.items()},
            "a_kd_over_teacher_plus_ce": {
                **{m: per_round(times[f"kd_{m}"], [t + c for t, c in zip(teacher_for[m], ce)])
                   for m in ("plain", "chunked")},
                "chunked_back_to_back": per_round(times["kd_chunked"], times["teacher_hidden_then_ce_chunked"])},
            "a_flop_floor": round(flop_floor(teacher, student, ids.numel()), 3),
            "b_cached_over_ce": {m: per_round(times[k], ce) for m, k in (("plain", "kd_cached"),
                                                                       ("chunked", "kd_cached_chunked"))}}


def run_json(script: str, *extra: str) -> object:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *extra, "--json", out.name], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return json.loads(Path(out.name).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--bf16", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--chunk", type=int, help="positions per chunk of the fused loss (default: the config's)")
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    config = resolve_defaults(DistillConfig.load(ROOT / "assets" / "configs" / "default.yaml"), args.cache_dir)
    extra = ["--cache-dir", str(args.cache_dir)] if args.cache_dir else []
    bf16 = args.bf16 == "on" or (args.bf16 == "auto" and config.train.bf16 in ("on", "native") and native_cpu_bf16())
    chunk = args.chunk or config.loss.chunk_size
    steps = step_times(config, args.reps, bf16, chunk)
    # the machine's load while the steps ran (1, 5, 15 minute averages): a shared machine's times move with it
    result = {"threads": torch.get_num_threads(), "load_average": os.getloadavg(), **steps}
    print(json.dumps(result, indent=2), flush=True)
    result["c_loss_memory"] = run_json("kd_loss.py", "--chunks", str(chunk))
    result["d_cache"] = run_json("teacher_cache.py", *extra)
    result["e_inspector"] = run_json("inspector_speed.py", *extra)
    print(json.dumps({k: result[k] for k in ("c_loss_memory", "d_cache", "e_inspector")}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
