"""Checkpoints: `loading` (teacher, student and tokenizer from the hub, a folder or a GGUF file; LoRA;
the vocabulary check; the tokenizer hash), `students` (a run's student at step 0, each checkpoint and the
end), `pruning` (a student cut from the teacher's layers), `sizing` (parameter counts and memory) and
`token_bridge` (two tokenizers over one text: which positions compare, shared token texts), `sampling`
(the sampler) and `quantize` (int8 dynamic quantisation, saved and loaded).
Imports `config` and `store`."""
