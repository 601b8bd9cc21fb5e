"""Measuring a student: `metrics` (held-out perplexity, agreement, KL, calibration; pure over logits),
`report` (a run's evaluation card against its teacher and untrained student), `pairing` (whether a run's
teacher can be compared with its student), `speed`, `queue` (evaluations on demand), `token_stats` (per
token divergences), `aligned` and `aligned_tokens` (the same across two tokenizers, where both models have
read the same text), `inspector` (the dark-knowledge view over a run), `preview` (the temperature plot),
`lesson` with `lesson_reader` (the Learn tab: a sentence's labels, loss terms and gradient sizes), and
`chat` (one prompt answered by teacher, student and baseline side by side, each student token rated),
and `quantization` (a run's student exported as int8, measured against full precision).
Imports everything below `engine`: the engine evaluates a run when it ends."""
