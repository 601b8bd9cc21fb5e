"""What a cache-build job makes (JobSpec.cache_build): the cache folder, k (and how many of the k are tail
samples), and the optional fidelity run.

Its values come from a request any visitor can send, or from a spec.json read back: `problems` and
`gate_problems` are the one place they are checked, each problem naming its field and the allowed range.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from workbench.config.fields import show, whole_problem
from workbench.config.gate import Gate
from workbench.config.paths import path_problem
from workbench.config.schema import DistillConfig
from workbench.engine.cache_build import DEFAULT_K, folder_problem

# A position costs 4k + 2 bytes: past this a cache outweighs what it saves (the teacher's pass), and the mass
# outside the top k is already negligible for the models the workbench distils.
MAX_K = 1024
MAX_FIDELITY_STEPS = 10_000


def _public_place(folder: str, gate: Gate) -> str | None:
    """In public mode a visitor's cache goes in the caches folder only: the other allowed folders are read, not
    filled (the offline defaults, uploads)."""
    caches = (gate.runs_dir / "caches").resolve() if gate.runs_dir is not None else None
    if not gate.public or caches is None or Path(folder).expanduser().resolve().is_relative_to(caches):
        return None
    return f"this app is reachable by others: caches are built in {caches.name}/ only (give a plain name)"


@dataclass
class CacheBuild:
    folder: str                 # absolute: where the cache is written (the manifest and its shards)
    k: int = DEFAULT_K          # tokens kept per position
    tail_samples: int = 0       # of the k, drawn from the tail beyond the top k - tail_samples (teacher_cache.py)
    fidelity_steps: int = 0     # > 0: then train this many steps live and from the cache and keep the KL change

    def problems(self, config: DistillConfig) -> list[tuple[str, str]]:
        """The values themselves, and whether `config` is one a cache can serve."""
        k_problem = whole_problem(self.k, 1, MAX_K)
        found = [(f"cache.{name}", problem) for name, problem in (
            ("k", k_problem), ("fidelity_steps", whole_problem(self.fidelity_steps, 0, MAX_FIDELITY_STEPS)),
            ("tail_samples", whole_problem(self.tail_samples, 0, MAX_K if k_problem else self.k))) if problem]
        # What the folder holds is looked at only once the gate has allowed the path (gate_problems): else
        # the replies would tell a visitor which paths exist on the host.
        if not isinstance(self.folder, str) or not self.folder.strip():
            found.append(("cache.folder", f"must name a folder, got {show(self.folder)}"))
        elif problem := path_problem(self.folder):
            found.append(("cache.folder", problem))
        # Only soft_label reads a cache, and it holds the teacher's distributions over the student's tokens,
        # block by block: what the config must be for a cache of it to be read at all.
        if config.strategy != "soft_label":
            found.append(("strategy", f"is {config.strategy}; only soft_label trains from a teacher cache"))
        if config.loss.cross_tokenizer != "off":
            found.append(("loss.cross_tokenizer", "a cache holds the teacher over the student's tokens: turn it off"))
        if not config.data.packing:
            found.append(("data.packing", "a cache needs blocks of one length: turn packing on"))
        return found

    def gate_problems(self, config: DistillConfig, gate: Gate) -> list[tuple[str, str]]:
        """What the app allows: the folder inside its allowed roots and new, empty or a cache; in public mode
        bounded data and a fidelity run no longer than a run may be."""
        found = gate.cache_build_problems(config)
        if isinstance(self.folder, str):
            if problem := gate.path_problem(self.folder) or _public_place(self.folder, gate) \
                    or folder_problem(Path(self.folder)):
                found.append(("cache.folder", problem))
        if gate.max_steps is not None and isinstance(self.fidelity_steps, int) \
                and self.fidelity_steps > gate.max_steps:
            found.append(("cache.fidelity_steps", f"this app is reachable by others: at most {gate.max_steps} "
                                                  f"steps, got {self.fidelity_steps}"))
        return found
