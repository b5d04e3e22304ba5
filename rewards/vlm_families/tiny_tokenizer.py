"""Tokenizers of the built-in tiny VLMs: byte-level BPE built locally (no files, no hub).

Every family's tiny model (``tiny``, ``tiny-qwen2.5-vl`` ...) uses these, so the answer-token
lookup runs the same way as on a real BPE vocabulary.
"""
from __future__ import annotations


def build_tiny_tokenizer(words: tuple[str, ...], specials: tuple[str, ...],
                         named_specials: dict[str, str], chat_template: str,
                         eos_token: str = "<|im_end|>", pad_token: str = "<|endoftext|>"):
    """Byte-level BPE over the 256 byte symbols + merges for digits/answer words (local, no files).

    Digits and ``words`` become single tokens with and without a leading space, so the
    answer-token lookup is exercised the same way as on a real BPE vocabulary. ``specials`` are
    added as special tokens; ``named_specials`` become tokenizer attributes (``image_token``...).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    alphabet = ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    merges = []

    def add_word(word: str):
        # left-to-right merge chain: ((w0 w1) w2) ... ; each intermediate becomes a token
        cur = word[0]
        for ch in word[1:]:
            pair = (cur, ch)
            cur = cur + ch
            if cur not in vocab:
                vocab[cur] = len(vocab)
                merges.append(pair)

    for d in "0123456789":
        add_word("\u0120" + d)        # "Ġ7" = " 7"
    for w in words:
        add_word(w)
        # " word" = one merge of "Ġ" with the finished word (a chain Ġ+w0+... would lose to
        # the word's own lower-ranked merges and never complete)
        vocab["\u0120" + w] = len(vocab)
        merges.append(("\u0120", w))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos_token, pad_token=pad_token,
                                   extra_special_tokens=dict(named_specials))
    fast.add_special_tokens({"extra_special_tokens": list(specials)},
                            replace_extra_special_tokens=False)
    fast.chat_template = chat_template
    fast.padding_side = "left"
    return fast


def padded_vocab(tokenizer, multiple: int = 64) -> int:
    """Embedding rows for a tiny model: the tokenizer's size rounded up (as real models do)."""
    return ((len(tokenizer) + multiple - 1) // multiple) * multiple


__all__ = ["build_tiny_tokenizer", "padded_vocab"]
