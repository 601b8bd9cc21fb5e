"""Tiny real checkpoints for tests: a byte-level BPE tokenizer trained on a toy grammar, and small
random Llama / GPT-2 models saved to disk so tests load them through the real from_pretrained path."""
from __future__ import annotations

import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]

_SUBJECTS = ["the cat", "a dog", "the old man", "my sister", "the teacher", "a small bird", "the student"]
_VERBS = ["sees", "likes", "finds", "carries", "follows", "reads", "paints"]
_OBJECTS = ["the red ball", "a green book", "the long road", "an apple", "the bright moon", "a letter"]
_TAILS = ["in the morning", "after dinner", "by the river", "with great care", "every day", ""]


def corpus(n_sentences: int, seed: int = 0) -> list[str]:
    """Sentences from a toy grammar: learnable structure, so a trained model beats a random one."""
    rng = random.Random(seed)
    out = []
    for _ in range(n_sentences):
        words = [rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS), rng.choice(_TAILS)]
        out.append(" ".join(w for w in words if w) + ".")
    return out


def build_tokenizer(folder: Path, vocab_size: int = 320) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(2000, seed=1), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    fast.chat_template = CHATML
    fast.save_pretrained(folder)
    return fast


def build_sentencepiece_tokenizer(folder: Path, vocab_size: int = 340) -> PreTrainedTokenizerFast:
    """Another tokenizer family over the same grammar: SentencePiece-style BPE ("▁" marks a word start,
    unknown characters fall back to byte tokens), its own special tokens and ids. With build_tokenizer's
    it makes a cross-tokenizer pair: the two split the same text differently."""
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<bos>", "<eos>", "<pad>", *bytes_])
    tok.train_from_iterator(corpus(2000, seed=5), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>")
    fast.save_pretrained(folder)
    return fast


def save_llama(folder: Path, tokenizer, *, layers: int, hidden: int, seed: int, heads: int = 4,
               kv_heads: int | None = None, vocab_size: int | None = None, init_range: float = 0.02,
               tie: bool = False) -> Path:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size or len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv_heads or heads, max_position_embeddings=512,
                      initializer_range=init_range, pad_token_id=tokenizer.pad_token_id,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      tie_word_embeddings=tie)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def pretrain(folder: Path, tokenizer, steps: int = 80, lr: float = 3e-3, seq_len: int = 32) -> Path:
    """Teach a saved model the toy grammar with plain CE, so it is a teacher worth distilling from:
    peaked, structured next-token distributions that a small student can learn in a few steps."""
    model = LlamaForCausalLM.from_pretrained(folder)
    ids = []
    for sentence in corpus(2000, seed=4):
        ids += tokenizer(sentence, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    blocks = torch.tensor(ids[: len(ids) // seq_len * seq_len]).view(-1, seq_len)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        batch = blocks[torch.randint(len(blocks), (16,), generator=gen)]
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(folder)
    return folder


def save_gpt2(folder: Path, tokenizer, *, layers: int, hidden: int, seed: int, heads: int = 4) -> Path:
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tokenizer), n_embd=hidden, n_layer=layers, n_head=heads, n_positions=512,
                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_corpus_files(folder: Path, n_train: int = 400, n_val: int = 60) -> tuple[Path, Path]:
    """One sentence per line in train.txt and validation.txt (disjoint seeds)."""
    folder.mkdir(parents=True, exist_ok=True)
    train, val = folder / "train.txt", folder / "validation.txt"
    train.write_text("\n".join(corpus(n_train, seed=2)) + "\n", encoding="utf-8")
    val.write_text("\n".join(corpus(n_val, seed=3)) + "\n", encoding="utf-8")
    return train, val
