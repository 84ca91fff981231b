"""Vocabulary extension (`model.extend_vocab`), the standard continued-pretraining step for a new language or a
jargon-heavy domain: new tokens join the tokenizer (cpt.model.tokenizer.build_tokenizer), and each new embedding row
starts as the mean of the rows of the sub-tokens the old tokenizer split that token into (the lm_head rows too when
it is not tied), so the model's first guess for a new token is what it knew about its pieces.

The extended tokenizer is what prepare tokenizes with (its identity, with a hash of the added tokens, is in the
manifest) and what the export saves. Prepare reports the fertility change (tokens per word and per byte of the
domain text) from the old tokenizer to the new one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from cpt.config.schema import ConfigError, VocabExtensionConfig

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

PAD_TO = 64  # a resized vocabulary is padded to a multiple of 64 rows (GPU matmul tiles); the padding is never used


def new_tokens(cfg: VocabExtensionConfig) -> list[str]:
    """The configured tokens (list, then file lines), in order, without repeats and empty entries."""
    tokens = list(cfg.tokens)
    if cfg.file:
        path = Path(cfg.file).expanduser()
        if not path.is_file():
            raise ConfigError("model.extend_vocab.file", f"{path} is not a file (one new token per line)")
        # only the line end is removed: a token may start with a space (" tortfeasor", as BPE words do)
        tokens += path.read_text(encoding="utf-8").splitlines()
    return list(dict.fromkeys(t for t in tokens if t))  # whitespace runs are tokens too (code indentation)


def extend_tokenizer(inner, tokens: list[str]) -> dict[int, list[int]]:
    """Add `tokens` to a transformers BPE tokenizer in place, as BPE entries: each token's current pieces are joined
    by new merges, applied after all existing ones (so the token forms wherever BPE reaches its pieces, inside longer
    words too) and decoded like any other entry. A token of k pieces adds up to k - 1 merges and entries (the partial
    joins too). Returns {new id: the ids its text had before}. Skipped, and counted in the log: tokens that are one
    id already, and tokens that span several pre-tokens (words, for most tokenizers: no merge joins across them);
    tokens that still do not form (another new merge regroups their pieces) are named in a warning."""
    import json

    from tokenizers import Tokenizer as Backend

    backend = inner.backend_tokenizer
    state = json.loads(backend.to_str())
    model = state["model"]
    if model["type"] != "BPE":
        raise ConfigError("model.extend_vocab", f"needs a BPE tokenizer; this one's model is {model['type']}")
    vocab, merges = model["vocab"], model["merges"]
    for token_id, added in inner.added_tokens_decoder.items():  # added tokens keep their ids once entries follow them
        vocab.setdefault(added.content, token_id)
    next_id = max(vocab.values()) + 1
    known = {tuple(m) for m in merges}  # tokenizers writes every merge as a [left, right] pair
    extension, skipped = {}, 0
    for token in tokens:
        ids = inner.encode(token, add_special_tokens=False)
        text = backend.normalizer.normalize_str(token) if backend.normalizer else token
        words = backend.pre_tokenizer.pre_tokenize_str(text) if backend.pre_tokenizer else [(text, None)]
        if len(ids) < 2 or len(words) != 1:
            skipped += 1
            continue
        pieces = inner.convert_ids_to_tokens(ids)
        joined = pieces[0]
        for k, piece in enumerate(pieces[1:], start=2):
            pair, joined = (joined, piece), joined + piece
            if joined not in vocab:
                vocab[joined] = next_id
                extension[next_id] = ids[:k]
                next_id += 1
            if pair not in known:  # a join already in the vocabulary may still lack this merge
                known.add(pair)
                merges.append(list(pair))
    inner._tokenizer = Backend.from_str(json.dumps(state))
    # BPE decides in merge order: a token whose pieces another new merge regroups may not form; say so
    unformed = [t for t in tokens if len(inner.encode(t, add_special_tokens=False)) > 1]
    log.info("extend_vocab: %d new entries (ids %d..%d) for %d tokens%s", len(extension), min(extension, default=0),
             max(extension, default=-1), len(tokens) - skipped,
             f"; {skipped} skipped: already one token, or more than one word" if skipped else "")
    if len(unformed) > skipped:
        log.warning("extend_vocab: %d tokens do not encode to one id after the extension (their pieces are "
                    "regrouped by other merges), e.g. %s", len(unformed) - skipped, unformed[:5])
    return extension


def extend_embeddings(model: nn.Module, extension: dict[int, list[int]]) -> None:
    """Grow the embedding (and an untied lm_head) to hold the new ids; each new row = mean of its sub-token rows.
    On the meta device only the shapes change (the values come from rank 0)."""
    if not extension:
        return
    needed = max(extension) + 1
    embedding = model.get_input_embeddings()
    if needed > embedding.num_embeddings:
        model.resize_token_embeddings(needed, pad_to_multiple_of=PAD_TO, mean_resizing=False)
        embedding = model.get_input_embeddings()
    if embedding.weight.is_meta:
        return
    tables = [embedding.weight]
    head = model.get_output_embeddings()
    if head is not None and head.weight is not embedding.weight:
        tables.append(head.weight)
    import torch

    with torch.no_grad():
        for table in tables:
            for new_id, ids in extension.items():
                table[new_id] = table[ids].mean(0)


FERTILITY_SAMPLE_BYTES = 2**21  # the domain text prepare measures fertility on: its first 2 MiB of documents


def fertility_change(base_tokenizer, tokenizer, docs_jsonl: Path) -> dict:
    """Tokens per word and per byte of the first documents of `docs_jsonl`, the tokenizer before the extension
    (`base_tokenizer`) vs the extended one."""
    import json

    texts, size = [], 0
    with docs_jsonl.open(encoding="utf-8") as f:
        for line in f:
            if size >= FERTILITY_SAMPLE_BYTES:
                break
            texts.append(json.loads(line)["text"])
            size += len(texts[-1].encode("utf-8"))
    base, extended = fertility(base_tokenizer, texts), fertility(tokenizer, texts)
    log.info("extend_vocab on %s (%d documents, %d bytes): tokens per word %.3f -> %.3f, per byte %.4f -> %.4f "
             "(%+.1f%% tokens)", docs_jsonl.name, len(texts), size, base["tokens_per_word"],
             extended["tokens_per_word"], base["tokens_per_byte"], extended["tokens_per_byte"],
             100 * (extended["tokens"] / max(base["tokens"], 1) - 1))
    return {"sample": docs_jsonl.name, "documents": len(texts), "bytes": size, "base": base, "extended": extended}


def fertility(tokenizer, texts: list[str]) -> dict:
    """Tokens per whitespace-separated word and per UTF-8 byte of `texts` (no EOS counted)."""
    tokens = sum(len(ids) for ids in tokenizer.encode_batch(texts))
    words = sum(len(t.split()) for t in texts)
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    return {"tokens": tokens, "tokens_per_word": tokens / max(words, 1), "tokens_per_byte": tokens / max(nbytes, 1)}
