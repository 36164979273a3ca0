"""An offline byte-level tokenizer that stands in for CLIP/T5 tokenizers.

No tokenizer files can be downloaded here, and the models are random-weight anyway: what
matters for speed is that the text encoders see sequences of the real length and vocabulary
range. Each UTF-8 byte becomes one token; special tokens sit where the real model expects
them (CLIP's end-of-text has the highest id, which its legacy pooling looks for).
"""

from __future__ import annotations

from typing import Any


def byte_tokenizer(
    *,
    vocab_size: int,
    model_max_length: int,
    pad_id: int,
    eos_id: int,
    bos_id: int | None = None,
    pad_with_eos: bool = False,
) -> Any:
    """A `PreTrainedTokenizerFast` mapping bytes to ids, with BOS/EOS/PAD at the given ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = {"<pad>": pad_id, "</s>": eos_id}
    if bos_id is not None:
        specials["<s>"] = bos_id
    used = set(specials.values())
    vocab: dict[str, int] = dict(specials)
    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    next_id = 0
    for char in sorted(byte_chars):
        while next_id in used:
            next_id += 1
        if next_id >= vocab_size:
            raise ValueError("vocab_size too small for a byte-level vocabulary")
        vocab[char] = next_id
        used.add(next_id)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            pre_tokenizers.Split("", "isolated"),
        ]
    )
    if bos_id is not None:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", special_tokens=[("<s>", bos_id), ("</s>", eos_id)]
        )
    else:
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", eos_id)]
        )
    special = {"eos_token": "</s>", "pad_token": "</s>" if pad_with_eos else "<pad>"}
    if bos_id is not None:
        special["bos_token"] = "<s>"
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=model_max_length, **special
    )


def clip_tokenizer(vocab_size: int, max_length: int = 77) -> Any:
    """Byte tokenizer laid out like CLIP's: BOS first, EOS (highest id) last, padded with EOS."""
    return byte_tokenizer(
        vocab_size=vocab_size,
        model_max_length=max_length,
        pad_id=vocab_size - 1,
        eos_id=vocab_size - 1,
        bos_id=vocab_size - 2,
        pad_with_eos=True,
    )


def t5_tokenizer(vocab_size: int, max_length: int = 512) -> Any:
    """Byte tokenizer laid out like T5/UMT5's: PAD 0, EOS 1, no BOS."""
    return byte_tokenizer(vocab_size=vocab_size, model_max_length=max_length, pad_id=0, eos_id=1)
