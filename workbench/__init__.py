"""Distill Workbench: distill one language model into another, from the browser, the CLI or a job.

The packages, lowest first; a package imports only those below it (tests/test_layout.py checks):

- `config`: DistillConfig and its sections, the field machinery, path rules, the gate every input passes.
- `store`: the run-directory contract (the files a run leaves), the DuckDB index over runs, ingest, model cards.
- `losses`: divergences as pure functions over tensors, the teacher signal they read, the fused head, feature terms.
- `models`: loading teachers, students and tokenizers, a run's students at each step, pruning, sizing.
- `data`: datasets from files or the hub, prompts, the offline default corpus and checkpoints.
- `hardlabel`: teacher-written data: generation with a local or API teacher, the datasets it leaves.
- `eval`: held-out metrics, the run card, speed, the evaluation queue, token statistics, the inspector.
- `engine`: training: runner, DistillTrainer, callbacks, stopping, strategies, teacher cache, pre-flight.
- `jobs` (beside this package): a JobSpec becomes a worker process that runs the engine into a run folder.
- `ui`: the Gradio tabs, plots and heatmap, and the services their handlers call.
- `cli` / `__main__`: the command line over all of the above.
"""
