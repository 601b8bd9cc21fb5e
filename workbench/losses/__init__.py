"""The loss terms, as pure functions over tensors: `divergences` (forward/reverse KL, JSD, TVD, the
α·CE + (1−α)·T²·KD mix, the sparse top-k form), `signal` (what the teacher gives a loss: live logits,
cached top-k rows, another tokenizer's aligned logits, or nothing), `cross_tokenizer` (ULD and hybrid
distances over two vocabularies), `fused` (the same losses through the output head in chunks, never
building the full logits) and `features` (hidden-state and attention matching). Imports only `config`."""
