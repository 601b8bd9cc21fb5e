"""Where results live: `rundir` is the run-directory contract (spec.json, config.json, status.json,
metrics.jsonl, checkpoints, the student) that workers write and everything else reads; `database` is the
DuckDB index over run folders, written only by `ingest`; `modelcard` writes a saved model's README.
Imports only `config`."""
