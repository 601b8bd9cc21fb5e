"""The GPU numbers in one command, printed as JSON: peak memory, step time and tokens/s of

- training: the default pair (SmolLM2-135M teacher, its 6-layer student), 50 steps of the default batch
  (4 x 256 tokens) in bf16 autocast with AdamW, with the plain loss (full logits), the fused one
  (workbench/losses/fused.py) and the teacher cache (built first over exactly the 50 steps' blocks, k = 32),
  plain and fused;
- loss: the KD loss alone, forward + backward, at Liger-Kernel's published size for its distillation loss
  (vocabulary 128,256, teacher hidden size 4,096, student 2,048, 8,192 positions, bf16 tensors; JSD with
  equal hard and soft weights, as their benchmark_distill_jsd_loss.py), plain (distill_loss on full logits)
  against fused (fused_distill_loss).

    python benchmarks/gpu.py [--steps 50] [--warmup 5] [--reps 10] [--cache-dir DIR] [--json out.json] [--smoke]

Measured as Liger-Kernel measures: peak memory is torch.cuda.max_memory_allocated after resetting the peak
before each mode (everything allocated then, weights and inputs included, counts); a time is the median of the
repetitions after the warm-up, each between two torch.cuda.synchronize calls. Ratios are taken within one run.

Without CUDA it runs unchanged at a scale this machine can take (the default pair for a few steps, the loss at
a smaller hidden size and position count) and the JSON says so: each part's "scale" names what ran, and peak
memory reads "skipped: needs CUDA". --smoke runs everything tiny (random models, no offline default needed):
it proves the script starts, nothing more.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402

from workbench.config.schema import DistillConfig, LossSpec  # noqa: E402
from workbench.engine.strategies.soft import SoftLabelStrategy  # noqa: E402
from workbench.engine.teacher_cache import TeacherCache, build_cache, data_hash  # noqa: E402
from workbench.losses.distill import distill_loss  # noqa: E402
from workbench.losses.fused import DEFAULT_CHUNK, fused_distill_loss  # noqa: E402
from workbench.losses.signal import LiveHead, LiveLogits  # noqa: E402
from workbench.models.loading import tokenizer_hash  # noqa: E402

DEFAULT_YAML = ROOT / "assets" / "configs" / "default.yaml"
NEEDS_CUDA = "skipped: needs CUDA"
CACHE_K = 32
# (vocabulary, teacher hidden size, positions): Liger-Kernel's published point, what two CPU cores take in
# seconds, and a smoke test's.
LOSS_SIZES = {"cuda": (128_256, 4096, 8192), "cpu": (128_256, 512, 256), "smoke": (2048, 32, 16)}
# Liger-Kernel's README figures for this size on an H100 (theirs, not measured here): to read ours against.
LIGER_PUBLISHED = {"peak_gb": {"liger": 11.1, "torch": 68.9}, "full_ms": {"liger": 60.7, "torch": 213.2}}


class Clock:
    """Step times and peak memory on one device: CUDA work is asynchronous, so each time is taken between
    two synchronize calls, and the peak is reset before each mode."""

    def __init__(self, device: torch.device):
        self.device, self.cuda = device, device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mib(self) -> float | str:
        return round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1) if self.cuda else NEEDS_CUDA

    def timed(self, step) -> float:
        self.sync()
        start = time.perf_counter()
        step()
        self.sync()
        return time.perf_counter() - start

    def measure(self, steps, warmup: int, tokens: int) -> dict:
        """Run each of `steps` (callables) in turn; the median after the first `warmup`, tokens/s at it."""
        self.reset_peak()
        try:
            times = [self.timed(step) for step in steps]
        except torch.cuda.OutOfMemoryError as err:  # the plain loss at Liger's size may not fit a card
            return {"error": f"out of memory: {str(err).splitlines()[0]}", "peak_memory_mib": self.peak_mib()}
        kept = times[warmup:] or times  # fewer steps than the warm-up asks: all of them, the JSON shows n
        median = statistics.median(kept)
        return {"step_s": {"min": round(min(kept), 4), "median": round(median, 4), "max": round(max(kept), 4),
                           "n": len(kept)},
                "tokens_per_s": round(tokens / median, 1), "peak_memory_mib": self.peak_mib()}


def ratios(modes: dict, reference: str) -> dict:
    """Each mode's median time and peak memory over the reference mode's, where both were measured."""
    base = modes[reference]
    found = {}
    for name, mode in modes.items():
        if name == reference or "error" in mode or "error" in base:
            continue
        found[f"{name}_over_{reference}_time"] = round(mode["step_s"]["median"] / base["step_s"]["median"], 3)
        if isinstance(base["peak_memory_mib"], float):
            found[f"{name}_over_{reference}_memory"] = round(mode["peak_memory_mib"] / base["peak_memory_mib"], 3)
    return found


# -- training ------------------------------------------------------------------------------------------------

def default_pair(config: DistillConfig, steps: int, cache_dir: Path | None):
    """(teacher fp32, student, tokenizer, the first steps x batch training blocks) of the offline default."""
    from workbench.data.defaults import resolve_defaults
    from workbench.data.loading import tokenize_datasets
    from workbench.models.students import initial_student, load_teacher_fp32, student_tokenizer
    config = resolve_defaults(config, cache_dir)
    tokenizer = student_tokenizer(config)
    teacher = load_teacher_fp32(config)
    student, _ = initial_student(config, teacher)
    train, _ = tokenize_datasets(config.data, tokenizer, config.train.seq_len, config.train.seed)
    return teacher, student, tokenizer, train.select(range(steps * config.train.batch_size)).select_columns(
        ["input_ids"])


def tiny_pair(config: DistillConfig, steps: int):
    """The same, random and tiny: a 2-layer teacher and a 1-layer student over a 512-token word vocabulary."""
    import datasets
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    vocab, seq_len = 512, config.train.seq_len
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(
        {f"t{i}": i for i in range(vocab)}, unk_token="t0")))
    torch.manual_seed(0)
    teacher, student = (LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                                                     num_hidden_layers=layers, num_attention_heads=4,
                                                     max_position_embeddings=seq_len)) for layers in (2, 1))
    blocks = torch.randint(0, vocab, (steps * config.train.batch_size, seq_len)).tolist()
    return teacher.eval().requires_grad_(False), student, tokenizer, datasets.Dataset.from_dict({"input_ids": blocks})


def training(config: DistillConfig, device: torch.device, steps: int, warmup: int, smoke: bool,
             cache_dir: Path | None) -> dict:
    clock = Clock(device)
    teacher, student, tokenizer, blocks = (tiny_pair(config, steps) if smoke
                                           else default_pair(config, steps, cache_dir))
    teacher = teacher.to(device=device, dtype=torch.bfloat16)  # a frozen teacher runs in bf16 (the default config)
    batch = config.train.batch_size
    start = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="dw-gpu-cache-"))
    build_cache(teacher, tokenizer, blocks, folder, k=CACHE_K)
    cache = TeacherCache.open(folder, tokenizer_hash(tokenizer), data_hash(blocks))
    cache_s = time.perf_counter() - start
    ids = torch.tensor(blocks["input_ids"])
    batches = [{"input_ids": part.to(device), "attention_mask": torch.ones_like(part, device=device),
                "labels": part.to(device), "block": torch.arange(i * batch, i * batch + len(part))}
               for i, part in enumerate(ids.split(batch))]
    modes = {}
    for name, chunk, cached in (("plain", 0, False), ("fused", DEFAULT_CHUNK, False),
                                ("cached_plain", 0, True), ("cached_fused", DEFAULT_CHUNK, True)):
        if cached:  # a cached run loads no teacher: its weights leave the device before these peaks
            teacher.to("cpu")
        loss = dataclasses.replace(config.loss, chunk_size=chunk, teacher_cache=str(folder) if cached else None)
        strategy = SoftLabelStrategy(config.replace(loss=loss), None if cached else teacher, None,
                                     cache if cached else None)
        model = copy.deepcopy(student).to(device).train()  # each mode starts from the same weights
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr)

        def step(inputs, model=model, optimizer=optimizer, strategy=strategy):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                strategy.compute_loss(model, inputs, None)["loss"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        modes[name] = clock.measure([lambda inputs=inputs: step(inputs) for inputs in batches], warmup,
                                    batch * ids.shape[1])
        del model, optimizer
    return {"scale": "smoke: tiny random pair" if smoke else (
                f"full: {steps} steps on CUDA" if clock.cuda else f"scaled down for CPU: {steps} steps"),
            "model": "tiny random pair" if smoke else "offline default pair", "steps": steps, "warmup": warmup,
            "batch": batch, "seq_len": ids.shape[1], "dtype": "bf16 autocast", "chunk": DEFAULT_CHUNK,
            "cache": {"k": CACHE_K, "blocks": len(blocks), "build_s": round(cache_s, 2)},
            "modes": modes, "ratios": ratios(modes, "plain")}


# -- the loss alone ------------------------------------------------------------------------------------------

def loss_benchmark(device: torch.device, size: str, reps: int) -> dict:
    clock = Clock(device)
    vocab, hidden, positions = LOSS_SIZES[size]
    spec = LossSpec(divergence="jsd", alpha=0.5, temperature=1.0, beta=0.5)
    torch.manual_seed(0)
    dtype = torch.bfloat16
    make = lambda *shape: (torch.rand(*shape, device=device, dtype=dtype) * 0.02)  # noqa: E731
    student_hidden, student_weight = make(positions, hidden // 2).requires_grad_(True), make(vocab, hidden // 2)
    teacher_hidden, teacher_weight = make(positions, hidden), make(vocab, hidden)
    student_weight.requires_grad_(True)
    labels = torch.randint(0, vocab, (positions,), device=device)

    def plain():
        with torch.no_grad():
            teacher_logits = teacher_hidden @ teacher_weight.T
        distill_loss(student_hidden @ student_weight.T, LiveLogits(teacher_logits), labels, spec)["loss"].backward()
        student_hidden.grad = student_weight.grad = None

    def fused():
        fused_distill_loss(student_hidden, student_weight, labels, spec, LiveHead(teacher_hidden, teacher_weight),
                           chunk=DEFAULT_CHUNK)["loss"].backward()
        student_hidden.grad = student_weight.grad = None

    warmup = 2
    modes = {name: clock.measure([step] * (warmup + reps), warmup, positions)
             for name, step in (("plain", plain), ("fused", fused))}
    return {"scale": {"cuda": "full", "cpu": "scaled down for CPU: the full size needs a GPU's memory",
                      "smoke": "smoke: tiny sizes"}[size],
            "vocab": vocab, "teacher_hidden": hidden, "student_hidden": hidden // 2, "positions": positions,
            "dtype": "bf16", "divergence": "jsd", "alpha": 0.5, "chunk": DEFAULT_CHUNK, "modes": modes,
            "ratios": ratios(modes, "plain"), "liger_kernel_published_h100": LIGER_PUBLISHED}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="training steps per mode (default: 50 on CUDA, 3 on CPU)")
    parser.add_argument("--warmup", type=int, help="steps left out of the median (default: 5 on CUDA, 1 on CPU)")
    parser.add_argument("--reps", type=int, default=10, help="timed loss repetitions after 2 of warm-up")
    parser.add_argument("--cache-dir", type=Path, help="where the offline default is prepared")
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    parser.add_argument("--smoke", action="store_true", help="everything tiny: proves the script starts")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    config = DistillConfig.load(DEFAULT_YAML)
    if args.smoke:
        config = config.replace(train=dataclasses.replace(config.train, batch_size=2, seq_len=16))
    steps = args.steps or (50 if cuda and not args.smoke else 3)
    warmup = args.warmup if args.warmup is not None else (5 if cuda and not args.smoke else 1)
    size = "smoke" if args.smoke else device.type
    result = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "torch": torch.__version__,
              "smoke": args.smoke,
              "training": training(config, device, steps, warmup, args.smoke, args.cache_dir),
              "loss": loss_benchmark(device, size, 2 if args.smoke else args.reps)}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
