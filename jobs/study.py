"""Studies as a whole: queue every run of a plan through the job manager (so --max-jobs holds), cancel or
resume them together, and say where the study stands.

The record (workbench/store/studies.py) is written before any run is queued and names every planned run, so
a study cut off while queuing (app stopped, a run refused) is finished by resuming it: runs never queued are
queued then, stopped ones continue from their last checkpoint, finished ones are left alone.
"""
from __future__ import annotations

import dataclasses
import time

from jobs.manager import RESUMABLE, JobManager
from jobs.study_plan import Plan, PlannedRun, plan_study
from workbench.config.schema import DistillConfig
from workbench.config.study import StudySpec
from workbench.store.rundir import CONFIG, FINAL_STATES, SPEC, finite_number, read_json
from workbench.store.studies import read_study, study_file, write_study

ACTIVE = ("queued", "starting", "running", "cancelling")


def _free_id(manager: JobManager, plan: Plan) -> str:
    """The study's name, or NAME-2, NAME-3 ...: the first whose record and every planned run folder are free, so
    a study never counts a run it did not queue as its own."""
    study_id, n = plan.spec.name, 2
    while study_file(manager.runs_dir, study_id).exists() or any(
            (manager.runs_dir / run_id).exists() for run_id in [study_id, *_run_ids(plan, study_id)]):
        study_id, n = f"{plan.spec.name}-{n}", n + 1
    return study_id


def _named(plan: Plan, study_id: str) -> tuple[list[str], list[str]]:
    """(the distilled runs' ids, the baselines' ids), in plan order: the study's id and the setting's number,
    NAME-01, NAME-02 ... and NAME-ce01 ... for baselines. The one place run ids of a study are made."""
    return ([f"{study_id}-{r.index + 1:02d}" for r in plan.runs],
            [f"{study_id}-ce{b.index + 1:02d}" for b in plan.baselines])


def _run_ids(plan: Plan, study_id: str) -> list[str]:
    distilled, baselines = _named(plan, study_id)
    return distilled + baselines


def _record(plan: Plan, study_id: str) -> dict:
    distilled_ids, baseline_ids = _named(plan, study_id)
    runs = [{"run_id": run_id, "role": "distilled", "setting": run.setting,
             "baseline": None if run.baseline is None else baseline_ids[run.baseline]}
            for run_id, run in zip(distilled_ids, plan.runs)]
    runs += [{"run_id": run_id, "role": "baseline", "setting": b.setting, "baseline": None}
             for run_id, b in zip(baseline_ids, plan.baselines)]
    return {"study_id": study_id, "name": plan.spec.name, "created": time.time(), "fields": plan.fields(),
            "spec": {"grid": plan.spec.grid, "settings": plan.spec.settings, "baselines": plan.spec.baselines},
            "base": plan.base.to_dict(), "cancelled": None, "runs": runs}


class StudyManager:
    def __init__(self, jobs: JobManager):
        self.jobs = jobs

    def create(self, plan: Plan, num_processes: int = 1, queued: list | None = None) -> str:
        """Check every run against the app's gate, write the record, queue the runs; the study id. `queued`
        receives each run id as it is queued (so a caller knows them even if queuing stops part-way)."""
        if self.jobs.gate is not None:
            for run in plan.runs + plan.baselines:
                self.jobs.gate.check(run.config, num_processes, None)
        # The manager's lock (re-entrant) across naming and queuing: a cancel or a second resume waits until
        # the study is queued whole, and no other job takes a planned name meanwhile.
        with self.jobs._lock:
            study_id = _free_id(self.jobs, plan)
            record = _record(plan, study_id)
            record["num_processes"] = num_processes
            write_study(self.jobs.runs_dir, record)
            self._queue_missing(record, queued if queued is not None else [])
        return study_id

    def cancel(self, study_id: str) -> dict[str, str]:
        """Cancel every queued or running run of the study; {run_id: state right after}."""
        with self.jobs._lock:
            record = read_study(self.jobs.runs_dir, study_id)
            record["cancelled"] = time.time()
            write_study(self.jobs.runs_dir, record)
            states = self.states(record)
            return {run_id: self.jobs.cancel(run_id) for run_id, state in states.items() if state in ACTIVE}

    def resume(self, study_id: str) -> list[str]:
        """Queue again what the study still needs: stopped runs continue, runs never queued are queued."""
        with self.jobs._lock:
            record = read_study(self.jobs.runs_dir, study_id)
            record["cancelled"] = None
            write_study(self.jobs.runs_dir, record)
            resumed = [run_id for run_id, state in self.states(record).items() if state in RESUMABLE]
            for run_id in resumed:
                self.jobs.resume(run_id)
            return self._queue_missing(record, resumed)

    def states(self, record: dict) -> dict[str, str]:
        """{run_id: state} for every planned run; 'not queued' for one with no run folder yet."""
        known = {job["run_id"]: job["state"] for job in self.jobs.jobs()}
        return {run["run_id"]: known.get(run["run_id"], "not queued") for run in record["runs"]}

    def progress(self, study_id: str) -> dict:
        """Counts by state, steps done of steps planned, and a rough time left from the runs finished so far."""
        record = read_study(self.jobs.runs_dir, study_id)
        jobs = {job["run_id"]: job for job in self.jobs.jobs()}
        base_steps = int(record["base"].get("train", {}).get("max_steps") or 0)
        counts: dict[str, int] = {}
        done_steps, planned_steps, durations = 0, 0, []
        for run in record["runs"]:
            job = jobs.get(run["run_id"], {})
            state = job.get("state", "not queued")
            counts[state] = counts.get(state, 0) + 1
            # a grid over train.max_steps: each started run says its own total
            steps = int(finite_number(job.get("total_steps")) or run["setting"].get("train.max_steps") or base_steps)
            planned_steps += steps
            done_steps += steps if state == "succeeded" else int(finite_number(job.get("step")) or 0)
            started, ended = finite_number(job.get("started")), finite_number(job.get("updated"))
            if state == "succeeded" and started and ended:
                durations.append(ended - started)
        left = sum(n for state, n in counts.items() if state not in FINAL_STATES)
        per_run = sum(durations) / len(durations) if durations else None
        slots = max(1, self.jobs.max_concurrent)
        return {"study_id": study_id, "name": record["name"], "runs": len(record["runs"]), "states": counts,
                "steps_done": done_steps, "steps_planned": planned_steps,
                "eta_s": None if per_run is None or not left else per_run * left / slots,
                "cancelled": record.get("cancelled") is not None}

    def _queue_missing(self, record: dict, queued: list) -> list[str]:
        """Queue the planned runs that have no run folder, in plan order, each baseline after its first run;
        `queued` (returned) gets each id as it is queued. A folder of that name that is not this study's run is
        refused, never counted as the study's."""
        configs = planned_runs(record)
        first_user = {}
        for run in record["runs"]:
            if run["baseline"] is not None:
                first_user.setdefault(run["baseline"], run["run_id"])
        for run in (r for r in record["runs"] if r["role"] == "distilled"):
            ids = [run["run_id"]] + ([run["baseline"]] if first_user.get(run["baseline"]) == run["run_id"] else [])
            for run_id in ids:
                if (self.jobs.runs_dir / run_id).exists():
                    self._check_member(run_id, record["study_id"])
                    continue
                planned = configs[run_id]
                config = planned.config.replace(output=dataclasses.replace(
                    planned.config.output, study=record["study_id"]))
                self.jobs.submit(config, run_name=run_id, num_processes=record.get("num_processes", 1),
                                 baseline_of=run["run_id"] if planned.role == "baseline" else None)
                queued.append(run_id)
        return queued

    def _check_member(self, run_id: str, study_id: str) -> None:
        spec, _ = read_json(self.jobs.runs_dir / run_id / SPEC)
        config = read_json(self.jobs.runs_dir / run_id / CONFIG)[0] or (spec or {}).get("config") or {}
        if (config.get("output") or {}).get("study") != study_id:
            raise ValueError(f"{run_id} is a run of its own, not of study {study_id}: rename or delete it, then "
                             "resume the study")


def planned_runs(record: dict) -> dict[str, PlannedRun]:
    """{run_id: planned run} of a stored record, rebuilt from its spec and base (the same expansion as at
    creation, so the record need not hold a config per run)."""
    plan = plan_study(StudySpec(name=record["name"], **record["spec"]), DistillConfig.from_dict(record["base"]))
    return dict(zip(_run_ids(plan, record["study_id"]), plan.runs + plan.baselines))
