"""Distill Workbench: `python app.py [--host 127.0.0.1] [--port 7860] [--runs-dir runs] [--share] [--auth USER:PASS]`."""
from __future__ import annotations

import argparse
import os

# Before gradio is imported: nothing calls home.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from pathlib import Path  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Distill Workbench")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--runs-dir", default="runs", help="folder holding the run directories")
    parser.add_argument("--share", action="store_true", help="open a public gradio.live link")
    parser.add_argument("--auth", help="USER:PASS required to open the app")
    parser.add_argument("--cache-dir", help="where the offline default is prepared (default: ~/.cache/distill-workbench)")
    args = parser.parse_args(argv)
    if args.auth and ":" not in args.auth:
        parser.error("--auth must look like USER:PASS")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    from workbench.defaults import Preparation
    from workbench.ui.app import build_app
    runs_dir = Path(args.runs_dir).expanduser().resolve()
    runs_dir.mkdir(parents=True, exist_ok=True)
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    # First start fetches and converts the offline default in the background; the page shows progress.
    preparation = Preparation(Path(args.cache_dir) if args.cache_dir else None, echo=lambda m: print(m, flush=True))
    build_app(runs_dir, preparation.start()).launch(server_name=args.host, server_port=args.port,
                                                    share=args.share, auth=auth)


if __name__ == "__main__":
    main()
