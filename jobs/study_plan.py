"""A study's runs: its spec (workbench/config/study.py) expanded over the base config into validated configs,
each distilled run paired with its CE-only baseline when asked. Baselines that would train the same config
(a grid over α and T has one CE-only run per student and seed) are planned once and shared.

A teacher cache named by the base (loss.teacher_cache) is shared by every run whose data allows: a run whose
setting changes the teacher, the data or the block length would not match it (the cache is checked against
both at start), and a strategy other than soft_label cannot read one, so those runs train from the live
teacher instead, and the plan says which. With loss.build_teacher_cache the first run to start builds the shared
cache (its folder's lock holds the others back: workbench/engine/cache_build.py) and the rest read it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from workbench.config.fields import ConfigError, show
from workbench.config.schema import DistillConfig
from workbench.config.study import MAX_RUNS, StudySpec
from workbench.engine.baseline import ce_baseline_config


@dataclass(frozen=True)
class PlannedRun:
    """One run of a study: its setting, its config, and (for a distilled run) the planned baseline's index."""
    index: int
    setting: dict
    config: DistillConfig
    baseline: int | None = None     # index into Plan.baselines
    role: str = "distilled"         # or "baseline"


@dataclass(frozen=True)
class Plan:
    spec: StudySpec
    base: DistillConfig
    runs: list[PlannedRun]
    baselines: list[PlannedRun]

    @property
    def size(self) -> int:
        return len(self.runs) + len(self.baselines)

    def fields(self) -> list[str]:
        """The fields the study varies, in the order given."""
        seen = list(self.spec.grid)
        for setting in self.spec.settings:
            seen += [f for f in setting if f not in seen]
        return seen


# Fields whose change makes a run's blocks or teacher differ from those a shared cache was built from.
CACHE_KEYS = ("teacher.", "data.", "train.seq_len", "train.seed")


def _value(data: dict, field: str):
    for part in field.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _cache_readable(base: DistillConfig, setting: dict) -> bool:
    """Whether the base's teacher cache fits the run of this setting (see the module docstring)."""
    known = base.to_dict()
    changed = [f for f, v in setting.items() if f.startswith(CACHE_KEYS) and _value(known, f) != v]
    return setting.get("strategy", base.strategy) == "soft_label" and not changed


def _with_setting(base: DistillConfig, setting: dict, where: str) -> DistillConfig:
    data = base.to_dict()
    if base.loss.teacher_cache and "loss.teacher_cache" not in setting and not _cache_readable(base, setting):
        data["loss"].update(teacher_cache=None, build_teacher_cache=False)
    for field, value in setting.items():
        node = data
        *sections, last = field.split(".")
        for part in sections:
            if node.get(part) is None:  # an optional section left empty in the base
                node[part] = {}
            node = node[part]
        node[last] = value
    try:
        return DistillConfig.from_dict(data)
    except ConfigError as err:
        raise ConfigError([(f"{where} {name}", message) for name, message in err.problems]) from None


def _baseline_key(config: DistillConfig) -> str:
    return config.replace(output=dataclasses.replace(config.output, run_name=None, study=None)).to_json()


def plan_study(spec: StudySpec, base: DistillConfig) -> Plan:
    """Every run of the study as a validated config; ConfigError naming the setting and the field otherwise."""
    spec.validate()
    runs, baselines, keys = [], [], {}
    for index, setting in enumerate(spec.combinations()):
        where = "setting " + ", ".join(f"{f}={show(v, 40)}" for f, v in setting.items()) + ":"
        config = _with_setting(base, setting, where)
        baseline = None
        if spec.baselines:
            try:
                ce = ce_baseline_config(config)
            except ValueError:  # already CE-only, or hard-label (itself plain fine-tuning): no baseline
                ce = None
            if ce is not None:
                key = _baseline_key(ce)
                if key not in keys:
                    keys[key] = len(baselines)
                    baselines.append(PlannedRun(len(baselines), setting, ce, role="baseline"))
                baseline = keys[key]
        runs.append(PlannedRun(index, setting, config, baseline))
    if len(runs) + len(baselines) > MAX_RUNS:
        raise ConfigError([("study.grid", f"plans {len(runs)} runs and {len(baselines)} baselines; a study may "
                                          f"have at most {MAX_RUNS} (split it, or vary fewer values)")])
    return Plan(spec, base, runs, baselines)
