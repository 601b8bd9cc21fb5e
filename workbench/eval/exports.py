"""A run's deployable students: the GGUF export of its final student, and the list of what has been
exported (each export is a folder inside the run with its own README.md model card)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from workbench.eval.quantization import INT8_SUBDIR, REPORT, Progress, export_int8, final_student, no_progress
from workbench.models.gguf_export import check_supported, write_gguf
from workbench.models.students import load_student_at, student_tokenizer
from workbench.store.modelcard import set_exports_section, write_gguf_card
from workbench.store.rundir import RunDir, write_json_atomic

GGUF_SUBDIR = "student-gguf"
GGUF_REPORT = "gguf.json"
STUDENT_SUBDIR = "student"
EXPORT_SUBDIRS = (STUDENT_SUBDIR, INT8_SUBDIR, GGUF_SUBDIR)
FORMATS = ("int8", "gguf")


def export(run: RunDir, fmt: str, out: Path | None = None, dtype: str = "f16",
           progress: Progress = no_progress) -> dict:
    """Export `run`'s final student as `fmt` (int8 or gguf), then list the run's exports in the student's
    model card; return the export's report."""
    if fmt not in FORMATS:
        raise ValueError(f"export format must be one of {', '.join(FORMATS)}, not {str(fmt)[:50]!r}")
    report = export_int8(run, out, progress) if fmt == "int8" else export_gguf(run, out, dtype, progress)
    card = run.path / STUDENT_SUBDIR / "README.md"
    if card.is_file():
        set_exports_section(card, {k: v for k, v in exports_of(run).items() if k != STUDENT_SUBDIR})
    return report


def export_gguf(run: RunDir, out: Path | None = None, dtype: str = "f16", progress: Progress = no_progress) -> dict:
    """Write `run`'s final student as one GGUF file into `out` (default RUN/student-gguf), with its model
    card and gguf.json; return what was written (file, dtype, bytes, pre-tokenizer, line)."""
    config, final = final_student(run)
    out = Path(out) if out is not None else run.path / GGUF_SUBDIR
    progress(0.0, "loading the final student")
    model = load_student_at(config, final).cpu()
    check_supported(model.config)  # before anything is written
    name = f"{run.path.name}-{dtype}.gguf"
    progress(0.3, f"writing {name}")
    info = write_gguf(model, student_tokenizer(config), out / name, dtype, name=run.path.name)
    report = {"run_id": run.path.name, "created": time.time(), "file": name, **info,
              "line": f"GGUF ({info['dtype']}, {info['architecture']}): {name}, {info['bytes'] / 1e6:.1f} MB"}
    write_json_atomic(out / GGUF_REPORT, report)
    source_card = final.path / "README.md"
    write_gguf_card(out / "README.md", source_card.read_text(encoding="utf-8") if source_card.exists() else None,
                    run.path.name, name, info)
    progress(1.0, "done")
    return report


def exports_of(run: RunDir) -> dict[str, str]:
    """The run's folders that can be deployed (its final student and its exports), each with its summary
    line: the measured int8 numbers, the GGUF file, or the student itself."""
    found = {}
    for sub in EXPORT_SUBDIRS:
        folder = run.path / sub
        if not folder.is_dir() or folder.is_symlink():
            continue
        report = folder / (REPORT if sub == INT8_SUBDIR else GGUF_REPORT)
        try:
            found[sub] = json.loads(report.read_text(encoding="utf-8"))["line"]
        except (OSError, ValueError, KeyError, TypeError):
            found[sub] = "the final student, full precision" if sub == STUDENT_SUBDIR else "no report"
    return found
