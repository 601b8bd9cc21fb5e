"""Distill Workbench: `python app.py [--host 127.0.0.1] [--port 7860] [--runs-dir runs] [--share] [--auth USER:PASS]
[--max-jobs 1]`."""
from __future__ import annotations

import argparse
import os

# Before gradio is imported: nothing calls home.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from pathlib import Path  # noqa: E402

from workbench.config.schema import ENV_NAME  # noqa: E402


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
                        help="a folder whose models and data files the UI may use (repeatable; the defaults cache "
                             "is always allowed, and the runs folder unless the app is public)")
    parser.add_argument("--api-key-env", action="append", default=None, metavar="NAME",
                        help="an environment variable a run may read an API key from (repeatable; default "
                             "OPENAI_API_KEY only, and none in public mode): no other variable of this app's "
                             "reaches a run or an endpoint")
    parser.add_argument("--api-base-url", action="append", default=[], metavar="URL",
                        help="an endpoint hard-label runs may call (repeatable; a prefix such as "
                             "https://api.openai.com/v1). Given, runs call only these; in public mode an API key "
                             "is sent only to these")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let runs execute code shipped with a checkpoint (off: such configs are refused)")
    args = parser.parse_args(argv)
    if args.auth and ":" not in args.auth:
        parser.error("--auth must look like USER:PASS")
    if args.max_jobs < 1:
        parser.error(f"--max-jobs must be at least 1, got {args.max_jobs}")
    bad = [name for name in args.api_key_env or [] if not ENV_NAME.fullmatch(name)]
    if bad:
        parser.error(f"--api-key-env takes variable names (capital letters, digits and _), got {bad[0]!r}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    from workbench.data.defaults import Preparation
    from workbench.ui.app import build_app
    from workbench.ui.services import Services
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    # First start fetches and converts the offline default in the background; the page shows progress.
    preparation = Preparation(Path(args.cache_dir) if args.cache_dir else None, echo=lambda m: print(m, flush=True))
    from workbench.config.gate import is_public
    public = is_public(args.host, args.share)
    max_jobs = 1 if os.environ.get("SPACE_ID") else args.max_jobs  # a Space is one small shared machine
    services = Services.start(args.runs_dir, max_jobs=max_jobs, db_path=args.db, cache_dir=args.cache_dir,
                              preparation=preparation.start(), allowed_roots=args.allow_dir, public=public,
                              allow_remote_code=args.trust_remote_code, key_envs=args.api_key_env,
                              api_base_urls=args.api_base_url)
    if public:
        print("public mode: others can reach this app; local models and data are limited to the offline default, "
              "uploads and --allow-dir folders", flush=True)
    live = [job["run_id"] for job in services.jobs.jobs() if job["live"]]
    if live:
        print(f"re-attached to running jobs: {', '.join(live)}", flush=True)
    try:
        # Public mode: Gradio refuses bigger uploads before they are written (the form checks again).
        limit = f"{int(services.gate.max_upload_mb)}mb" if public else None
        build_app(services).launch(server_name=args.host, server_port=args.port, share=args.share, auth=auth,
                                   max_file_size=limit)
    finally:
        services.close()


if __name__ == "__main__":
    main()
