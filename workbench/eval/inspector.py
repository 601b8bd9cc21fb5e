"""The inspector as a service: a run's teacher and students loaded once, analyses cached per text (or per
answer a student sampled to a held-out prompt), so the UI's sliders (temperature, position, top-k, step)
never wait for a model. The Chat tab borrows the same loaded models (chat_models). Thread-safe: Gradio runs
handlers in worker threads; the Inspect tab runs its views on the inspector's own single-threaded workers
(on_torch; why in workbench/eval/torch_threads.py)."""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from workbench.config.fields import number_in
from workbench.config.gate import Gate
from workbench.config.schema import DistillConfig
from workbench.data.loading import heldout_dataset, heldout_documents
from workbench.eval.on_policy_measure import (
    ANSWER_TOKENS,
    PROMPT_TOKENS,
    SampledAnswer,
    heldout_prompts,
    sample_answer,
)
from workbench.eval.aligned_tokens import AlignedAnalysis, aligned_trajectory, analyse_aligned
from workbench.eval.pairing import has_local_teacher, is_cross_tokenizer, token_comparable
from workbench.eval.token_stats import MAX_TOKENS, TokenAnalysis, Trajectory, analyse, trajectory
from workbench.eval.torch_threads import Result, TorchPool
from workbench.models.loading import context_length, load_tokenizer, logit_size, shared_logit_size
from workbench.models.students import (
    StudentPoint,
    load_student_at,
    load_teacher_fp32,
    reading_config,
    student_points,
    student_tokenizer,
)
from workbench.models.token_bridge import TokenBridge
from workbench.store.rundir import CONFIG, RunDir, is_run_dir, run_in


class _Lru(OrderedDict):
    """Least recently used entries go first once the summed weight (entries, or bytes) passes `limit`."""

    def __init__(self, limit: int, weigh=lambda value: 1):
        super().__init__()
        self.limit, self.weigh, self.total = limit, weigh, 0

    def put(self, key, value):
        if key in self:
            self.total -= self.weigh(self.pop(key))
        self[key] = value
        self.total += self.weigh(value)
        while self.total > self.limit and len(self) > 1:
            self.total -= self.weigh(self.popitem(last=False)[1])
        return value

    def hit(self, key):
        if key in self:
            self.move_to_end(key)
            return self[key]
        return None


@dataclass(frozen=True)
class ChatModels:
    """What answering a prompt with a run's models needs: its student at one saved point and the tokenizer
    training used; its teacher and the teacher's own tokenizer (None: not asked for, or no checkpoint here,
    as an API teacher); `comparable`: the teacher reads the student's tokens, so it can rate each of them."""
    point: StudentPoint
    student: object
    tokenizer: object
    teacher: object | None
    teacher_tokenizer: object | None
    comparable: bool


def _analysis_bytes(found: TokenAnalysis | AlignedAnalysis) -> int:
    return found.student_logits.nbytes  # its teacher rows are shared, and weighed in the teacher cache


class Inspector:
    def __init__(self, runs_dir: str | Path, max_students: int = 4, max_bytes: int = 2**30, gate: Gate | None = None):
        self.runs_dir = Path(runs_dir).expanduser().resolve()
        self.gate = gate  # a run directory's config passes it before any of its models or data is read
        # _lock guards the caches and is never held while a model loads or runs, so a slider move served
        # from the cache never waits for another session's work; _work runs that work one at a time (it
        # competes for the same cores anyway) and lets a second request find what the first one made.
        self._lock = threading.Lock()
        self._work = threading.RLock()
        self._teachers = _Lru(1)          # one teacher at a time: the biggest model by far
        self._students = _Lru(max_students)
        # Full-vocabulary fp32 logits: ~100 MB per 256-token text at V = 49k, so the caches are capped
        # in bytes; one teacher pass serves every student of a run.
        self._teacher_rows = _Lru(max_bytes // 2, lambda rows: rows.nbytes)
        self._analyses = _Lru(max_bytes, _analysis_bytes)
        # A sampled answer's teacher rows are its own (no other student reads that text): both count.
        self._samples = _Lru(max_bytes // 4, lambda found: 2 * found.analysis.student_logits.nbytes)
        self._texts: dict[str, list[str]] = {}
        self._prompts: dict[str, list[list[int]]] = {}
        self._tokenizers: dict[tuple, object] = {}
        self._crossing: dict[tuple, bool] = {}
        self._bridges: dict[tuple, TokenBridge] = {}
        self._torch = TorchPool("inspect-torch")

    def on_torch(self, fn: Callable[..., Result], *args) -> Result:
        """fn(*args) on one of the inspector's two single-threaded workers; fn must not call on_torch itself."""
        return self._torch.run(fn, *args)

    def run(self, run_id: str) -> tuple[RunDir, DistillConfig]:
        try:
            run = run_in(self.runs_dir, run_id)
        except KeyError:
            run = None
        if run is None or not is_run_dir(run.path) or not run.file(CONFIG).exists():
            raise ValueError(f"run {run_id!r}: no started run of that name in {self.runs_dir}")
        config = DistillConfig.load(run.file(CONFIG))
        if self.gate is not None:
            self.gate.check(config)
        return run, reading_config(run, config)

    def points(self, run_id: str) -> list[StudentPoint]:
        run, config = self.run(run_id)
        return student_points(run, config)

    def tokenizer(self, run_id: str):
        _, config = self.run(run_id)
        return self._tokenizer(config)

    def cross_tokenizer(self, run_id: str) -> bool:
        """Whether the run pairs two tokenizers (loss.cross_tokenizer): its analyses are AlignedAnalysis."""
        _, config = self.run(run_id)
        return self._crosses(config)

    def validation_texts(self, run_id: str) -> list[str]:
        with self._lock:
            if run_id in self._texts:
                return self._texts[run_id]
        _, config = self.run(run_id)
        texts = heldout_documents(config.data, self._tokenizer(config), config.train.seed)
        with self._lock:
            self._texts[run_id] = texts
        return texts

    def heldout_prompts(self, run_id: str) -> list[list[int]]:
        """The held-out prompts the evaluation's on-policy measure answers (token ids)."""
        with self._lock:
            if run_id in self._prompts:
                return self._prompts[run_id]
        _, config = self.run(run_id)
        held = heldout_dataset(config.data, self._tokenizer(config), config.train.seq_len, config.train.seed)
        prompts = heldout_prompts(held, PROMPT_TOKENS) if held is not None else []
        with self._lock:
            self._prompts[run_id] = prompts
        return prompts

    def prompt_texts(self, run_id: str) -> list[str]:
        tokenizer = self.tokenizer(run_id)
        return [tokenizer.decode(prompt) for prompt in self.heldout_prompts(run_id)]

    def analysis(self, run_id: str, key: str, text: str,
                 max_tokens: int = MAX_TOKENS) -> TokenAnalysis | AlignedAnalysis:
        run, config = self.run(run_id)
        return self._analysis(run_id, config, _point(run, config, key), text, max_tokens)

    def sampled(self, run_id: str, key: str, prompt: int, seed: int) -> SampledAnswer:
        """The student at `key` answers held-out prompt number `prompt` (T = 1, seeded), both models read
        prompt + answer; cached, so sliders re-read it. Prompt and answer fit in MAX_TOKENS together."""
        run, config = self.run(run_id)
        if self._crosses(config):
            raise ValueError("Sample: the teacher rates each token the student chose, which needs one tokenizer; "
                             "this run's teacher reads other tokens (inspect a text instead)")
        point = _point(run, config, key)
        prompts = self.heldout_prompts(run_id)
        index, seed = whole(prompt, "prompt", len(prompts)), whole(seed, "seed", 2**32)
        new_tokens = min(ANSWER_TOKENS, MAX_TOKENS // 2)
        ids = prompts[index][-(MAX_TOKENS - new_tokens):]

        def make() -> SampledAnswer:
            teacher = self._teacher(config)
            return sample_answer(teacher, self._student(run_id, config, point, teacher), self._tokenizer(config),
                                 ids, new_tokens, seed)

        return self._cached(self._samples, (run_id, point.key, _stamp(point), index, seed), make)

    def chat_models(self, run_id: str, key: str, with_teacher: bool = True) -> ChatModels:
        """The run's student at `key` and (`with_teacher`) its teacher, loaded once and shared with the other
        views. Unlike the views of a text, a hard-label teacher with another tokenizer is given too: it can
        still answer beside the student, only not rate the student's tokens (`comparable` False)."""
        run, config = self.run(run_id)
        point = _point(run, config, key)
        teacher = teacher_tokenizer = None
        if with_teacher and has_local_teacher(config):
            teacher = self._cached(self._teachers, _teacher_key(config), lambda: load_teacher_fp32(config))
            teacher_tokenizer = self._tokenizer_of(_teacher_key(config),
                                                   lambda: load_tokenizer(config.teacher, "teacher"))
        comparable = teacher is not None and not self._crosses(config) and token_comparable(config)
        return ChatModels(point, self._student(run_id, config, point, teacher), self._tokenizer(config), teacher,
                          teacher_tokenizer, comparable)

    def trajectory(self, run_id: str, text: str, position: int, temperature: float, k: int = 5,
                   max_tokens: int = MAX_TOKENS) -> Trajectory:
        """One position's student distribution at every saved point of the run, vs the teacher's."""
        run, config = self.run(run_id)
        if self._crosses(config):
            found = [(point.step, self._analysis(run_id, config, point, text, max_tokens))
                     for point in student_points(run, config)]
            return aligned_trajectory(found, position, temperature, k)
        rows = []
        for point in student_points(run, config):
            found = self._analysis(run_id, config, point, text, max_tokens)
            if not 0 <= position < len(found):
                raise ValueError(f"position must be in [0, {len(found) - 1}], got {position}")
            rows.append((point.step, found.student_logits[position]))
        return trajectory(found.teacher_logits[position], rows, self._tokenizer(config), temperature, k)

    def _cached(self, cache: _Lru, key, make):
        """cache[key], made by `make()` under _work if missing; a hit never waits for _work, and a
        second request for the same key finds what the first one made."""
        with self._lock:
            found = cache.hit(key)
        if found is not None:
            return found
        with self._work:
            with self._lock:
                found = cache.hit(key)
            if found is None:
                found = make()
                with self._lock:
                    cache.put(key, found)
            return found

    def _analysis(self, run_id: str, config: DistillConfig, point: StudentPoint, text: str,
                  max_tokens: int) -> TokenAnalysis | AlignedAnalysis:
        def make() -> TokenAnalysis | AlignedAnalysis:
            teacher = self._teacher(config)
            student = self._student(run_id, config, point, teacher)
            if self._crosses(config):
                return make_aligned(teacher, student)
            rows_key = (_teacher_key(config), text, max_tokens, shared_logit_size(teacher, student))
            with self._lock:
                rows = self._teacher_rows.hit(rows_key)
            found = analyse(teacher, student, self._tokenizer(config), text, max_tokens, rows)
            with self._lock:
                self._teacher_rows.put(rows_key, found.teacher_logits)
            return found

        def make_aligned(teacher, student) -> AlignedAnalysis:
            bridge = self._bridge(config, teacher, student)
            # The teacher's rows follow the student tokenizer's alignment: one per run, like its tokenizer.
            rows_key = (_teacher_key(config), _student_key(config), text, max_tokens, bridge.teacher_vocab)
            with self._lock:
                rows = self._teacher_rows.hit(rows_key)
            found = analyse_aligned(teacher, student, bridge, text, max_tokens, rows)
            with self._lock:
                self._teacher_rows.put(rows_key, found.teacher_logits)
            return found

        return self._cached(self._analyses, (run_id, point.key, _stamp(point), text, max_tokens), make)

    def _crosses(self, config: DistillConfig) -> bool:
        """A cross-tokenizer run whose teacher reads other tokens than its student (a cross-tokenizer run
        with one tokenizer is inspected token by token, as any other)."""
        if config.loss.cross_tokenizer == "off":
            return False
        key = (_teacher_key(config), _student_key(config))
        with self._lock:
            found = self._crossing.get(key)
        if found is None:
            found = is_cross_tokenizer(config)  # loads and hashes both tokenizers: once per pair
            with self._lock:
                self._crossing[key] = found
        return found

    def _bridge(self, config: DistillConfig, teacher, student) -> TokenBridge:
        """The run's two tokenizers over the logits each model has, as training and evaluation built it."""
        key = (_teacher_key(config), _student_key(config), logit_size(student), logit_size(teacher))
        with self._lock:
            found = self._bridges.get(key)
        if found is None:
            found = TokenBridge(self._tokenizer(config), load_tokenizer(config.teacher, "teacher"),
                                logit_size(student), logit_size(teacher), context_length(teacher))
            with self._lock:
                self._bridges[key] = found
        return found

    def _student(self, run_id: str, config: DistillConfig, point: StudentPoint, teacher):
        return self._cached(self._students, (run_id, point.key, _stamp(point)),
                            lambda: load_student_at(config, point, teacher=teacher))

    def _teacher(self, config: DistillConfig):
        if not self._crosses(config) and not token_comparable(config):
            raise ValueError("the inspector compares teacher and student token by token, which needs one "
                             "tokenizer and a local teacher; this hard-label run's teacher has neither "
                             "(its completions are the data: see the run's generated dataset)")
        return self._cached(self._teachers, _teacher_key(config), lambda: load_teacher_fp32(config))

    def _tokenizer(self, config: DistillConfig):
        """The tokenizer training used (soft-label runs were checked for one vocabulary)."""
        return self._tokenizer_of(_student_key(config), lambda: student_tokenizer(config))

    def _tokenizer_of(self, key: tuple, load):
        """The tokenizer of the checkpoint `key` names, loaded once (a pruned student's is its teacher's)."""
        with self._lock:
            found = self._tokenizers.get(key)
        if found is None:
            found = load()
            with self._lock:
                self._tokenizers[key] = found
        return found


def _point(run: RunDir, config: DistillConfig, key: str) -> StudentPoint:
    for point in student_points(run, config):
        if point.key == key:
            return point
    raise ValueError(f"run {run.path.name!r} has no student {key!r} (a checkpoint may have been rotated away)")


def whole(value, name: str, limit: int) -> int:
    """`value` as an index in [0, limit): a handler is an HTTP endpoint, so it may be anything."""
    if limit < 1:
        raise ValueError(f"{name}: the run has no held-out prompts")
    return number_in(value, name, 0, limit - 1, whole=True)


def _teacher_key(config: DistillConfig) -> tuple:
    return config.teacher.name_or_path, config.teacher.revision, config.teacher.gguf_file


def _student_key(config: DistillConfig) -> tuple:
    """Where the tokenizer training used comes from (the teacher's, for a student pruned from it)."""
    spec = config.teacher if config.student.init_from_teacher_layers else config.student
    return spec.name_or_path, spec.revision, spec.gguf_file


def _stamp(point: StudentPoint) -> int:
    """Changes when the student's files are rewritten (a resumed run saving a new final student)."""
    if point.path is None:
        return 0
    try:
        return max((p.stat().st_mtime_ns for p in point.path.iterdir()), default=0)
    except FileNotFoundError:
        return -1
