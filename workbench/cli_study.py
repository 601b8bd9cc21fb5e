"""`python -m workbench study`: a study run headless. The runs go through the same job manager as in the app
(worker processes, --max-jobs at once); this process follows them, prints progress, and on Ctrl-C cancels the
study as a whole (each run saves a checkpoint; SIGTERM does the same) so that `--resume STUDY_ID` continues it."""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from jobs.manager import JobManager
from jobs.study import StudyManager
from jobs.study_plan import plan_study
from workbench.config.study import load_study
from workbench.eval.study_results import study_table
from workbench.store.database import DB_NAME, Store, StoreError
from workbench.store.ingest import Ingestor
from workbench.store.rundir import FINAL_STATES
from workbench.store.studies import read_study


def _interrupt(_signum, _frame):
    raise KeyboardInterrupt


def run_study(args) -> int:
    # SIGTERM (a scheduler, `kill`) and SIGINT (also where a background shell ignores it) both cancel the study.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    study_id = args.resume  # None for a new study until it has been created
    if args.resume:
        runs_dir = Path(args.runs_dir or "runs")
        plan = None
    else:
        spec, base = load_study(args.study, args.overrides)
        runs_dir = Path(args.runs_dir or base.output.runs_dir)
        plan = plan_study(spec, base)
    manager = JobManager(runs_dir, max_concurrent=args.max_jobs)
    studies = StudyManager(manager)
    queued: list[str] = []
    try:  # Ctrl-C while queuing cancels what was queued so far, as later
        if plan is None:
            print(f"resuming {study_id}: {', '.join(studies.resume(study_id)) or 'nothing left to queue'}", flush=True)
        else:
            study_id = studies.create(plan, queued=queued)
            print(f"study {study_id}: {len(plan.runs)} runs and {len(plan.baselines)} CE-only baselines queued in "
                  f"{manager.runs_dir}, {args.max_jobs} at a time", flush=True)
        _follow(manager, studies, study_id)
    except KeyboardInterrupt:
        if study_id is None:  # stopped while queuing: what was queued is cancelled; the record stays for --resume
            for run_id in queued:
                manager.cancel(run_id)
            print(f"cancelled while queuing ({len(queued)} runs queued were cancelled); the study's record is in "
                  f"{manager.runs_dir}/.studies", file=sys.stderr)
            return 130
        studies.cancel(study_id)
        _follow(manager, studies, study_id, quiet=True)
        print(f"cancelled; continue with `python -m workbench study --resume {study_id} --runs-dir "
              f"{manager.runs_dir}`", file=sys.stderr)
        return 130
    return _report(manager.runs_dir, study_id)


def _follow(manager: JobManager, studies: StudyManager, study_id: str, quiet: bool = False) -> None:
    last = ""
    while True:
        manager.poll()
        progress = studies.progress(study_id)
        line = (f"{progress['steps_done']}/{progress['steps_planned']} steps; "
                + ", ".join(f"{n} {state}" for state, n in sorted(progress["states"].items()))
                + (f"; ~{progress['eta_s'] / 60:.0f} min left" if progress["eta_s"] else ""))
        if line != last and not quiet:
            print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)
            last = line
        # a run whose folder went (never queued, deleted) or whose status is unreadable will not move either
        if all(state in (*FINAL_STATES, "not queued", "unknown") for state in progress["states"]) \
                and not manager.workers():
            return
        time.sleep(2.0)


def _report(runs_dir: Path, study_id: str) -> int:
    try:
        store = Store(runs_dir / DB_NAME)
    except StoreError as err:  # the app holds the database: it ingests the runs itself
        print(f"the study finished; its table is in the app (Studies tab): {err}")
        return 0
    try:
        Ingestor(store, runs_dir).ingest_all()
        table = study_table(store, read_study(runs_dir, study_id))
    finally:
        store.close()
    print(table.to_string(index=False) if not table.empty else "no finished runs to tabulate")
    return 0
