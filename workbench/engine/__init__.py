"""Training: `runner` (one run from config to saved student and evaluation), `trainer` (DistillTrainer
on transformers.Trainer), `strategies/` (what each strategy computes per batch), `callbacks` and
`stopping` (run files and cancellation), `nonfinite`, `teacher_cache` and `cache_fidelity` (top-k teacher
rows stored once), `storage_cost` (what storing a teacher's signal costs, in the cache's layout),
`baseline` (the CE-only comparison) and `preflight` (checks before launch). Imports every package below it;
`jobs` and `ui` import it."""
