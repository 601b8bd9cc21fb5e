"""Command line: the same DistillConfig as the UI, headless.

    python -m workbench train CONFIG.yaml [--set loss.alpha=0.3 ...] [--run-dir DIR]
    python -m workbench resume RUN_DIR
    python -m workbench validate CONFIG.yaml [--set ...]     print the resolved config
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from workbench.configbase import ConfigError  # noqa: E402

EXIT_CONFIG = 2
EXIT_FAILED = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workbench", description="Distill Workbench command line")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (("train", "train a student from a YAML or JSON config"),
                           ("validate", "check a config and print it resolved, as YAML")):
        cmd = sub.add_parser(name, help=helptext)
        cmd.add_argument("config", help="path to a .yaml or .json config")
        cmd.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a field, e.g. --set loss.alpha=0.3 (repeatable)")
        if name == "train":
            cmd.add_argument("--run-dir", help="run directory (default: output.runs_dir/output.run_name)")
    resume = sub.add_parser("resume", help="continue a run from its last checkpoint")
    resume.add_argument("run_dir", help="a run directory holding config.json")
    return parser


def _train(config, run_dir, resume: bool) -> int:
    from workbench.runner import default_run_dir, run_training
    from workbench.rundir import CONFIG, RunDir
    run = RunDir(run_dir) if run_dir else default_run_dir(config)
    if not resume and run.file(CONFIG).exists():
        print(f"error: {run.path} already holds a run; resume it with `python -m workbench resume {run.path}` "
              "or choose another output.run_name", file=sys.stderr)
        return EXIT_CONFIG
    print(f"run directory: {run.path}", flush=True)
    final = run_training(config, run, resume=resume, echo=lambda msg: print(msg, flush=True))
    if final:
        print("final held-out metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(final.items())
                                                     if isinstance(v, float)))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from workbench.config import DistillConfig
    try:
        if args.command == "resume":
            from workbench.rundir import CONFIG, RunDir
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
        return _train(config, args.run_dir, resume=False)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the CLI's job is to turn any failure into a message + exit code
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAILED
