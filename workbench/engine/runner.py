"""One training run, start to finish: config -> run directory -> models + data -> Trainer -> student.

The CLI calls this directly; a job's worker process calls the same function. Everything a reader
needs (config, status, metrics, the student) ends up in the run directory (workbench/store/rundir.py).
"""
from __future__ import annotations

import dataclasses
import os
import time
import traceback
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

import psutil
import torch
import torch.distributed as dist
from transformers import PreTrainedModel, set_seed

from workbench.config.fields import ConfigError
from workbench.config.schema import DistillConfig
from workbench.data.defaults import progress_line, resolve_defaults
from workbench.data.loading import PadCollator, tokenize_datasets
from workbench.data.prompt_rows import on_policy_rows
from workbench.data.registry import default_cache_dir
from workbench.engine.cache_build import BuildReport, ensure_cache
from workbench.engine.callbacks import RunFilesCallback, format_eta
from workbench.engine.phase_clock import PhaseClock, describe
from workbench.engine.stopping import Cancelled, StopCallback, StopRequest
from workbench.engine.strategies import strategy_class
from workbench.engine.strategies.together import STUDENT, TrainedTogether, save_module
from workbench.engine.teacher_cache import CacheError, TeacherCache, data_hash
from workbench.engine.teacher_rows import ROWS_FOLDER, TeacherRows
from workbench.engine.trainer import DistillTrainer, check_weights, training_arguments, use_bf16
from workbench.eval.report import evaluate_run
from workbench.hardlabel.generation import GENERATED, generate_dataset, read_manifest
from workbench.models.kept_states import STATES_FOLDER, KeptStates
from workbench.models.loading import (
    apply_lora,
    check_vocab,
    context_length,
    count_parameters,
    load_model,
    load_teacher,
    load_tokenizer,
    loaded_identity,
    logit_size,
    tokenizer_hash,
)
from workbench.models.students import initial_student
from workbench.models.token_bridge import TokenBridge
from workbench.store.modelcard import write_model_card, write_trained_teacher_card
from workbench.store.rundir import CONFIG, PROFILE, RunDir, write_json_atomic


def is_main_process() -> bool:
    """Rank 0 under accelerate/torchrun, or a plain single process."""
    return int(os.environ.get("RANK", "0")) == 0


def default_run_dir(config: DistillConfig) -> RunDir:
    name = config.output.run_name or f"{time.strftime('%Y%m%d-%H%M%S')}-{config.strategy}"
    return RunDir(Path(config.output.runs_dir).expanduser() / name)


def run_training(config: DistillConfig, run_dir: RunDir | None = None, resume: bool = False,
                 echo: Callable[[str], None] | None = None, cache_dir: Path | None = None,
                 fetch_missing: bool = True) -> dict:
    """Train and save the student; returns the final held-out metrics. On failure status.json says
    'failed' with the error, and the exception propagates. SIGTERM or Ctrl-C stop the run at the next
    step boundary with a checkpoint (status 'cancelled', Cancelled raised). `defaults:` sources are
    resolved to the prepared offline defaults in `cache_dir` first, so config.json names real paths
    (fetch_missing False: a model not fetched yet fails the run instead of being fetched)."""
    run = (run_dir or default_run_dir(config)).create()
    main = is_main_process()
    if main:
        me = psutil.Process()
        # pid + start time let a restarted app tell this live process from a dead one (or a reused pid).
        run.write_status("starting", step=0, total_steps=config.train.max_steps, error=None, started=time.time(),
                         pid=me.pid, pid_started=me.create_time(), processes=int(os.environ.get("WORLD_SIZE", "1")),
                         phase=None, evaluation_error=None)
    stop = StopRequest()
    clock = PhaseClock()
    try:
        with stop.installed():
            with clock.phase("setup"):
                config = resolve_defaults(config, cache_dir, _progress_echo(echo if main else None), fetch_missing)
            if main:
                config.save(run.file(CONFIG))
            if config.strategy == "hard_label":
                with clock.phase("teacher"):
                    config = _generated_data(config, run, echo if main else None, main)
                if main:
                    config.save(run.file(CONFIG))  # now naming the data the student trains on
            cache_root = Path(cache_dir or default_cache_dir())
            final = _train(config, run, resume, echo if main else None, stop, clock, cache_root)
    except Cancelled as cancelled:
        if main:
            run.write_status("cancelled", step=cancelled.step, checkpoint=cancelled.checkpoint, eta_s=None,
                             error=None)
        raise
    except BaseException as err:
        if main:
            run.write_status("failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        raise
    finally:
        _leave_process_group()
    if main:
        # Succeeded before the evaluation: the student is saved, so a process killed while evaluating
        # still leaves a finished run (with phase "evaluating" left as the trace).
        done = dict(step=config.train.max_steps, eta_s=0, final_metrics=final)
        run.write_status("succeeded", **done, phase="evaluating" if config.evaluation.at_end else None)
        _write_profile(run, clock, echo)
        if config.evaluation.at_end:
            with clock.phase("report"):
                error = _evaluate_at_end(run, echo, cache_root / STATES_FOLDER)
            run.write_status("succeeded", **done, phase=None, evaluation_error=error)
            _write_profile(run, clock, echo)
    return final


def _write_profile(run: RunDir, clock: PhaseClock, echo) -> None:
    """profile.json: this attempt's wall time by phase (a resumed run's covers the resumed part)."""
    split = clock.split()
    write_json_atomic(run.file(PROFILE), split)
    if echo:
        echo(describe(split))


def _evaluate_at_end(run: RunDir, echo, states_root: Path) -> str | None:
    """Evaluate the saved student (workbench/eval/report.py); returns what went wrong, if anything. A
    failure does not fail the run; any saved student can be evaluated again later from the UI or
    `python -m workbench evaluate`."""
    try:
        # Cancelling now stops the evaluation at once (there is nothing to checkpoint); the run stays done.
        with StopRequest().installed():
            # The config as saved (readers' view: a co-distilled student meets its trained teacher).
            report = evaluate_run(run, "final", progress=_progress_echo(echo), states_root=states_root)
    except Cancelled:
        return "cancelled during evaluation"
    except Exception as err:  # noqa: BLE001 - see the docstring
        if echo:
            echo(f"evaluation failed: {type(err).__name__}: {err}")
        return f"{type(err).__name__}: {err}"
    if echo:
        echo(report["card"])
    return None


def _generated_data(config: DistillConfig, run: RunDir, echo, main: bool) -> DistillConfig:
    """Hard-label stage 1: the teacher's completions (written now into RUN/generated, or reused from
    generation.dataset) become the training data: one example per row, loss on the completion only."""
    dataset = config.generation.dataset
    if dataset:
        source = Path(dataset).expanduser()
        if not source.is_file():
            raise ConfigError([("generation.dataset", f"no such file: {source}")])
    elif main:
        source = generate_dataset(config, run.path / GENERATED, _generation_progress(run, echo))
        run.write_status("running", phase=None, eta_s=None)
    else:
        # Other ranks of a multi-process job wait for rank 0's teacher to finish writing; a status that
        # rank 0 ended in this attempt (not one left by an earlier attempt) ends the wait.
        began = psutil.Process().create_time()
        while not (read_manifest(run.path / GENERATED) or {}).get("complete"):
            status = run.read_status()
            if status.get("state") in ("failed", "cancelled") and status.get("updated", 0) > began:
                raise RuntimeError(f"rank 0 stopped while the teacher was writing the data ({status['state']})")
            time.sleep(1.0)
        source = run.path / GENERATED / "completions.jsonl"
    # Held-out rows are split off the completions (data.validation_fraction), by prompt. Every setting
    # that says how to read the user's own data is reset: these are the completions' columns.
    data = dataclasses.replace(config.data, source=str(source), format="auto", packing=False, validation_source=None,
                               validation_split=None, split="train", hub_config=None, messages_column="messages")
    return config.replace(data=data)


def _generation_progress(run: RunDir, echo):
    """Status (for the Runs tab's progress and ETA) at most once a second, a log line every 10%."""
    last = {"status": 0.0, "tenth": -1}

    def report(done: int, total: int, eta: float | None) -> None:
        now = time.monotonic()
        if now - last["status"] >= 1.0 or done == total:
            last["status"] = now
            run.write_status("running", phase="generating", phase_done=done, phase_total=total,
                             eta_s=None if eta is None else round(eta, 1))
        tenth = 10 * done // max(total, 1)
        if echo and tenth > last["tenth"]:
            last["tenth"] = tenth
            echo(f"teacher writing completions: {done}/{total} ({format_eta(eta)} left)")
    return report


def _leave_process_group() -> None:
    """Trainer joins the ranks of a multi-process run but never tears the group down; PyTorch asks
    programs to do so before exiting, rather than leave it to the gloo/NCCL destructors at exit."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _progress_echo(echo):
    return (lambda message, fraction: echo(progress_line(message, fraction))) if echo else None


def _train(config: DistillConfig, run: RunDir, resume: bool, echo, stop: StopRequest, clock: PhaseClock,
           cache_root: Path) -> dict:
    say = echo or (lambda _msg: None)
    setup = ExitStack()  # loading models and data, up to the first evaluation; closed there
    setup.enter_context(clock.phase("setup"))
    set_seed(config.train.seed)
    bf16 = use_bf16(config)
    strategy_cls = strategy_class(config.strategy)
    teacher = None
    if strategy_cls.uses_teacher(config):
        teacher = (load_model(config.teacher, "teacher", torch.float32) if strategy_cls.trains_teacher
                   else load_teacher(config.teacher, bf16))
    keep = config.student.init_from_teacher_layers
    student, tokenizer = initial_student(config)
    if keep:
        say(f"student: teacher layers {student.config.pruned_from_layers}")
    shared_vocab = None
    if teacher is not None and config.needs_shared_vocab() and keep:
        shared_vocab = logit_size(student)
    elif teacher is not None and config.needs_shared_vocab():
        vocab = check_vocab(load_tokenizer(config.teacher, "teacher"), tokenizer, logit_size(teacher),
                            logit_size(student))
        shared_vocab = vocab.shared_size
        say(f"vocabulary: {vocab.note}")
    bridge = None
    if teacher is not None and config.loss.cross_tokenizer != "off" and strategy_cls.uses_teacher(config):
        bridge = TokenBridge(tokenizer, load_tokenizer(config.teacher, "teacher"), logit_size(student),
                             logit_size(teacher), context_length(teacher))
        say(f"tokenizers: the teacher reads its own tokens ({len(bridge.teacher):,}), the student its own "
            f"({len(tokenizer):,}); KD by {config.loss.cross_tokenizer} at positions where both read the same text")
    if config.student.lora.enabled:
        student = apply_lora(student, config.student.lora)
    total, trainable = count_parameters(student)
    say(f"student: {total:,} parameters, {trainable:,} trainable; bf16 {'on' if bf16 else 'off'}")

    train_ds, eval_ds = tokenize_datasets(config.data, tokenizer, config.train.seq_len, config.train.seed)
    cache = states = None
    if config.loss.teacher_cache:
        if config.loss.build_teacher_cache:
            with clock.phase("teacher"):
                _build_if_missing(config, tokenizer, train_ds, run, echo)
        cache = open_teacher_cache(config, tokenizer, train_ds, logit_size(student))
        train_ds = train_ds.add_column("block", list(range(len(train_ds))))  # each row finds its cached row
        say(f"teacher cache: {config.loss.teacher_cache} (k={cache.manifest.k}); the teacher is not run")
    elif config.reuses_teacher_rows() and teacher is not None:
        identity = loaded_identity(config.teacher, teacher)
        states = KeptStates.open(cache_root / STATES_FOLDER, identity, teacher)  # its held-out states too
        cache = TeacherRows.open(cache_root / ROWS_FOLDER, identity, tokenizer, train_ds,
                                 min(logit_size(teacher), logit_size(student)))
        train_ds = train_ds.add_column("block", list(range(len(train_ds))))
        stored = cache.filled_count()
        say(f"teacher rows: {stored} of {len(train_ds)} blocks kept by earlier runs ({cache.folder}); the teacher "
            "runs only on the others, and their rows are kept for the next run")
    if config.strategy == "on_policy":
        train_ds = on_policy_rows(config.on_policy, train_ds, tokenizer, context_length(teacher, student),
                                  config.train.seq_len, config.data.max_file_mb)
    say(f"data: {len(train_ds)} training and {len(eval_ds) if eval_ds is not None else 0} held-out sequences")
    strategy = strategy_cls(config, teacher, shared_vocab, cache, bridge)
    strategy.clock, strategy.states = clock, states
    strategy.configure(tokenizer, min(shared_vocab or len(tokenizer), len(tokenizer)))
    files = RunFilesCallback(run, echo, samples=strategy.logged_samples)
    trainer = DistillTrainer(
        model=strategy.trainable_model(student), args=training_arguments(config, run.checkpoints, eval_ds is not None),
        train_dataset=train_ds, eval_dataset=eval_ds, data_collator=PadCollator(tokenizer),
        processing_class=tokenizer, callbacks=[files, StopCallback(stop)], strategy=strategy)

    checkpoint = run.last_checkpoint() if resume else None
    if resume:
        say(f"resumed from checkpoint {checkpoint.name.rpartition('-')[2]} ({checkpoint.parent.name}/{checkpoint.name})"
            if checkpoint else "no complete checkpoint found: starting from step 0")
    if checkpoint is None and is_main_process():
        run.truncate_metrics_after(-1)  # a fresh start logs step 0 again: drop an earlier attempt's lines
    setup.close()
    if eval_ds is not None and checkpoint is None:
        say("evaluating the untrained student (step 0)")
        trainer.evaluate()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if stop.requested and trainer.state.global_step < config.train.max_steps:
        saved = run.last_checkpoint()
        say(f"stopped at step {trainer.state.global_step}; checkpoint {saved}")
        raise Cancelled(trainer.state.global_step, str(saved) if saved else None)
    final = _final_eval(trainer) if eval_ds is not None else {}
    with clock.phase("io"):
        _save_student(trainer, strategy, tokenizer, run, config, final)
    say(f"saved the student to {run.student}")
    if trainer.skipped_steps:
        say(f"{trainer.skipped_steps} steps were skipped: their loss or gradient was not finite")
        if is_main_process():
            run.write_status("running", nonfinite_skipped=trainer.skipped_steps)
    return final


def _build_if_missing(config: DistillConfig, tokenizer, train_ds, run: RunDir, echo) -> None:
    """loss.build_teacher_cache: the teacher's pass over these blocks, unless a finished one is in the folder.
    Every rank asks; the folder's lock lets one build and the others then find it complete."""
    main = is_main_process()
    if ensure_cache(config, tokenizer, train_ds, BuildReport(run if main else None, echo)):
        if main:
            run.write_status("running", phase=None, phase_done=None, phase_total=None, eta_s=None)
    elif echo:
        echo(f"teacher cache: {config.loss.teacher_cache} is complete for this data: reused, not built")


def open_teacher_cache(config: DistillConfig, tokenizer, train_ds, student_logits: int):
    """The run's teacher cache, refused (naming loss.teacher_cache) unless it was built with this
    tokenizer over exactly these training blocks, with ids the student has logits for."""
    try:
        cache = TeacherCache.open(config.loss.teacher_cache, tokenizer_hash(tokenizer), data_hash(train_ds))
    except CacheError as err:
        raise ConfigError([("loss.teacher_cache", str(err))]) from err
    if cache.manifest.vocab > student_logits:
        raise ConfigError([("loss.teacher_cache", f"the cache's teacher has {cache.manifest.vocab} logits, the "
                                                  f"student only {student_logits}")])
    return cache


def _final_eval(trainer: DistillTrainer) -> dict:
    """Held-out metrics at the last step, reusing a periodic eval that already ran there."""
    step = trainer.state.global_step
    done = [h for h in trainer.state.log_history if "eval_loss" in h and h.get("step") == step]
    metrics = done[-1] if done else trainer.evaluate()
    timing = ("runtime", "per_second", "preparation_time")
    return {k: v for k, v in metrics.items() if k.startswith("eval_") and not any(t in k for t in timing)}


def _save_student(trainer: DistillTrainer, strategy, tokenizer, run: RunDir, config: DistillConfig,
                  final: dict) -> None:
    trained = trainer.accelerator.unwrap_model(trainer.model)
    if isinstance(trained, TrainedTogether):
        check_weights(trained, trainer.state.global_step, "student")  # on every rank: it may reduce over them
        if trainer.is_world_process_zero():
            _save_together(trained, tokenizer, run, config, final)
        return
    if config.student.lora.enabled:
        # Keep the adapter, and also a merged model that loads with plain from_pretrained.
        trainer.save_model(str(run.student / "adapter"))
        if trainer.is_world_process_zero():
            merged = trained.merge_and_unload()
            merged.save_pretrained(run.student)
            tokenizer.save_pretrained(run.student)
    else:
        trainer.save_model(str(run.student))
    if trainer.is_world_process_zero():
        params, _ = count_parameters(trained)
        write_model_card(run.student / "README.md", config, final, params, run.path.name)


def _save_together(trained: TrainedTogether, tokenizer, run: RunDir, config: DistillConfig, final: dict) -> None:
    """The student to RUN/student/, a trained teacher to RUN/teacher/ (each with its model card), any
    other trained module beside the student (RUN/student/NAME.safetensors)."""
    for name, part in trained.parts.items():
        if not isinstance(part, PreTrainedModel):
            continue
        folder = run.student if name == STUDENT else run.path / name
        part.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        params, _ = count_parameters(part)
        if name == STUDENT:
            write_model_card(folder / "README.md", config, final, params, run.path.name)
        else:
            write_trained_teacher_card(folder / "README.md", config, final, params, run.path.name)
    for name, part in trained.parts.items():
        if not isinstance(part, PreTrainedModel):
            save_module(part, run.student / f"{name}.safetensors")
