"""DistillConfig: everything a distillation run needs, as typed sections with help text.

The UI form, the CLI and YAML files all produce this one object; `validate()` refuses bad values
with a ConfigError that names the field, the value and the allowed range.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from workbench.config.fields import (
    ConfigError,
    apply_overrides,
    check_fields,
    dump,
    from_dict,
    knob,
    load_mapping,
    show,
    to_dict,
)
from workbench.config.paths import path_problem
from workbench.config.strategy_sections import (
    CORPUS_PROMPTS,
    AttentionSpec,
    CoDistillSpec,
    GenerationSpec,
    HiddenSpec,
    OnPolicySpec,
    parse_pair,
)

DTYPES = ("auto", "float32", "bfloat16", "float16")
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd")
STRATEGIES = ("soft_label", "hard_label", "co_distillation", "hidden_state", "attention", "on_policy")
ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")
DATA_FORMATS = ("auto", "text", "chat", "prompt_completion")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
NONFINITE = ("stop", "skip")
CROSS_TOKENIZER = ("off", "uld", "hybrid")
# Runs of at least this many steps get held-out evaluations between the first and the last by default.
AUTO_EVAL_MIN_STEPS = 100
# Fields that may name a file or folder: each must be a path the system can look up (paths.path_problem).
PATH_FIELDS = ("teacher.name_or_path", "student.name_or_path", "teacher.gguf_file", "student.gguf_file", "data.source",
               "data.validation_source", "generation.prompts", "generation.dataset", "on_policy.prompts", "loss.teacher_cache",
               "output.runs_dir", "output.run_name", "evaluation.ood_source")


@dataclass
class ModelSpec:
    name_or_path: str = knob("", "Hub model id (org/name) or a local folder holding a transformers checkpoint")
    revision: str | None = knob(None, "Hub revision (branch, tag or commit); ignored for local folders")
    dtype: str = knob("auto", "Weights dtype; auto = bfloat16 when training in bf16, else float32", choices=DTYPES)
    trust_remote_code: bool = knob(False, "Run model code shipped with the checkpoint; only for sources you trust")
    gguf_file: str | None = knob(None, "File name of a GGUF checkpoint inside the folder (dequantized on load)")


@dataclass
class LoraSpec:
    enabled: bool = knob(False, "Train low-rank adapters instead of all student weights (peft)")
    r: int = knob(16, "Adapter rank", low=1, high=1024)
    alpha: float = knob(32.0, "Adapter scaling numerator (lora_alpha)", low=0, high=1e6, low_open=True)
    dropout: float = knob(0.05, "Dropout on the adapter input", low=0, high=1, high_open=True)
    target_modules: list[str] = knob(help="Module names to adapt, or all-linear",
                                     default_factory=lambda: ["all-linear"])


@dataclass
class StudentSpec(ModelSpec):
    lora: LoraSpec = knob(help="LoRA adapters on the student", default_factory=LoraSpec)
    init_from_teacher_layers: int = knob(0, "If > 0: the student is the teacher with this many decoder layers "
                                            "kept (evenly spaced, weights copied); name_or_path is then unused",
                                         low=0, high=1024)


@dataclass
class DataSpec:
    source: str = knob("", "A local .txt/.jsonl/.json/.csv/.parquet file, or a hub dataset id")
    hub_config: str | None = knob(None, "Dataset configuration name, for hub datasets that have several")
    split: str = knob("train", "Split to train on")
    validation_source: str | None = knob(None, "Separate file or hub id for held-out text (else split off)")
    validation_split: str | None = knob(None, "Split name of held-out text in the same dataset, e.g. validation")
    validation_fraction: float = knob(0.05, "Fraction of documents held out when no validation data is given",
                                      low=0, high=0.5)
    format: str = knob("auto", "auto picks chat (messages), prompt_completion, or a text column", choices=DATA_FORMATS)
    text_column: str = knob("text", "Column holding the text, for format text")
    messages_column: str = knob("messages", "Column holding chat messages [{role, content}], for format chat")
    packing: bool = knob(True, "Concatenate documents into full seq_len blocks (general distillation); "
                               "off = one padded example per row with label masks (task data)")
    max_examples: int | None = knob(None, "Use at most this many training rows", low=1, high=2**31 - 1)
    max_eval_examples: int | None = knob(256, "Evaluate on at most this many held-out blocks/rows", low=1,
                                         high=2**31 - 1)
    max_file_mb: float = knob(1024.0, "Refuse local files larger than this many MiB", low=0, high=10_000_000,
                              low_open=True)


@dataclass
class LossSpec:
    divergence: str = knob("forward_kl", "How the student's distribution is compared with the teacher's",
                           choices=DIVERGENCES)
    alpha: float = knob(0.5, "Weight of the ground-truth cross-entropy; total = alpha*CE + (1-alpha)*KD",
                        low=0, high=1)
    temperature: float = knob(1.0, "Softmax temperature T for both models; KL-type terms are scaled by T^2",
                              low=0, high=100, low_open=True)
    beta: float = knob(0.5, "JSD mixture weight: 0 = forward KL, 1 = reverse KL, 0.5 = symmetric JSD",
                       low=0, high=1)
    skew_lambda: float = knob(0.1, "Skew KL mixing lambda (DistiLLM): KL(p || lambda*p + (1-lambda)*q)",
                              low=0, high=1)
    teacher_cache: str | None = knob(None, "A teacher cache folder (python -m workbench cache): the KD term "
                                           "reads the teacher's stored top-k log-probabilities and the teacher "
                                           "is not run during training")
    build_teacher_cache: bool = knob(False, "Build the teacher cache first if loss.teacher_cache holds no complete "
                                            "one for this run's tokenizer and data (at k = 32; the cache panel "
                                            "builds other k), then train from it: later runs, a rerun and a "
                                            "study's runs on the same data reuse that one teacher pass. A cache "
                                            "there for other data is an error, never overwritten")
    reuse_teacher: bool = knob(False, "Keep the teacher's rows (k = 32: its top 24 tokens and 8 drawn from its "
                                      "tail, 130 bytes a token) of each training block the first time any run "
                                      "reads it, in the app's cache folder, and read them instead of running the "
                                      "teacher in every later run of the same teacher and data: a rerun, a "
                                      "study, a sweep of alpha or T. Runs train on the stored rows either way "
                                      "(+0.9% held-out KL against the live teacher, measured). The teacher's "
                                      "last hidden states over the held-out and out-of-domain text are kept "
                                      "too: evaluations compare with the exact teacher, and run only its head. "
                                      "Applies to soft_label on one vocabulary with packed data and no "
                                      "loss.teacher_cache; elsewhere the teacher runs live")
    cross_tokenizer: str = knob("off", "A teacher with another tokenizer: uld = compare the two sorted "
                                       "probability vectors at positions where both have read the same text "
                                       "(Universal Logit Distillation); hybrid = tokens with the same text in "
                                       "both vocabularies compared directly, the rest by ULD; replaces the "
                                       "divergence; off = one vocabulary, compared token by token",
                                choices=CROSS_TOKENIZER)
    chunk_size: int = knob(128, "Positions per chunk when the loss is computed fused with the LM heads, so "
                                 "full-vocabulary logits of the whole batch never exist at once (same loss "
                                 "and gradients); 0 = the plain loss on full logits", low=0, high=1_000_000)


@dataclass
class TrainSpec:
    max_steps: int = knob(100, "Optimizer steps to train", low=1, high=10_000_000)
    batch_size: int = knob(8, "Sequences per device per micro-batch", low=1, high=65536)
    grad_accum: int = knob(1, "Micro-batches accumulated per optimizer step", low=1, high=4096)
    lr: float = knob(5e-5, "Peak learning rate", low=0, high=1, low_open=True)
    warmup_steps: int = knob(0, "Linear warm-up steps", low=0, high=10_000_000)
    lr_scheduler: str = knob("cosine", "Learning-rate schedule after warm-up", choices=SCHEDULERS)
    weight_decay: float = knob(0.0, "AdamW weight decay", low=0, high=1)
    max_grad_norm: float = knob(1.0, "Gradient clipping norm (0 = off)", low=0, high=1e6)
    seq_len: int = knob(256, "Tokens per sequence", low=8, high=131072)
    seed: int = knob(42, "Seed for data order, initialisation and sampling", low=0, high=2**32 - 1)
    bf16: str = knob("auto", "bf16 mixed precision: auto = on where the GPU supports it, off on CPU; native = on "
                             "where the hardware multiplies bf16 (that GPU, or a CPU with AVX512-BF16 or AMX: "
                             "1.4-1.7x faster there), else off (emulated bf16 is ~100x slower)",
                     choices=("auto", "native", "on", "off"))
    gradient_checkpointing: bool = knob(False, "Recompute activations in backward to save memory")
    torch_compile: bool = knob(False, "Compile the student with torch.compile: the first steps are slower while it "
                                      "compiles; it can pay on long runs (benchmarks/strategy_steps.py --settings "
                                      "soft_label,compiled measures it)")
    logging_steps: int = knob(10, "Log metrics every N steps", low=1, high=10_000_000)
    eval_steps: int | None = knob(None, "Evaluate on held-out data every N steps, besides before training and at "
                                        "the end (0 = only those two); empty = 4 times a run of 100 steps or "
                                        "more (every max_steps / 4 rounded up, the last at the end), else only "
                                        "those two",
                                  low=0, high=10_000_000)
    save_steps: int = knob(100, "Save a resumable checkpoint every N steps", low=1, high=10_000_000)
    save_total_limit: int = knob(2, "Keep at most this many checkpoints", low=1, high=10_000)
    on_nonfinite: str = knob("stop", "A step whose loss, a loss term or the gradient is NaN or inf: stop = the run "
                                     "fails naming the step and the term, before the update (checkpoints stay "
                                     "finite and resume continues from the last); skip = the step makes no "
                                     "update and is counted (nonfinite_skipped in the metrics)",
                             choices=NONFINITE)
    max_skipped_steps: int = knob(10, "With on_nonfinite skip: the run fails once more steps than this were skipped",
                                  low=0, high=10_000_000)

    def eval_interval(self) -> int:
        """Steps between held-out evaluations during training (0: none between the first and the last). A
        short run gets none: its evaluations would cost more than its training. Rounded up, so the fourth is
        the one at the end (150 steps: 38, 76, 114, 150), not a fifth two steps before it."""
        if self.eval_steps is not None:
            return self.eval_steps
        return -(-self.max_steps // 4) if self.max_steps >= AUTO_EVAL_MIN_STEPS else 0


DEFAULT_PROMPTS = ["In the beginning", "The best way to learn a new language is", "Once upon a time, there was"]


@dataclass
class EvalSpec:
    at_end: bool = knob(True, "Evaluate the final student when training ends (perplexity, agreement with the "
                              "teacher, KL, calibration, speed, generations); any checkpoint can also be "
                              "evaluated later")
    speed: bool = knob(True, "Measure forward tokens/s and generation ms/token of teacher and student")
    prompts: list[str] = knob(help="Prompts that teacher and student continue side by side",
                              default_factory=lambda: list(DEFAULT_PROMPTS))
    max_new_tokens: int = knob(40, "Tokens each model generates per prompt (greedy); 0 = no generations",
                               low=0, high=2048)
    ood_source: str | None = knob(None, "Out-of-domain text, of another kind than the training data: a local "
                                        ".txt/.jsonl/.json/.csv/.parquet file (as data.source) or a hub dataset id "
                                        "(its train split). Every evaluation measures it beside the held-out text, "
                                        "built and capped the same way (data.max_eval_examples), as ood_* numbers; "
                                        "defaults:corpus/ood.jsonl is a public-domain novel. Unset or empty: none")


@dataclass
class OutputSpec:
    runs_dir: str = knob("runs", "Folder that holds one run directory per run")
    run_name: str | None = knob(None, "Run directory name (default: time stamp and strategy)")
    study: str | None = knob(None, "The study this run belongs to (set by the study that queued it)")


@dataclass
class DistillConfig:
    teacher: ModelSpec = knob(help="The model distilled from (frozen)", default_factory=ModelSpec)
    student: StudentSpec = knob(help="The model trained", default_factory=StudentSpec)
    data: DataSpec = knob(help="Training and held-out text", default_factory=DataSpec)
    strategy: str = knob("soft_label", "How a batch becomes loss terms", choices=STRATEGIES)
    loss: LossSpec = knob(help="Divergence and its knobs", default_factory=LossSpec)
    generation: GenerationSpec = knob(help="How the teacher writes the data, for strategy hard_label",
                                      default_factory=GenerationSpec)
    co_distillation: CoDistillSpec = knob(help="Teacher and student trained together, for strategy co_distillation",
                                          default_factory=CoDistillSpec)
    hidden: HiddenSpec = knob(help="Hidden-state matching, for strategy hidden_state", default_factory=HiddenSpec)
    attention: AttentionSpec = knob(help="Attention transfer, for strategy attention", default_factory=AttentionSpec)
    on_policy: OnPolicySpec = knob(help="The student learns from the teacher's judgement of its own samples, for "
                                        "strategy on_policy", default_factory=OnPolicySpec)
    train: TrainSpec = knob(help="Optimisation and logging", default_factory=TrainSpec)
    evaluation: EvalSpec = knob(help="What is measured once a student is trained", default_factory=EvalSpec)
    output: OutputSpec = knob(help="Where results go", default_factory=OutputSpec)

    def validate(self) -> "DistillConfig":
        problems = check_fields(self)
        hard = self.strategy == "hard_label"
        for name in ("teacher", "student"):
            if name == "student" and self.student.init_from_teacher_layers:
                continue
            if name == "teacher" and hard and not self.teacher_model_needed():
                continue
            if not getattr(self, name).name_or_path.strip():
                problems.append((f"{name}.name_or_path", "is required: a hub id or a local folder"))
        if hard:
            problems.extend(self.generation_problems())
        elif not self.data.source.strip():
            problems.append(("data.source", "is required: a local file or a hub dataset id"))
        if self.student.lora.enabled and not self.student.lora.target_modules:
            problems.append(("student.lora.target_modules", "must name at least one module when LoRA is on"))
        if self.output.run_name is not None and (not self.output.run_name.strip()
                                                 or any(c in self.output.run_name for c in "/\\")
                                                 or self.output.run_name in (".", "..")):
            problems.append(("output.run_name", f"{show(self.output.run_name)} must be a plain folder name"))
        if self.strategy in ("co_distillation", "hidden_state") and self.student.lora.enabled:
            problems.append(("student.lora.enabled", f"{self.strategy} trains other weights beside the student, "
                                                     "which LoRA runs do not support yet; turn LoRA off"))
        if self.loss.teacher_cache and self.strategy != "soft_label" and not hard:
            problems.append(("loss.teacher_cache", f"{self.strategy} needs the live teacher; only soft_label reads "
                                                   "a teacher cache"))
        if self.loss.build_teacher_cache and (self.strategy != "soft_label" or not self.loss.teacher_cache):
            problems.append(("loss.build_teacher_cache", "builds the folder loss.teacher_cache names, which only "
                                                         "soft_label reads: choose soft_label and set "
                                                         "loss.teacher_cache, or turn this off"))
        if self.strategy == "on_policy":
            problems.extend(self.on_policy_problems())
        if self.loss.cross_tokenizer != "off" and self.strategy != "soft_label":
            problems.append(("loss.cross_tokenizer", f"{self.strategy} compares the models token by token; "
                                                     "cross-tokenizer KD is for soft_label (hard_label already "
                                                     "pairs any two tokenizers)"))
        elif self.loss.cross_tokenizer != "off" and self.loss.teacher_cache:
            problems.append(("loss.cross_tokenizer", "a teacher cache holds the teacher's distributions over the "
                                                     "student's tokens; cross-tokenizer KD runs the live teacher, "
                                                     "so clear loss.teacher_cache"))
        for section in ("hidden", "attention"):
            for i, pair in enumerate(getattr(self, section).layer_map):
                if parse_pair(pair) is None:
                    problems.append((f"{section}.layer_map[{i}]", f"{show(pair)} must be STUDENT:TEACHER layer "
                                                                  "numbers, e.g. 1:3"))
        named = {name for name, _ in problems}
        for name in PATH_FIELDS:
            section, key = name.split(".")
            value = getattr(getattr(self, section), key)
            if name not in named and isinstance(value, str) and (problem := path_problem(value)):
                problems.append((name, problem))
        if problems:
            raise ConfigError(problems)
        return self

    def effective_loss(self) -> LossSpec:
        """The loss settings the run trains with: the loss section's, except that on_policy brings its own
        α, T and β (a JSD)."""
        return self.on_policy.loss_spec(self.loss) if self.strategy == "on_policy" else self.loss

    def teacher_model_needed(self) -> bool:
        """Whether the teacher checkpoint is used: always, except by a hard-label run whose data an
        endpoint writes or an earlier run wrote (a pruned student still needs it to be cut from)."""
        g = self.generation
        return (self.strategy != "hard_label" or self.student.init_from_teacher_layers > 0
                or (g.backend == "local" and not g.dataset))

    def reuses_teacher_rows(self) -> bool:
        """Whether loss.reuse_teacher applies: soft_label on one vocabulary and packed blocks, with KD weight
        and no teacher cache named (the run then reads and writes the kept rows, engine/teacher_rows.py)."""
        return (self.loss.reuse_teacher and self.strategy == "soft_label" and self.loss.alpha < 1
                and not self.loss.teacher_cache and self.loss.cross_tokenizer == "off" and self.data.packing)

    def needs_shared_vocab(self) -> bool:
        """Whether teacher and student must read the same tokens: every strategy but hard-label compares
        their distributions or states position by position; hard-label trains on the teacher's text and
        pairs any two tokenizers, and soft-label with loss.cross_tokenizer aligns two tokenizers."""
        return self.strategy != "hard_label" and self.loss.cross_tokenizer == "off"

    def on_policy_problems(self) -> list[tuple[str, str]]:
        o, problems = self.on_policy, []
        if not o.prompts.strip():
            problems.append(("on_policy.prompts", "is required: corpus, a prompt file, a hub dataset id, or "
                                                  "project:instructions"))
        elif o.prompts.strip() != CORPUS_PROMPTS and o.lmbda < 1 and not o.seq_kd:
            problems.append(("on_policy.lmbda", f"{o.lmbda:g} leaves off-policy steps, but a prompt set has no "
                                                "reference completions: set lmbda to 1, turn on_policy.seq_kd on "
                                                "(the teacher writes them), or use on_policy.prompts: corpus"))
        return problems

    def generation_problems(self) -> list[tuple[str, str]]:
        g, problems = self.generation, []
        if self.loss.teacher_cache:
            problems.append(("loss.teacher_cache", "hard-label training reads the teacher's text, not its logits; "
                                                   "unset the cache"))
        if g.dataset is not None and not g.dataset.strip():
            problems.append(("generation.dataset", "is empty; name a completions file or leave it unset"))
        if g.dataset or g.backend == "local":
            return problems
        try:
            url = urlsplit(g.api_base_url.strip())
            url.port  # noqa: B018 - a port that is not a number raises here, not later in the client
        except ValueError:
            problems.append(("generation.api_base_url", f"{show(g.api_base_url)} is not a URL, e.g. "
                                                        "http://127.0.0.1:8000/v1"))
            return problems
        if url.scheme not in ("http", "https") or not url.hostname:
            problems.append(("generation.api_base_url", f"{show(g.api_base_url)} must be an http(s) URL, e.g. "
                                                        "http://127.0.0.1:8000/v1"))
        elif url.username or url.password or url.query:
            # The URL is written into every row's provenance: a credential in it would be stored.
            problems.append(("generation.api_base_url", "must not carry credentials (user:password@ or ?key=); "
                                                        "put the key in the variable generation.api_key_env names"))
        if not g.api_model.strip():
            problems.append(("generation.api_model", "is required for the openai backend: the model the endpoint "
                                                     "serves"))
        if g.api_key_env and not ENV_NAME.fullmatch(g.api_key_env):
            # Not echoed: a key pasted here by mistake must not reach an error message, a log or the UI.
            problems.append(("generation.api_key_env", "must be the NAME of an environment variable (capital "
                                                       "letters, digits and _, e.g. OPENAI_API_KEY), not the key "
                                                       "itself"))
        return problems

    @classmethod
    def from_dict(cls, data: dict) -> "DistillConfig":
        return from_dict(cls, data).validate()

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] = ()) -> "DistillConfig":
        """Read YAML or JSON, apply `key.path=value` overrides, validate."""
        return cls.from_dict(apply_overrides(load_mapping(path), list(overrides)))

    def save(self, path: str | Path) -> Path:
        return dump(self, path)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def replace(self, **sections: Any) -> "DistillConfig":
        return dataclasses.replace(self, **sections).validate()
