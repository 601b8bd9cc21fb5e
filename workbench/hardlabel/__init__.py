"""Teacher-written data for hard-label distillation: `generation` (prompts to completions.jsonl,
resumable, with its manifest), the two writers (`local_writer`: a checkpoint here; `api_writer`: an
OpenAI-compatible endpoint), `generated` (the datasets left in run folders) and `errors`. Imports
`config`, `store`, `models` and `data`."""
