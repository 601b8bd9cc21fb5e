"""Issue 9's numbers in one command, measured in one run on this machine with the default pair:

  (a) KD step time / (teacher forward as training runs it + student CE step), plain and chunked loss
  (b) cached KD step / student CE step (rows of k = 32: the top 24 and 8 drawn from the tail, as kept rows)
  (c) extra peak memory of the loss, chunked / plain, at vocab 49k and 128k   (benchmarks/kd_loss.py)
  (d) cache bytes/token and teacher mass kept for k = 8, 32, 64            (benchmarks/teacher_cache.py)
  (e) inspector time for 256 tokens                                        (benchmarks/inspector_speed.py)

    python benchmarks/performance.py [--reps 5] [--bf16 auto|on|off] [--chunk N] [--json out.json] [--cache-dir DIR]

A step is forward + backward of one batch of the default config (4 x 256 tokens); each time is reported as
min / median / max of --reps runs after one warm-up, and the ratios are taken between medians. The teacher's
forward is timed as training runs it: full logits before the plain loss, last hidden states only (no LM
head) before the chunked one, which makes the teacher's logits chunk by chunk inside the loss. The CE step
compared with is the faster of the plain and the chunked one. --bf16 auto: bf16 autocast (as the default
config trains) where this CPU multiplies bf16 in hardware, float32 where torch would emulate it (many
times slower, and the pre-flight check says to turn it off there).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
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


def spread(step, reps: int) -> list[float]:
    """Seconds of `reps` runs of step after one warm-up, sorted."""
    step()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return sorted(times)


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

    times = {"teacher_forward": spread(teacher_forward(False), reps),
             "teacher_forward_hidden": spread(teacher_forward(True), reps),
             "student_ce_step": spread(strategy_step(0, 1.0, False), reps),
             "student_ce_step_chunked": spread(strategy_step(chunk, 1.0, False), reps),
             "kd_plain": spread(strategy_step(0, 0.5, False), reps),
             "kd_chunked": spread(strategy_step(chunk, 0.5, False), reps),
             "kd_cached": spread(strategy_step(0, 0.5, True), reps),
             "kd_cached_chunked": spread(strategy_step(chunk, 0.5, True), reps)}
    median = {k: statistics.median(v) for k, v in times.items()}
    # The reference CE step is the faster of plain and chunked: a KD mode must not look good only
    # because the CE step it is compared with was slow.
    ce = min(median["student_ce_step"], median["student_ce_step_chunked"])
    # Each KD mode against the teacher forward it runs: full logits for the plain loss, hidden states for the chunked.
    teacher_for = {"plain": median["teacher_forward"], "chunked": median["teacher_forward_hidden"]}
    return {"bf16": bf16, "reps": reps, "chunk": chunk,
            "seconds_min_median_max": {k: [round(v[0], 3), round(median[k], 3), round(v[-1], 3)]
                                       for k, v in times.items()},
            "a_kd_over_teacher_plus_ce": {m: round(median[f"kd_{m}"] / (teacher_for[m] + ce), 3)
                                          for m in ("plain", "chunked")},
            "b_cached_over_ce": {m: round(median[k] / ce, 3) for m, k in (("plain", "kd_cached"),
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
    bf16 = args.bf16 == "on" or (args.bf16 == "auto" and config.train.bf16 == "on" and native_cpu_bf16())
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
