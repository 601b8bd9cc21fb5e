"""What the Set-up study panel and the Studies tab call: launch a study from the form's config, cancel and
resume it as a whole, and read its numbers from the store. Every id and grid comes from a request that any
visitor can send: ids are checked by the study files' own rules, grids by the study spec, and every planned
run by the app's gate (jobs/study.py) before anything is queued."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from jobs.manager import RESUMABLE
from jobs.study import StudyManager
from jobs.study_plan import Plan, plan_study
from workbench.config.fields import ConfigError, parse_text, show
from workbench.config.schema import DistillConfig
from workbench.config.study import SEED, StudySpec
from workbench.eval.study_results import run_frame, setting_table
from workbench.store.studies import read_study

MAX_GRID_CHARS = 20_000


@dataclass
class StudyView:
    record: dict
    runs: pd.DataFrame         # one row per planned run (eval/study_results.run_frame)
    table: pd.DataFrame        # one row per setting
    curves: pd.DataFrame       # held-out CE against time, per run
    progress: dict


def parse_grid(grid_text: str, seeds_text: str) -> dict:
    """The panel's grid (YAML: `field: [values]` per line) with the seeds' list as train.seed."""
    if not isinstance(grid_text, str) or len(grid_text) > MAX_GRID_CHARS:
        raise ConfigError([("study.grid", f"expected YAML text of at most {MAX_GRID_CHARS:,} characters")])
    try:
        grid = parse_text(grid_text) if grid_text.strip() else {}
    except ValueError as err:
        raise ConfigError([("study.grid", f"not YAML: {err}")]) from None
    if not isinstance(grid, dict):
        raise ConfigError([("study.grid", f"expected lines of `field: [values]`, got {show(grid)}")])
    seeds = str(seeds_text or "").strip()
    if seeds:
        try:
            grid[SEED] = [int(s) for s in seeds.replace(",", " ").split()]
        except ValueError:
            raise ConfigError([("study.seeds", f"expected whole numbers such as 1, 2, got {show(seeds)}")]) from None
    return grid


class StudyService:
    def __init__(self, services):
        self.services = services
        self.manager = StudyManager(services.jobs)
        # Public mode: the browser session that launched each study (like Services.sessions for runs): only it
        # may cancel or resume the study, and the runs a resume queues count against it.
        self.owners: dict[str, str | None] = {}

    def plan(self, name, grid_text, seeds_text, baselines, base: DistillConfig) -> Plan:
        return plan_study(StudySpec(name=name, grid=parse_grid(grid_text, seeds_text), baselines=baselines), base)

    def submit(self, plan: Plan, session: str | None) -> str:
        """Queue a study. In public mode all its runs count against the visitor's and the app's caps at once."""
        self.services.check_capacity(session, adding=plan.size)
        queued: list[str] = []
        try:
            study_id = self.manager.create(plan, queued=queued)
            self.owners[study_id] = session
        finally:  # also the runs queued before a failure part-way: their session may still cancel them
            self._own(session, queued)
            self.services.ingest.wake()
        return study_id

    def cancel(self, study_id: str, session: str | None) -> dict[str, str]:
        self._check_owner(study_id, session, "cancel")
        return self.manager.cancel(study_id)

    def resume(self, study_id: str, session: str | None) -> list[str]:
        record = self._check_owner(study_id, session, "resume")
        waiting = [r for r, s in self.manager.states(record).items() if s in (*RESUMABLE, "not queued")]
        self.services.check_capacity(session, adding=len(waiting))
        queued = self.manager.resume(study_id)
        self._own(session, queued)
        return queued

    def record(self, study_id: str) -> dict:
        return read_study(self.services.runs_dir, study_id)

    def choices(self) -> list[tuple[str, str]]:
        """(label, study id) for a dropdown, newest first."""
        frame = self.services.store.studies()
        return [(f"{r.study_id} ({r.finished}/{r.planned} finished)", r.study_id) for r in frame.itertuples()]

    def view(self, study_id: str) -> StudyView:
        record = self.record(study_id)
        runs = run_frame(self.services.store, record)
        curves = self.services.store.heldout_curves(runs.run_id.tolist())
        return StudyView(record, runs, setting_table(runs, record), curves, self.manager.progress(study_id))

    def _own(self, session: str | None, run_ids: list[str]) -> None:
        if session is not None:
            mine = self.services.sessions.setdefault(session, [])
            mine.extend(r for r in run_ids if r not in mine)

    def _check_owner(self, study_id: str, session: str | None, what: str) -> dict:
        """The study's record; PermissionError in public mode unless this session launched the study."""
        record = self.record(study_id)
        if self.services.gate.public and (study_id not in self.owners or self.owners[study_id] != session):
            raise PermissionError(f"this app is shared: only the browser session that launched study {study_id} "
                                  f"may {what} it")
        return record
