"""Distill + quantise: a run's final student exported as int8 (workbench/models/quantize.py), measured
against the fp32 student on the run's own held-out blocks: perplexity, size on disk and forward speed.
Both models run on the CPU (dynamically quantised layers have no GPU kernels), in one process, the speed
runs interleaved so that load from other processes falls on both alike."""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from workbench.config.schema import DistillConfig
from workbench.data.loading import PadCollator, heldout_dataset
from workbench.eval.metrics import heldout_metrics
from workbench.eval.speed import forward_tokens_per_s, weights_bytes
from workbench.models.loading import logit_size
from workbench.models.quantize import INT8_WEIGHTS, quantize_int8, save_int8
from workbench.models.students import StudentPoint, load_student_at, student_points, student_tokenizer
from workbench.store.modelcard import write_int8_card
from workbench.store.rundir import CONFIG, RunDir, write_json_atomic

MAX_BLOCKS = 16          # held-out blocks scored: enough for a perplexity to ~1%, quick on a CPU
SPEED_BLOCKS = 4         # the batch timed: the first held-out blocks
SPEED_REPEATS = 5
REPORT = "quantization.json"
INT8_SUBDIR = "student-int8"
METHOD = ("torch.ao.quantization.quantize_dynamic: nn.Linear -> qint8 per output row except the MLP down_proj "
          "(fp32), input embedding -> quint8 per row (weight-only), a tied head rebuilt from the int8 embedding")
Progress = Callable[[float, str], None]


class NoFinalStudent(ValueError):
    """The run has not saved a final student (RUN/student), so there is nothing to export."""


def final_student(run: RunDir) -> tuple[DistillConfig, StudentPoint]:
    """The run's config and its final student; NoFinalStudent when training has not saved one."""
    config = DistillConfig.load(run.file(CONFIG))
    final = student_points(run, config)[-1]
    if final.label != "final":
        raise NoFinalStudent(f"run {run.path.name} ({run.path}) has no final student in {run.student}: "
                             "train it to the end (or resume it) before exporting")
    return config, final


def no_progress(fraction: float, desc: str) -> None:
    pass


def export_int8(run: RunDir, out: Path | None = None, progress: Progress = no_progress) -> dict:
    """Write the int8 export of `run`'s final student into `out` (default RUN/student-int8) with its
    quantization.json and model card; return the report. `progress(fraction, what)` hears each stage."""
    config, final = final_student(run)
    out = Path(out) if out is not None else run.path / INT8_SUBDIR
    progress(0.0, "loading the final student")
    tokenizer = student_tokenizer(config)
    fp32 = load_student_at(config, final).cpu()
    progress(0.1, "quantising to int8")
    int8 = quantize_int8(fp32)
    weights = save_int8(int8, tokenizer, out)
    progress(0.2, "measuring perplexity and speed against full precision on held-out text")
    report = {"run_id": run.path.name, "created": time.time(), "device": "cpu", "threads": torch.get_num_threads(),
              "method": METHOD, "fp32_bytes": weights_bytes(final.path), "int8_bytes": weights.stat().st_size,
              **compare(fp32, int8, config, tokenizer)}
    report["size_ratio"] = report["fp32_bytes"] / report["int8_bytes"] if report["fp32_bytes"] else None
    report["speedup"] = report["int8_forward_tokens_per_s"] / report["fp32_forward_tokens_per_s"]
    report["line"] = summary_line(report)
    write_json_atomic(out / REPORT, report)
    source_card = final.path / "README.md"
    write_int8_card(out / "README.md", source_card.read_text(encoding="utf-8") if source_card.exists() else None,
                    run.path.name, report["line"], INT8_WEIGHTS)
    progress(1.0, "done")
    return report


def compare(fp32: torch.nn.Module, int8: torch.nn.Module, config: DistillConfig, tokenizer) -> dict:
    """Held-out perplexity (at most MAX_BLOCKS blocks) and forward tokens/s of both models."""
    held = heldout_dataset(config.data, tokenizer, config.train.seq_len, config.train.seed)
    if held is None or len(held) == 0:
        raise ValueError("the run has no held-out text to measure the int8 student on (data.validation_source "
                         "or data.validation_fraction)")
    held = held.select(range(min(MAX_BLOCKS, len(held))))
    models = {"fp32": fp32, "int8": int8}
    result = heldout_metrics(models, held, PadCollator(tokenizer), config.train.batch_size, logit_size(fp32)).result()
    batch = PadCollator(tokenizer)([held[i] for i in range(min(SPEED_BLOCKS, len(held)))])["input_ids"]
    speeds = {name: [] for name in models}
    for _ in range(SPEED_REPEATS):
        for name, model in models.items():
            speeds[name].append(forward_tokens_per_s(model, batch, repeats=1))
    return {"heldout_blocks": len(held), "heldout_tokens": result["heldout_tokens"],
            **{f"{name}_{key}": result[f"{name}_{key}"] for name in models for key in ("ce", "perplexity")},
            **{f"{name}_forward_tokens_per_s": statistics.median(values) for name, values in speeds.items()},
            "speed_batch_tokens": int(batch.numel())}


def summary_line(r: dict) -> str:
    size = f"{r['size_ratio']:.1f}× smaller on disk" if r.get("size_ratio") else "size of the fp32 files unknown"
    speed = (f"{r['speedup']:.1f}× faster" if r["speedup"] >= 1 else f"{1 / r['speedup']:.1f}× slower")
    change = 100 * (r["int8_perplexity"] / r["fp32_perplexity"] - 1)
    return (f"int8 (embedding and most linear layers): {size}, {speed} forward on this CPU, held-out "
            f"perplexity {r['fp32_perplexity']:.1f} → {r['int8_perplexity']:.1f} ({change:+.1f}%)")
