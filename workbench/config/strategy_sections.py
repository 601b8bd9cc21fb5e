"""The config sections that belong to one strategy each: hard-label's generation, co-distillation, hidden-state
matching, attention transfer and on-policy distillation. workbench/config/schema.py assembles them into
DistillConfig beside the sections every run has; each shows in the Set-up form only for its strategy.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from workbench.config.fields import knob

SCHEDULES = ("linear", "cosine")
BACKENDS = ("local", "openai")


@dataclass
class GenerationSpec:
    """Hard-label stage 1: the teacher writes completions for a prompt set; the student is then
    fine-tuned on them (loss on completion tokens only)."""
    prompts: str = knob("project:instructions", "Prompts the teacher answers: a .jsonl/.json/.csv/.parquet file with "
                                                "a prompt column or chat messages, a hub dataset id, or "
                                                "project:instructions (the project's own 120 instructions)")
    prompt_column: str = knob("prompt", "Column holding the prompt text (a messages column is used when present)")
    split: str = knob("train", "Split of a hub prompt dataset")
    max_prompts: int | None = knob(None, "Answer at most this many prompts", low=1, high=10_000_000)
    backend: str = knob("local", "local = the teacher checkpoint generates here; openai = any OpenAI-compatible "
                                 "chat-completions endpoint (a black-box teacher)", choices=BACKENDS)
    api_base_url: str = knob("", "Endpoint base URL for the openai backend, e.g. http://127.0.0.1:8000/v1")
    api_model: str = knob("", "Model name the endpoint serves, for the openai backend")
    api_key_env: str = knob("OPENAI_API_KEY", "Name of the environment variable holding the API key (the key "
                                              "itself is never written to the config, logs or the store); empty "
                                              "for endpoints that need none")
    concurrency: int = knob(4, "Requests in flight at once, for the openai backend", low=1, high=256)
    max_retries: int = knob(5, "Retries per request on 429, 5xx and timeouts (exponential backoff)", low=0, high=100)
    timeout_s: float = knob(120.0, "Seconds before one request times out", low=0, high=3600, low_open=True)
    temperature: float = knob(0.7, "Sampling temperature of the teacher; 0 = greedy", low=0, high=10)
    top_p: float = knob(0.95, "Nucleus sampling: keep the smallest token set with this much mass", low=0, high=1,
                        low_open=True)
    max_new_tokens: int = knob(128, "Longest completion, in teacher tokens", low=1, high=32768)
    samples_per_prompt: int = knob(1, "Completions the teacher writes per prompt", low=1, high=64)
    seed: int = knob(0, "Sampling seed: the same seed writes the same completions", low=0, high=2**31 - 1)
    batch_size: int = knob(8, "Prompts generated together by a local teacher (left-padded)", low=1, high=4096)
    dataset: str | None = knob(None, "A completions file an earlier run generated (RUN/generated/completions.jsonl) "
                                     "to train on instead of generating")


def parse_pair(text: str) -> tuple[int, int] | None:
    """'1:3' -> (1, 3): student layer 1 matched with teacher layer 3; None if malformed."""
    parts = str(text).split(":")
    # ASCII digits only: '²'.isdigit() is true, and int('²') raises.
    if len(parts) != 2 or not all(re.fullmatch(r"[0-9]{1,6}", p.strip()) for p in parts):
        return None
    return int(parts[0]), int(parts[1])


@dataclass
class CoDistillSpec:
    """Co-distillation: teacher and student train together on the same batches. The teacher learns the
    labels (CE); the student mixes CE with the live teacher's soft labels, α moving from alpha_start
    (the teacher is noise at first, so CE carries the student) to alpha_end over the warm-up."""
    teacher_lr: float = knob(5e-5, "Peak learning rate of the teacher (the student uses train.lr)", low=0, high=1,
                             low_open=True)
    alpha_start: float = knob(1.0, "The student's CE weight at step 0", low=0, high=1)
    alpha_end: float = knob(0.5, "The student's CE weight once the warm-up is over", low=0, high=1)
    alpha_warmup_steps: int = knob(100, "Steps over which α moves from alpha_start to alpha_end", low=0,
                                   high=10_000_000)
    alpha_schedule: str = knob("linear", "Shape of α's move", choices=SCHEDULES)
    mutual: bool = knob(False, "Deep mutual learning: the teacher also learns from the student's soft labels")
    mutual_weight: float = knob(0.5, "Weight of the teacher's KD term from the student, in mutual mode", low=0,
                                high=100)


@dataclass
class HiddenSpec:
    layer_map: list[str] = knob(help="Student:teacher decoder-layer pairs such as 0:1, 1:3 (0-based); empty = "
                                     "evenly spaced (each student layer to the teacher layer at the same relative "
                                     "depth; a pruned student's own source layers)", default_factory=list)
    loss: str = knob("mse", "How mapped hidden states are compared", choices=("mse", "cosine"))
    weight: float = knob(1.0, "Weight of the hidden-state term, added to α·CE + (1−α)·KD", low=0, high=1000)


@dataclass
class AttentionSpec:
    layer_map: list[str] = knob(help="Student:teacher decoder-layer pairs, as hidden.layer_map; empty = evenly "
                                     "spaced", default_factory=list)
    loss: str = knob("kl", "How attention distributions are compared: KL(teacher ‖ student) per query row, or "
                           "MSE of the probabilities", choices=("kl", "mse"))
    heads: str = knob("average", "average = mean over each model's heads; map = teacher heads averaged in groups "
                                 "onto the student's heads (teacher heads a multiple of student heads)",
                      choices=("average", "map"))
    weight: float = knob(1.0, "Weight of the attention term, added to α·CE + (1−α)·KD", low=0, high=1000)


CORPUS_PROMPTS = "corpus"
# The loss settings on-policy brings instead of the loss section's: LossSpec field -> OnPolicySpec field
# (the divergence is always jsd, with beta). The store reads run configs through this too.
ON_POLICY_LOSS = {"alpha": "alpha", "temperature": "loss_temperature", "beta": "beta"}


@dataclass
class OnPolicySpec:
    """On-policy distillation (GKD, Agarwal et al. 2024): the student samples completions for prompts, the
    teacher scores every sampled token, and the student minimises the divergence on its own samples, so it
    learns to recover from its own mistakes. The loss is α·CE (reference completions only) + (1−α)·T²·JSD_β
    on completion tokens, normalised per completion token over the accumulated batch."""
    prompts: str = knob(CORPUS_PROMPTS, "Where prompts come from: corpus = the first prompt_tokens tokens of each "
                                        "training block of data.source (its next tokens are the reference "
                                        "completion); or, as for hard-label, a .jsonl/.json/.csv/.parquet file "
                                        "with a prompt column or chat messages, a hub dataset id, or "
                                        "project:instructions (no reference completions)")
    prompt_column: str = knob("prompt", "Column holding the prompt text, for a prompt file or hub dataset")
    split: str = knob("train", "Split of a hub prompt dataset")
    max_prompts: int | None = knob(None, "Use at most this many prompts", low=1, high=10_000_000)
    prompt_tokens: int = knob(32, "Prompt length in tokens, for corpus prompts", low=1, high=131072)
    lmbda: float = knob(0.5, "Probability that a step's completions are sampled from the student (on-policy); "
                             "the other steps train on the reference completions, or the teacher's with seq_kd",
                        low=0, high=1)
    seq_kd: bool = knob(False, "Off-policy steps train on completions the teacher samples (sequence-level KD) "
                               "instead of the data's own")
    beta: float = knob(1.0, "Generalized JSD weight: 0 = forward KL(teacher ‖ student), 1 = reverse KL "
                            "(student ‖ teacher, mode-seeking: GKD's default here), between: the mixture JSD",
                       low=0, high=1)
    temperature: float = knob(1.0, "Sampling temperature of the student (and of the teacher with seq_kd); "
                                   "0 = greedy", low=0, high=10)
    top_p: float = knob(1.0, "Nucleus sampling: keep the smallest token set with this much mass", low=0, high=1,
                        low_open=True)
    max_new_tokens: int = knob(32, "Longest sampled completion, in tokens", low=1, high=32768)
    loss_temperature: float = knob(1.0, "Softmax temperature T of the divergence; scaled back by T²", low=0,
                                   high=100, low_open=True)
    alpha: float = knob(0.0, "Weight of CE on reference completions (the data's or the teacher's); the "
                             "student's own samples have no reference and train on (1−α)·divergence alone",
                        low=0, high=1, high_open=True)
    samples_logged: int = knob(3, "Sampled completions written to the run's samples.jsonl at each logging step",
                               low=0, high=64)

    def loss_spec(self, base):
        """The soft-label loss this strategy trains with, α·CE + (1−α)·T²·JSD_β: the run's LossSpec `base`
        with these settings (its chunk size stays)."""
        return dataclasses.replace(base, divergence="jsd", teacher_cache=None,
                                   **{field: getattr(self, own) for field, own in ON_POLICY_LOSS.items()})
