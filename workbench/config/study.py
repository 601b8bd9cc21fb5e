"""A study: one base config and a grid or list over its fields, expanded into the runs that answer one
question (how small can the student be, which α and T, is KD worth it over plain fine-tuning).

    name: capacity-gap
    base: assets/configs/default.yaml        # a config file (relative to this file), or a mapping
    set: [train.max_steps=40]                # overrides of the base, as the CLI's --set (optional)
    grid:                                    # every combination is one run
      student.init_from_teacher_layers: [3, 6, 10]
      train.seed: [1, 2]
    settings: []                             # or/and a list of {field: value} settings, one run each
    baselines: true                          # each distilled run gets its CE-only baseline

jobs/study_plan.py expands a spec into validated configs and jobs/study.py queues them.
"""
from __future__ import annotations

import difflib
import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.config.fields import ConfigError, apply_overrides, knob, leaves, load_mapping, show
from workbench.config.schema import DistillConfig

MAX_RUNS = 64            # planned runs of one study, baselines included: a grid typo must not queue 10,000 jobs
MAX_VALUES = 32          # values of one field
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,47}")
# Fields a study may vary: every config value except where runs go and what they are called.
FIXED = ("output.runs_dir", "output.run_name", "output.study")
SEED = "train.seed"


def study_fields() -> list[str]:
    return [leaf.path for leaf in leaves(DistillConfig) if leaf.path not in FIXED]


@dataclass
class StudySpec:
    name: str = knob("", "What the study is called: letters, digits, '.', '_', '-', at most 48")
    grid: dict = knob(help="Field path -> list of values; every combination is one run",
                      default_factory=dict)
    settings: list = knob(help="A list of {field path: value} settings, one run each (besides the grid)",
                          default_factory=list)
    baselines: bool = knob(False, "Queue the CE-only baseline (α = 1, same student, data, steps, seed) of each "
                                  "distilled run; identical baselines are trained once")

    def validate(self) -> "StudySpec":
        problems = []
        if not isinstance(self.name, str) or not NAME.fullmatch(self.name):
            problems.append(("study.name", f"{show(self.name, 60)} is not a study name: 1-48 letters, digits, "
                                           "'.', '_' or '-', starting with a letter or digit"))
        if not isinstance(self.grid, dict):
            problems.append(("study.grid", f"expected a mapping of field -> list of values, got {show(self.grid)}"))
        if not isinstance(self.baselines, bool):
            problems.append(("study.baselines", f"expected true or false, got {show(self.baselines)}"))
        if not isinstance(self.settings, list) or not all(isinstance(s, dict) for s in self.settings):
            problems.append(("study.settings", f"expected a list of {{field: value}} mappings, got "
                                               f"{show(self.settings)}"))
        if problems:
            raise ConfigError(problems)
        known = set(study_fields())
        for where, fields in [("study.grid", self.grid)] + [(f"study.settings[{i}]", s)
                                                           for i, s in enumerate(self.settings)]:
            for field in fields:
                if field not in known:
                    problems.append((f"{where}.{show(field, 60)}", _unknown(field, known)))
        for field, values in self.grid.items() if not problems else ():
            if not isinstance(values, list) or not 1 <= len(values) <= MAX_VALUES:
                problems.append((f"study.grid.{field}", f"expected a list of 1 to {MAX_VALUES} values, got "
                                                        f"{show(values)}"))
        if not problems and not self.grid and not self.settings:
            problems.append(("study.grid", "give at least one field to vary (a grid or a list of settings)"))
        if not problems and math.prod(len(v) for v in self.grid.values()) + len(self.settings) > MAX_RUNS:
            problems.append(("study.grid", f"{math.prod(len(v) for v in self.grid.values()) + len(self.settings):,} "
                                           f"settings; a study may have at most {MAX_RUNS} runs (split it, or vary "
                                           "fewer values)"))
        if problems:
            raise ConfigError(problems)
        return self

    def combinations(self) -> list[dict]:
        """Each run's setting {field: value}: the grid's product (first field slowest), then the list."""
        fields = list(self.grid)
        product = [dict(zip(fields, values)) for values in itertools.product(*self.grid.values())] if fields else []
        return product + [dict(s) for s in self.settings]


def _unknown(field: Any, known: set[str]) -> str:
    if field in FIXED:
        return "a study sets where its runs go and what they are called; vary another field"
    close = difflib.get_close_matches(str(field), sorted(known), n=1)
    return "not a config field" + (f"; did you mean {close[0]}?" if close else "")


def load_study(path: str | Path, overrides: list[str] = ()) -> tuple[StudySpec, DistillConfig]:
    """A study file: its spec and its base config (`base:` a config file relative to the study file, or a
    mapping; the file's `set:` overrides, then the command line's, apply to the base)."""
    path = Path(path)
    data = load_mapping(path)
    unknown = sorted(set(data) - {"name", "base", "set", "grid", "settings", "baselines"}, key=str)
    if unknown:
        raise ConfigError([(f"study.{show(unknown[0], 40)}", "not a study key; a study has name, base, set, "
                                                            "grid, settings and baselines")])
    own = data.get("set") or []
    if not isinstance(own, list) or not all(isinstance(item, str) for item in own):
        raise ConfigError([("study.set", f"expected a list of field=value overrides, got {show(own)}")])
    base = data.get("base")
    if isinstance(base, str):
        base_path = Path(base) if Path(base).is_absolute() else path.parent / base
        base_data = load_mapping(base_path)
    elif isinstance(base, dict):
        base_data = base
    else:
        raise ConfigError([("study.base", "give the base config: a config file's path or a mapping")])
    config = DistillConfig.from_dict(apply_overrides(base_data, own + list(overrides)))
    spec = StudySpec(name=data.get("name", path.stem), grid=data.get("grid") or {},
                     settings=data.get("settings") or [], baselines=data.get("baselines", False))
    return spec.validate(), config
