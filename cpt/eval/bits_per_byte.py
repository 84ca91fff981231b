"""Bits per byte: the held-out loss per UTF-8 byte of text instead of per token, so models with different
tokenizers (a base model and its vocabulary extension, two model families) compare on the same text. Per-token
perplexity does not: a tokenizer with longer tokens has fewer, harder tokens.

    bits per byte = (summed next-token loss of the scored targets, in nats) / ln 2 / (UTF-8 bytes of those targets)

Every scored target counts in the loss, the EOS between documents too (each tokenizer puts exactly one after every
document); special tokens such as that EOS count 0 bytes. A token's bytes come from a table built once per tokenizer:
byte-level BPE tokens (GPT-2, Llama 3, Qwen, SmolLM) map each character to exactly one byte, so summing the table
over the targets of a window gives exactly the bytes of the text they spell; SentencePiece pieces have '▁' for a
space and <0xNN> byte pieces (a tokenizer that prepends '▁' to a document counts one byte more per document);
added tokens are their text.
"""

from __future__ import annotations

import logging
import math
import re

import numpy as np

log = logging.getLogger(__name__)

_BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


def token_bytes(tokenizer) -> np.ndarray:
    """UTF-8 bytes of the text of every token id (0 for special tokens), as an int64 array of len(tokenizer)."""
    inner = getattr(tokenizer, "inner", None)
    if inner is None:  # cpt's byte tokenizer: ids 0..255 are bytes, the rest (EOS) are not text
        table = np.zeros(len(tokenizer), dtype=np.int64)
        table[:256] = 1
        return table
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    size = len(inner)
    table = np.zeros(size, dtype=np.int64)
    decoder = inner.backend_tokenizer.decoder
    kind = type(decoder).__name__ if decoder is not None else ""
    byte_level = "ByteLevel" in repr(decoder)
    sentencepiece = "Metaspace" in repr(decoder) or "ByteFallback" in repr(decoder)
    added = inner.added_tokens_decoder
    byte_chars = set(bytes_to_unicode().values())
    approximated = 0
    for i, piece in enumerate(inner.convert_ids_to_tokens(list(range(size)))):
        if i in added:
            table[i] = 0 if added[i].special else len(added[i].content.encode("utf-8"))
        elif piece is None:
            continue
        elif byte_level and set(piece) <= byte_chars:
            table[i] = len(piece)
        elif sentencepiece and _BYTE_PIECE.match(piece):
            table[i] = 1
        elif sentencepiece:
            table[i] = len(piece.replace("\u2581", " ").encode("utf-8"))
        else:
            table[i] = len(inner.decode([i]).encode("utf-8"))
            approximated += 1
    if approximated:
        log.warning("bits per byte: %d of %d tokens of %s (decoder %s) measured by decoding each alone; a token that "
                    "is part of a multi-byte character counts as 3 bytes", approximated, size, tokenizer.name, kind)
    return table


def bits_per_byte(loss_sum: float, nbytes: float) -> float:
    """Summed loss in nats over the bytes it covers -> bits per byte (nan when no byte was scored)."""
    return loss_sum / math.log(2) / nbytes if nbytes > 0 else float("nan")
