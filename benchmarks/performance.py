"""Issue 9's numbers in one command, measured in one run on this machine with the default pair:

  (a) KD step time / (teacher forward + student CE step), for the plain, chunked and cached loss
  (b) cached KD step / student CE step
  (c) extra peak memory of the loss, chunked / plain, at vocab 49k and 128k   (benchmarks/kd_loss.py)
  (d) cache bytes/token and teacher mass kept for k = 8, 32, 64            (benchmarks/teacher_cache.py)
  (e) inspector time for 256 tokens                                        (benchmarks/inspector_speed.py)

    python benchmarks/performance.py [--reps 3] [--json benchmarks/results.json] [--cache-dir DIR]

A step is forward + backward of one batch of the default config (4 x 256 tokens, bf16 autocast as the
default config trains); each time is the best of --reps after one warm-up. The CE step compared with is
the faster of the plain and the chunked one.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
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
from workbench.models.loading import tokenizer_hash  # noqa: E402
from workbench.models.students import initial_student, load_teacher_fp32, student_tokenizer  # noqa: E402


def best_time(step, reps: int) -> float:
    step()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return min(times)


def step_times(config: DistillConfig, reps: int) -> dict:
    tokenizer = student_tokenizer(config)
    teacher32 = load_teacher_fp32(config)
    student, _ = initial_student(config, teacher32)
    teacher = teacher32.to(torch.bfloat16)
    train, _ = tokenize_datasets(config.data, tokenizer, config.train.seq_len, config.train.seed)
    blocks = train.select(range(config.train.batch_size))
    folder = Path(tempfile.mkdtemp(prefix="dw-cache-"))
    build_cache(teacher, tokenizer, blocks, folder, k=32)
    cache = TeacherCache.open(folder, tokenizer_hash(tokenizer), data_hash(blocks))
    ids = torch.tensor(blocks["input_ids"])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids,
              "block": torch.arange(len(ids))}

    def strategy_step(chunk: int, alpha: float, cached: bool):
        loss = dataclasses.replace(config.loss, chunk_size=chunk, alpha=alpha)
        strategy = SoftLabelStrategy(config.replace(loss=loss), None if cached or alpha == 1 else teacher, None,
                                     cache if cached else None)

        def step():
            student.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                strategy.compute_loss(student, inputs, None)["loss"].backward()
        return step

    def teacher_forward():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            teacher(input_ids=ids)

    times = {"teacher_forward": best_time(teacher_forward, reps),
             "student_ce_step": best_time(strategy_step(0, 1.0, False), reps),
             "student_ce_step_chunked": best_time(strategy_step(128, 1.0, False), reps),
             "kd_plain": best_time(strategy_step(0, 0.5, False), reps),
             "kd_chunked": best_time(strategy_step(128, 0.5, False), reps),
             "kd_cached": best_time(strategy_step(0, 0.5, True), reps),
             "kd_cached_chunked": best_time(strategy_step(128, 0.5, True), reps)}
    # The reference CE step is the faster of plain and chunked: a KD mode must not look good only
    # because the CE step it is compared with was slow.
    ce = min(times["student_ce_step"], times["student_ce_step_chunked"])
    return {"seconds": {k: round(v, 3) for k, v in times.items()},
            "a_kd_over_teacher_plus_ce": {m: round(times[f"kd_{m}"] / (times["teacher_forward"] + ce), 3)
                                          for m in ("plain", "chunked", "cached", "cached_chunked")},
            "b_cached_over_ce": round(min(times["kd_cached"], times["kd_cached_chunked"]) / ce, 3)}


def run_json(script: str, *extra: str) -> object:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *extra, "--json", out.name], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return json.loads(Path(out.name).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    config = resolve_defaults(DistillConfig.load(ROOT / "assets" / "configs" / "default.yaml"), args.cache_dir)
    extra = ["--cache-dir", str(args.cache_dir)] if args.cache_dir else []
    result = {"threads": torch.get_num_threads(), **step_times(config, args.reps)}
    print(json.dumps(result, indent=2), flush=True)
    result["c_loss_memory"] = run_json("kd_loss.py", "--chunks", "128")
    result["d_cache"] = run_json("teacher_cache.py", *extra)
    result["e_inspector"] = run_json("inspector_speed.py", *extra)
    print(json.dumps({k: result[k] for k in ("c_loss_memory", "d_cache", "e_inspector")}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
