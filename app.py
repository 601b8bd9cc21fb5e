"""Distill Workbench: `python app.py [--host 127.0.0.1] [--port 7860] [--runs-dir runs] [--share] [--auth USER:PASS]
[--max-jobs 1]`."""
from __future__ import annotations

import argparse
import os

# Before gradio is imported: nothing calls home.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from pathlib import Path  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Distill Workbench")
    # GRADIO_SERVER_NAME/PORT: gradio's own convention, which hosts such as Hugging Face Spaces set.
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--runs-dir", default="runs", help="folder holding the run directories")
    parser.add_argument("--share", action="store_true", help="open a public gradio.live link")
    parser.add_argument("--auth", help="USER:PASS required to open the app")
    parser.add_argument("--cache-dir", help="where the offline default is prepared (default: ~/.cache/distill-workbench)")
    parser.add_argument("--max-jobs", type=int, default=1, help="jobs that may train at the same time (default 1)")
    parser.add_argument("--db", help="the DuckDB results store (default: RUNS_DIR/workbench.duckdb)")
    parser.add_argument("--allow-dir", action="append", default=[], metavar="DIR",
                        help="a folder whose models and data files the UI may use (repeatable; the runs folder "
                             "and the defaults cache are always allowed)")
    args = parser.parse_args(argv)
    if args.auth and ":" not in args.auth:
        parser.error("--auth must look like USER:PASS")
    if args.max_jobs < 1:
        parser.error(f"--max-jobs must be at least 1, got {args.max_jobs}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    from workbench.defaults import Preparation
    from workbench.services import Services
    from workbench.ui.app import build_app
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    # First start fetches and converts the offline default in the background; the page shows progress.
    preparation = Preparation(Path(args.cache_dir) if args.cache_dir else None, echo=lambda m: print(m, flush=True))
    from workbench.ui.form import on_space
    max_jobs = 1 if on_space() else args.max_jobs  # a Space is one small shared machine
    services = Services.start(args.runs_dir, max_jobs=max_jobs, db_path=args.db, cache_dir=args.cache_dir,
                              preparation=preparation.start(), allowed_roots=args.allow_dir)
    live = [job["run_id"] for job in services.jobs.jobs() if job["live"]]
    if live:
        print(f"re-attached to running jobs: {', '.join(live)}", flush=True)
    try:
        build_app(services).launch(server_name=args.host, server_port=args.port, share=args.share, auth=auth)
    finally:
        services.close()


if __name__ == "__main__":
    main()
