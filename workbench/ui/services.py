"""What the app's handlers call: the job manager, the results store and its ingest thread, the
offline-default preparation. Built once by app.py; the UI never trains or opens run files itself."""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from jobs.cache_spec import CacheBuild
from jobs.cluster import ClusterJob, runs_of_config, write_job
from jobs.cluster_spec import ClusterSpec
from jobs.manager import JobManager
from jobs.monitor import ResourceMonitor
from jobs.spec import JobSpec
from workbench.config.fields import ConfigError
from workbench.config.gate import Gate, upload_folders
from workbench.config.paths import path_problem
from workbench.config.schema import DistillConfig
from workbench.data.defaults import Preparation, default_cache_dir
from workbench.engine.baseline import ce_baseline_config
from workbench.eval.inspector import Inspector
from workbench.eval.queue import EvaluationQueue
from workbench.models.kept_states import STATES_FOLDER
from workbench.store.database import DB_NAME, Store
from workbench.store.ingest import IngestLoop, Ingestor
from workbench.store.rundir import CONFIG, SPEC, read_json, run_in

ACTIVE = ("queued", "starting", "running", "cancelling")
CONFIG_VIEW_MAX_BYTES = 2**20  # a config is a few KiB; a bigger file is not one to show
# samples.jsonl grows all run long (up to 64 completions of up to 32k tokens per log): the latest logging
# step's samples are read from its end only, so a view costs the same at step 10 and at step 100,000.
SAMPLES_TAIL_BYTES = 2**20


@dataclass
class Services:
    runs_dir: Path
    jobs: JobManager
    store: Store
    ingest: IngestLoop
    preparation: Preparation | None = None
    cache_dir: Path | None = None
    # What this app instance allows: every path and model reference of a config it accepts passes it.
    gate: Gate | None = None
    inspector: Inspector | None = None
    evaluations: EvaluationQueue | None = None
    # Public mode: the runs each browser session launched, so a visitor's queue can be capped and only its
    # own runs changed (cancelled, resumed, moved, renamed, deleted).
    sessions: dict[str, list[str]] = field(default_factory=dict)
    monitor: ResourceMonitor = field(default_factory=ResourceMonitor)

    @property
    def allowed_roots(self) -> list[Path]:
        return list(self.gate.roots)

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
              grace_s: float = 60.0, allowed_roots: list[str | Path] = (), public: bool = False,
              allow_remote_code: bool = False, key_envs: list[str] | None = None,
              api_base_urls: list[str] = ()) -> "Services":
        """Re-attach to jobs still running from a previous app, start polling them, and start ingesting
        every run directory into the store (the app is the store's only writer). The gate is fixed here,
        for the app's life: allowed folders, public mode, remote code, the variables keys may come from."""
        runs_dir = Path(runs_dir).expanduser().resolve()
        runs_dir.mkdir(parents=True, exist_ok=True)
        cache = Path(cache_dir).expanduser().resolve() if cache_dir else None
        gate = Gate.for_app(runs_dir, cache or default_cache_dir(), list(allowed_roots), public=public,
                            allow_remote_code=allow_remote_code, key_envs=key_envs, upload_dirs=upload_folders(),
                            api_base_urls=list(api_base_urls))
        store = Store(db_path or runs_dir / DB_NAME)
        jobs = JobManager(runs_dir, max_concurrent=max_jobs, grace_s=grace_s, cache_dir=cache_dir, gate=gate).start()
        ingest = IngestLoop(Ingestor(store, runs_dir)).start()
        return cls(runs_dir, jobs, store, ingest, preparation, cache, gate, Inspector(runs_dir, gate=gate),
                   EvaluationQueue(runs_dir, on_done=ingest.wake, gate=gate,
                                   states_root=(cache or default_cache_dir()) / STATES_FOLDER))

    def submit(self, config: DistillConfig, session: str | None = None, **launch) -> str:
        """Queue a job. In public mode a browser session may have at most gate.max_jobs_per_session runs
        queued or running, and the whole app gate.max_active_jobs (a visitor can open new sessions at will),
        enforced here whatever the form shows."""
        self.check_capacity(session)
        run_id = self.jobs.submit(config, **launch)
        if session is not None:
            self.sessions.setdefault(session, []).append(run_id)
        return run_id

    def resume(self, run_id: str, session: str | None = None) -> None:
        """Queue a stopped job again, counted against the same limits as a new one."""
        self.check_owner(run_id, session, "resume")
        self.check_capacity(session)
        self.jobs.resume(run_id)
        if session is not None and run_id not in self.sessions.get(session, []):
            self.sessions.setdefault(session, []).append(run_id)

    def cancel(self, run_id: str, session: str | None = None) -> str:
        """Cancel a job (a queued one leaves the queue); the state right after."""
        self.check_owner(run_id, session, "cancel")
        return self.jobs.cancel(run_id)

    def move(self, run_id: str, offset: int, session: str | None = None) -> int:
        """Move a queued job up (offset < 0) or down the queue; its new position. Not in public mode: the
        queue is everyone's there, and moving one's own job up would move it past other visitors'."""
        if self.gate.public:
            raise PermissionError("this app is shared: the queue keeps the order in which runs were launched")
        return self.jobs.move(run_id, offset)

    def delete(self, run_id: str, session: str | None = None, confirmed: bool = False) -> None:
        """Delete an ended run: its folder and every row of it in the store. `confirmed` must be True: the
        endpoint is callable without the form, and a deletion cannot be undone."""
        if confirmed is not True:
            raise ValueError("tick the confirmation first: deleting removes the run's folder and cannot be undone")
        self.check_owner(run_id, session, "delete")
        run_in(self.runs_dir, run_id)  # KeyError for an id that names no run: before anything else is said
        if self.evaluations.busy(run_id):
            raise ValueError(f"{run_id} has a student being evaluated; delete it once that has finished")
        try:
            self.jobs.delete(run_id)
        finally:
            if not (self.runs_dir / run_id).exists():  # gone, even if some files stayed in the trash
                self.ingest.ingestor.forget(run_id)
        for runs in list(self.sessions.values()):
            if run_id in runs:
                runs.remove(run_id)

    def annotate(self, run_id: str, session: str | None, name, tags, notes) -> dict:
        """Set a run's display name, tags and notes (RUN/notes.json); the ingest thread copies them in."""
        self.check_owner(run_id, session, "rename or annotate")
        written = run_in(self.runs_dir, run_id).write_notes(name, tags, notes)
        self.ingest.wake()
        return written

    def owns(self, run_id: str | None, session: str | None) -> bool:
        """Whether a browser session may change a run. In public mode every visitor sees every run, but only
        the session that launched one may change it; otherwise anyone who can open the app may."""
        return not self.gate.public or run_id in self.sessions.get(session, [])

    def check_owner(self, run_id: str, session: str | None, what: str) -> None:
        """PermissionError unless the session owns the run (a visitor can call the endpoints with any id)."""
        if not self.owns(run_id, session):
            raise PermissionError(f"this app is shared: only the browser session that launched {run_id} may "
                                  f"{what} it")

    def check_capacity(self, session: str | None, adding: int = 1) -> None:
        """ConfigError unless `adding` more runs fit the shared app's caps (none outside public mode)."""
        if self.gate.max_active_jobs is None:
            return
        states = {job["run_id"]: job["state"] for job in self.jobs.jobs()}
        active = [r for r, state in states.items() if state in ACTIVE]
        if len(active) + adding > self.gate.max_active_jobs:
            raise ConfigError([("session", f"this app is shared and busy: {len(active)} runs are waiting or "
                                           f"training and {adding} more do not fit; try again when some have "
                                           "finished")])
        mine = [r for r in self.sessions.get(session, []) if states.get(r) in ACTIVE]
        if session is not None and len(mine) + adding > self.gate.max_jobs_per_session:
            raise ConfigError([("session", f"this app is shared: at most {self.gate.max_jobs_per_session} runs of "
                                           f"yours may be queued or running at once; {adding} more do not fit"
                                           + (f" beside {', '.join(mine)}" if mine else ""))])

    def build_cache(self, config: DistillConfig, folder, k, fidelity_steps, session: str | None = None,
                    tail_samples=0) -> str:
        """Queue a job that builds the teacher cache of `config` (the Set-up form's) in `folder`: a plain name is
        a folder in caches_dir, anything else a path inside the allowed folders. Every value, whatever a caller
        sends, is checked by CacheBuild and the gate when the manager takes the job (ConfigError naming the
        field). The job's run id."""
        build = CacheBuild(folder=self.cache_folder(folder), k=k, fidelity_steps=fidelity_steps,
                           tail_samples=tail_samples)
        # The job builds a cache; the config says what for, and trains from none itself (the fidelity run sets one).
        loss = dataclasses.replace(config.loss, teacher_cache=None, build_teacher_cache=False)
        name = Path(build.folder).name if isinstance(build.folder, str) else ""  # refused by the manager if not
        return self.submit(config.replace(loss=loss), session, run_name=f"cache-{name}", cache_build=build)

    def cache_folder(self, value):
        """A cache folder as the panel names it: a plain name is CACHES/NAME; a path is kept as given (absolute),
        for the gate to judge; anything else is passed on as it came, for CacheBuild to refuse by name."""
        if not isinstance(value, str) or not value.strip() or path_problem(value):
            return value
        value = value.strip()
        if "/" not in value and value not in (".", "..") and not value.startswith("~"):
            return str(self.caches_dir / value)
        return str(Path(value).expanduser().absolute())

    def add_baseline(self, run_id: str, session: str | None = None) -> str:
        """Queue the CE-only baseline of a run (same student, data, steps, seed, processes); its run id."""
        config, processes, accelerate = self.launch_of(run_id)
        name = f"{run_id}-ce-baseline"
        if (self.runs_dir / name).exists():
            raise ValueError(f"{run_id} already has its CE-only baseline: {name}")
        return self.submit(ce_baseline_config(config), session, run_name=name, num_processes=processes,
                           accelerate_config=accelerate, baseline_of=run_id)

    def launch_of(self, run_id: str) -> tuple[DistillConfig, int, str | None]:
        """How a run was launched: (config as submitted, processes, accelerate config). spec.json's config,
        not config.json's (resolved: offline defaults as cache paths, a hard-label run's data as the file its
        teacher wrote). Not yet checked by the gate: the caller checks it for what it does."""
        run = run_in(self.runs_dir, run_id)
        if run.file(SPEC).exists():
            spec = JobSpec.read(run.path)
            if spec.cache_build is not None:  # its config says what a cache was for; no student to compare with
                raise ValueError(f"{run_id} built a teacher cache; it is not a training run")
            return spec.config, spec.num_processes, spec.accelerate_config
        return DistillConfig.load(run.file(CONFIG)), 1, None  # a run started from the command line

    def baseline_of(self, run_id: str) -> str | None:
        """The finished CE-only baseline run of `run_id`, if any."""
        found = self.store.cursor().execute(
            "SELECT run_id FROM runs WHERE baseline_of = ? AND status = 'succeeded' ORDER BY created DESC LIMIT 1",
            [run_id]).fetchone()
        return found[0] if found else None

    def notes(self, run_id: str | None) -> dict:
        """The run's name, tags and notes; empty ones for no run (or a name that is none)."""
        try:
            return run_in(self.runs_dir, run_id).read_notes()
        except KeyError:
            return {"name": "", "tags": [], "notes": ""}

    def config_text(self, run_id: str | None) -> str:
        """The run's config.json (the resolved config it ran with) as YAML; spec.json's before it has one."""
        if not run_id:
            return ""
        try:
            run = run_in(self.runs_dir, run_id)
            for name, key in ((CONFIG, None), (SPEC, "config")):
                path = run.file(name)
                if path.is_file() and path.stat().st_size > CONFIG_VIEW_MAX_BYTES:
                    return f"# {name} is over {CONFIG_VIEW_MAX_BYTES // 2**20} MiB: not shown"
                data, problem = read_json(path)
                if problem:
                    return f"# {problem}"
                config = data.get(key) if data is not None and key else data
                if isinstance(config, dict):
                    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
        except (KeyError, OSError) as err:
            return f"# {err.args[0] if isinstance(err, KeyError) and err.args else err}"
        except (RecursionError, yaml.YAMLError):  # a planted or damaged file nested deeper than YAML can write
            return "# this run's config cannot be shown: it is nested too deep"
        return "# this run has no config yet"

    def strategy(self, run_id: str) -> str | None:
        """The run's strategy as the store knows it; None before the run is first ingested."""
        found = self.store.cursor().execute("SELECT strategy FROM runs WHERE run_id = ?", [run_id]).fetchone()
        return found[0] if found else None

    def stored_config(self, run_id: str) -> dict:
        """The run's resolved config as the store last ingested it (config.json); {} before that, or for a
        config that is no JSON object."""
        found = self.store.cursor().execute("SELECT config FROM runs WHERE run_id = ?", [run_id]).fetchone()
        try:
            config = json.loads(found[0]) if found and found[0] else {}
        except (TypeError, ValueError, RecursionError):
            return {}
        return config if isinstance(config, dict) else {}

    def latest_samples(self, run_id: str) -> list[dict]:
        """The completions an on-policy run's student sampled at its latest logging step that kept some
        (RUN/samples.jsonl, records as the run wrote them: any JSON object); [] for none or no such run."""
        try:
            records = run_in(self.runs_dir, run_id).read_samples(tail_bytes=SAMPLES_TAIL_BYTES)
        except KeyError:
            return []
        return [r for r in records if r.get("step") == records[-1].get("step")] if records else []

    def evaluation_reports(self, run_id: str) -> list[dict]:
        return run_in(self.runs_dir, run_id).read_evaluations()

    def cluster_job(self, config: DistillConfig, spec: ClusterSpec) -> tuple[ClusterJob, Path]:
        """A cluster job folder for a config that passed the gate, written under RUNS/exports/cluster/ (a name of
        the app's making), and its zip for the download; ConfigError naming the field (spec's values included)."""
        runs = runs_of_config(config)
        stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"  # two writes in one second differ
        folder = self.exports_dir / "cluster" / f"{runs[0].name}-{stamp}"
        job = write_job(runs, spec, folder)
        return job, Path(shutil.make_archive(str(folder), "zip", folder.parent, folder.name))

    def __enter__(self) -> "Services":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def close(self) -> None:
        """Stops polling and ingesting; running jobs go on and a later start re-attaches to them."""
        self.jobs.close()
        self.ingest.close()
        self.store.close()
