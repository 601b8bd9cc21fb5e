"""What the app's handlers call: the job manager, the results store and its ingest thread, the
offline-default preparation. Built once by app.py; the UI never trains or opens run files itself."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from jobs.manager import JobManager
from jobs.spec import JobSpec
from workbench.baseline import ce_baseline_config
from workbench.defaults import Preparation, default_cache_dir
from workbench.eval_queue import EvaluationQueue
from workbench.ingest import Ingestor, IngestLoop
from workbench.inspector import Inspector
from workbench.config import DistillConfig
from workbench.rundir import CONFIG, SPEC, run_in
from workbench.store import DB_NAME, Store


@dataclass
class Services:
    runs_dir: Path
    jobs: JobManager
    store: Store
    ingest: IngestLoop
    preparation: Preparation | None = None
    cache_dir: Path | None = None
    # Local model folders and data files the UI accepts must lie inside one of these.
    allowed_roots: list[Path] = field(default_factory=list)
    inspector: Inspector | None = None
    evaluations: EvaluationQueue | None = None

    @property
    def uploads_dir(self) -> Path:
        return self.runs_dir / "uploads"

    @property
    def exports_dir(self) -> Path:
        return self.runs_dir / "exports"

    @property
    def caches_dir(self) -> Path:
        """Where teacher caches live by default (python -m workbench cache CONFIG RUNS/caches/NAME)."""
        return self.runs_dir / "caches"

    @classmethod
    def start(cls, runs_dir: str | Path, *, max_jobs: int = 1, db_path: str | Path | None = None,
              cache_dir: str | Path | None = None, preparation: Preparation | None = None,
              grace_s: float = 60.0, allowed_roots: list[str | Path] = ()) -> "Services":
        """Re-attach to jobs still running from a previous app, start polling them, and start ingesting
        every run directory into the store (the app is the store's only writer)."""
        runs_dir = Path(runs_dir).expanduser().resolve()
        runs_dir.mkdir(parents=True, exist_ok=True)
        store = Store(db_path or runs_dir / DB_NAME)
        jobs = JobManager(runs_dir, max_concurrent=max_jobs, grace_s=grace_s, cache_dir=cache_dir).start()
        ingest = IngestLoop(Ingestor(store, runs_dir)).start()
        cache = Path(cache_dir).expanduser().resolve() if cache_dir else None
        roots = [runs_dir, cache or default_cache_dir(), *(Path(r).expanduser().resolve() for r in allowed_roots)]
        return cls(runs_dir, jobs, store, ingest, preparation, cache, roots, Inspector(runs_dir),
                   EvaluationQueue(runs_dir, on_done=ingest.wake))

    def add_baseline(self, run_id: str) -> str:
        """Queue the CE-only baseline of a run (same student, data, steps, seed, processes); its run id."""
        run = run_in(self.runs_dir, run_id)
        name = f"{run_id}-ce-baseline"
        if (self.runs_dir / name).exists():
            raise ValueError(f"{run_id} already has its CE-only baseline: {name}")
        if run.file(SPEC).exists():
            spec = JobSpec.read(run.path)
            config, processes, accelerate = spec.config, spec.num_processes, spec.accelerate_config
        else:  # a run started from the command line
            config, processes, accelerate = DistillConfig.load(run.file(CONFIG)), 1, None
        return self.jobs.submit(ce_baseline_config(config), run_name=name,
                                num_processes=processes, accelerate_config=accelerate, baseline_of=run_id)

    def baseline_of(self, run_id: str) -> str | None:
        """The finished CE-only baseline run of `run_id`, if any."""
        found = self.store.cursor().execute(
            "SELECT run_id FROM runs WHERE baseline_of = ? AND status = 'succeeded' ORDER BY created DESC LIMIT 1",
            [run_id]).fetchone()
        return found[0] if found else None

    def evaluation_reports(self, run_id: str) -> list[dict]:
        return run_in(self.runs_dir, run_id).read_evaluations()

    def close(self) -> None:
        """Stops polling and ingesting; running jobs go on and a later start re-attaches to them."""
        self.jobs.close()
        self.ingest.close()
        self.store.close()
