"""The one gate every path and model reference passes where a config enters the app: the Set-up form and
its HTTP endpoint, a run directory read back (inspector, evaluation, resume, a job found queued at start),
the temperature preview. It knows what this app instance allows, fixed when the app starts:

- roots: the folders local models and data may come from (symlinks resolved first, `..` and `file://`
  refused). In public mode (a share link, a non-loopback host, a Space) only the offline default, uploads,
  teacher caches, teacher-written datasets and --allow-dir folders; otherwise the runs folder too.
- remote code: never, unless the app was started with --trust-remote-code; a run directory's config
  cannot switch it on.
- API keys: a run may read its key only from the variables named at start (--api-key-env, default
  OPENAI_API_KEY), so a visitor cannot send the host's HF_TOKEN to a server of their choosing.
- public limits: steps per run, runs a browser session may have queued or running, upload size.

Hub ids and paths are told apart by paths.looks_like_local_path, the rule the loaders use: a value that
looks like a path is checked against the roots; a hub id goes to the hub. The command line has no gate:
it runs its user's own config on their own machine.
"""
from __future__ import annotations

import ipaddress
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from workbench.config import DistillConfig
from workbench.configbase import ConfigError
from workbench.data import BUILDERS, file_loader_names
from workbench.defaults import PREFIX
from workbench.paths import MODEL_SUFFIXES, looks_like_local_path, path_problem

DATA_SUFFIXES = tuple(BUILDERS)  # what the data loaders read as a file rather than a hub dataset
PROJECT_PROMPTS = "project:"
GENERATED_FILE = ("generated", "completions.jsonl")  # RUN/generated/completions.jsonl: app-made data
PUBLIC_MAX_STEPS = 200
PUBLIC_MAX_JOBS_PER_SESSION = 2
PUBLIC_MAX_ACTIVE_JOBS = 6  # waiting or training, all visitors together
PUBLIC_MAX_UPLOAD_MB = 64.0
# What else one visitor's run may ask of a shared machine (train.max_steps is max_steps above).
PUBLIC_CAPS = {"train.batch_size": 16, "train.grad_accum": 16, "train.seq_len": 1024,
               "generation.max_new_tokens": 512, "generation.samples_per_prompt": 4, "generation.max_prompts": 500}


def _internal_host(url: str) -> bool:
    """Whether an http(s) URL names this machine or a private, link-local or reserved address (literal
    addresses and localhost; a name resolving to one is not caught here)."""
    try:
        host = (urlsplit(url).hostname or "").lower()
    except ValueError:
        return True
    if host in ("", "localhost") or host.endswith((".localhost", ".local", ".internal")):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return not address.is_global


def references(config: DistillConfig) -> list[tuple[str, str | None, tuple[str, ...], bool]]:
    """Every model or data reference a config's loaders read: (field, value, the suffixes that mark a
    path, whether a `defaults:` name resolves there). The gate checks these; the launcher gives a worker
    the hub token only when one of them is a hub id."""
    found = [("teacher.name_or_path", config.teacher.name_or_path, MODEL_SUFFIXES, True)]
    if not config.student.init_from_teacher_layers:
        found.append(("student.name_or_path", config.student.name_or_path, MODEL_SUFFIXES, True))
    found += [("data.source", config.data.source, DATA_SUFFIXES, True),
              ("data.validation_source", config.data.validation_source, DATA_SUFFIXES, True)]
    if not config.generation.prompts.startswith(PROJECT_PROMPTS):
        found.append(("generation.prompts", config.generation.prompts, DATA_SUFFIXES, False))
    return found


def is_hub_id(value: str | None, suffixes: tuple[str, ...], defaults_ok: bool = True) -> bool:
    """A reference the loaders send to the hub: not empty, not a `defaults:` name, not a path."""
    value = (value or "").strip()
    return bool(value) and not (defaults_ok and value.startswith(PREFIX)) and "://" not in value \
        and not looks_like_local_path(value, suffixes)


def is_public(host: str, share: bool) -> bool:
    """Whether others can reach the app: a share link, an address beyond this machine, or a Hugging Face
    Space (the platform sets SPACE_ID)."""
    loopback = host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")
    return share or not loopback or bool(os.environ.get("SPACE_ID"))


def _under(resolved: Path, roots: tuple[Path, ...]) -> bool:
    return any(resolved == root or root in resolved.parents for root in roots)


def upload_folders() -> list[Path]:
    """Where Gradio keeps the files browsers upload (GRADIO_TEMP_DIR, else the system temp folder)."""
    return [Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")]


@dataclass(frozen=True)
class Gate:
    roots: tuple[Path, ...]
    runs_dir: Path | None = None          # its RUN/generated/completions.jsonl are allowed in public mode too
    allow_remote_code: bool = False
    key_envs: frozenset[str] = frozenset({"OPENAI_API_KEY"})
    public: bool = False
    max_steps: int | None = None          # public mode: steps per run
    max_jobs_per_session: int | None = None
    max_active_jobs: int | None = None
    max_upload_mb: float | None = None
    uploads: tuple[Path, ...] = field(default=())  # where uploaded files may be picked up from
    # Endpoints a hard-label run may call (--api-base-url, prefixes); empty: any, except that in public
    # mode no key is sent and no address on this machine's networks is called.
    api_base_urls: tuple[str, ...] = ()

    def __post_init__(self):
        # Resolved once: symlinks in a root are followed, as they are in every value checked against it.
        object.__setattr__(self, "roots", tuple(Path(r).expanduser().resolve() for r in self.roots))
        object.__setattr__(self, "uploads", tuple(Path(r).expanduser().resolve() for r in self.uploads))

    @classmethod
    def for_app(cls, runs_dir: Path, defaults_dir: Path, allow_dirs: list[Path] = (), *, public: bool = False,
                allow_remote_code: bool = False, key_envs: list[str] | None = None, upload_dirs: list[Path] = (),
                api_base_urls: list[str] = ()) -> "Gate":
        """key_envs None: OPENAI_API_KEY, or none at all in public mode (a visitor chooses the endpoint)."""
        if key_envs is None:
            key_envs = [] if public else ["OPENAI_API_KEY"]
        runs_dir = Path(runs_dir).resolve()
        app_made = [runs_dir / "uploads", runs_dir / "caches", runs_dir / "datasets"]
        roots = [defaults_dir, *app_made, *allow_dirs] if public else [runs_dir, defaults_dir, *allow_dirs]
        limits = dict(max_steps=PUBLIC_MAX_STEPS, max_jobs_per_session=PUBLIC_MAX_JOBS_PER_SESSION,
                      max_active_jobs=PUBLIC_MAX_ACTIVE_JOBS, max_upload_mb=PUBLIC_MAX_UPLOAD_MB) if public else {}
        # Roots and upload folders are resolved by __post_init__.
        return cls(tuple(roots), runs_dir, allow_remote_code, frozenset(key_envs), public,
                   uploads=(runs_dir / "uploads", *upload_dirs), api_base_urls=tuple(api_base_urls), **limits)

    # -- one reference ----------------------------------------------------------------------------
    def inside(self, value: str) -> bool:
        """Whether a path (symlinks resolved) lies in one of the roots, or is an app-made dataset."""
        if path_problem(value):  # pathlib would raise on it
            return False
        try:
            resolved = Path(value).expanduser().resolve()
        except (OSError, RuntimeError, ValueError):
            return False
        if _under(resolved, self.roots):
            return True
        return (self.runs_dir is not None and resolved.parts[-2:] == GENERATED_FILE
                and resolved.parent.parent.parent == self.runs_dir)

    def path_problem(self, value: str) -> str | None:
        """Why a path may not be used here, or None."""
        if "://" in value:
            return f"{value[:80]!r}: URLs (file://, http://, ...) are not accepted here; give a local path or a hub id"
        if ".." in Path(value).parts:
            return f"{value[:200]}: '..' is not accepted in a path; give it without"
        problem = path_problem(value)
        if problem:
            return problem
        if not self.inside(value):
            mode = " (this app is reachable by others, so only these)" if self.public else ""
            return (f"{value[:200]} is outside the folders this app may read{mode}: "
                    f"{', '.join(str(r) for r in self.roots)}; start the app with --allow-dir to add one")
        return None

    def reference_problem(self, value: str | None, suffixes: tuple[str, ...] = MODEL_SUFFIXES,
                          defaults_ok: bool = True) -> str | None:
        """A model or data reference: empty, a `defaults:` name (where the loaders resolve one: models and
        data.source / validation_source), a hub id, or a path inside the roots."""
        value = (value or "").strip()
        if not value or (defaults_ok and value.startswith(PREFIX)):
            return None
        if not is_hub_id(value, suffixes, defaults_ok):
            return self.path_problem(value)
        if suffixes == DATA_SUFFIXES and value.lower() in file_loader_names():
            return f"{value!r} is a file loader's name, not a hub dataset; give a hub id or an uploaded file"
        return None

    def preview_problem(self, value: str) -> str | None:
        """The temperature preview loads a model into the app process itself: in public mode only the
        offline default or an allowed folder, not any hub checkpoint a visitor names."""
        problem = self.reference_problem(value)
        if problem is None and self.public and is_hub_id(value, MODEL_SUFFIXES):
            return "this app is reachable by others: the preview loads only the offline default or an allowed folder"
        return problem

    # -- a whole config ---------------------------------------------------------------------------
    def config_problems(self, config: DistillConfig) -> list[tuple[str, str]]:
        """Every reference of a config checked, with the fields named: what launching, resuming, starting a
        queued job, inspecting or evaluating a run must pass."""
        problems: list[tuple[str, str]] = []

        def check(name: str, problem: str | None) -> None:
            if problem:
                problems.append((name, problem))

        for name, value, suffixes, defaults_ok in references(config):
            check(name, self.reference_problem(value, suffixes, defaults_ok))
        models = [("teacher", config.teacher)]
        if not config.student.init_from_teacher_layers:
            models.append(("student", config.student))
        for role, spec in models:
            if spec.gguf_file and (Path(spec.gguf_file).name != spec.gguf_file or spec.gguf_file in ("..", ".")):
                check(f"{role}.gguf_file", "must be a file name inside the model folder, without folders")
            if spec.trust_remote_code and not self.allow_remote_code:
                check(f"{role}.trust_remote_code", "this app does not run code shipped with a checkpoint; it runs "
                                                   "it only when started with --trust-remote-code")
        g = config.generation
        if g.dataset:
            check("generation.dataset", self.path_problem(g.dataset))
        if config.loss.teacher_cache:
            check("loss.teacher_cache", self.path_problem(config.loss.teacher_cache))
        if config.strategy == "hard_label" and g.backend == "openai" and not g.dataset:
            problems.extend(self.endpoint_problems(g))
        if self.max_steps is not None and config.train.max_steps > self.max_steps:
            check("train.max_steps", f"this app is reachable by others: at most {self.max_steps} steps per run")
        if self.public:
            for name, cap in PUBLIC_CAPS.items():
                section, key = name.split(".")
                value = getattr(getattr(config, section), key)
                if value is None and name == "generation.max_prompts":  # every prompt of a hub set: unbounded
                    value = 0 if g.prompts.startswith(PROJECT_PROMPTS) or g.dataset else cap + 1
                if value > cap:
                    check(name, f"this app is reachable by others: at most {cap}")
        return problems

    def launch_problems(self, num_processes: int, accelerate_config: str | None) -> list[tuple[str, str]]:
        """How a job is started: in public mode one process and accelerate's own settings (which choose
        launchers, clusters and config files) stay the host's."""
        problems = []
        if accelerate_config:
            if self.public:
                problems.append(("accelerate_config", "this app is reachable by others: the launcher's settings "
                                                      "are its host's"))
            elif problem := self.path_problem(accelerate_config):
                problems.append(("accelerate_config", problem))
        if self.public and num_processes != 1:
            problems.append(("num_processes", "this app is reachable by others: one process per run"))
        return problems

    def endpoint_problems(self, g) -> list[tuple[str, str]]:
        """A hard-label endpoint and the key sent to it: the key only from a variable the host named, and in
        public mode only to an endpoint the host named (or none), never to this machine's own networks."""
        problems = []
        if g.api_key_env and g.api_key_env not in self.key_envs:
            problems.append(("generation.api_key_env", f"{g.api_key_env[:64]} is not a variable this app hands to "
                                                       f"runs; allowed: {', '.join(sorted(self.key_envs)) or 'none'}"
                                                       " (start the app with --api-key-env NAME to add one)"))
        url = g.api_base_url.strip()
        if self.api_base_urls:
            if not any(url.startswith(allowed) for allowed in self.api_base_urls):
                problems.append(("generation.api_base_url", f"this app calls only {', '.join(self.api_base_urls)} "
                                                            "(--api-base-url)"))
        elif self.public:
            if g.api_key_env:
                problems.append(("generation.api_key_env", "this app is reachable by others: a key is sent only to "
                                                           "endpoints its host named with --api-base-url; clear the "
                                                           "field for an endpoint that needs no key"))
            if _internal_host(url):
                problems.append(("generation.api_base_url", "this app is reachable by others: it does not call "
                                                            "addresses on its own machine or private networks"))
        return problems

    def check(self, config: DistillConfig, num_processes: int = 1, accelerate_config: str | None = None
              ) -> DistillConfig:
        """The config, or ConfigError naming every field the gate refuses (with how the job would start)."""
        problems = self.config_problems(config) + self.launch_problems(num_processes, accelerate_config)
        if problems:
            raise ConfigError(problems)
        return config

    def upload_problem(self, value: str) -> str | None:
        """An uploaded file must be one the app received (Gradio's upload folder, or a copy in RUNS/uploads) or
        lie in the allowed folders, not any path a caller names."""
        if problem := path_problem(value):
            return problem
        try:
            resolved = Path(value).resolve()
        except (OSError, RuntimeError, ValueError):
            return "is not a file this app received"
        if _under(resolved, self.uploads) or self.inside(value):
            return None  # a received file, or one in the allowed folders (which any path field may name)
        return f"{Path(value).name} is not a file uploaded to this app"
