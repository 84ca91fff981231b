"""Tokenizers: the built-in byte-level one (needs no files) or a transformers tokenizer; both encode without
special tokens (cpt puts one EOS after every document itself), carry an identity that prepared data records, and
save as a transformers tokenizer directory next to an exported model."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Protocol

from cpt.assets.models import source_path
from cpt.config.schema import ConfigError, ModelConfig
from cpt.model.vocab import extend_tokenizer, new_tokens

PROBE = "Continued pretraining, 2026: naïve café — 東京 🚀\n\tdef f(x): return x**2"


class Tokenizer(Protocol):
    name: str
    eos_token_id: int
    # ids added by model.extend_vocab -> the ids their text had before (cpt.model.vocab)
    extension: dict[int, list[int]]

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def decode(self, ids: list[int]) -> str: ...

    def __len__(self) -> int: ...

    def save_pretrained(self, out: Path) -> None: ...


log = logging.getLogger(__name__)


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255 and an end-of-text id 256: fits any vocabulary of 257 or more."""

    name = "byte"
    eos_token_id = 256
    extension: dict[int, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(t.encode("utf-8")) for t in texts]

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def __len__(self) -> int:
        return 257

    def save_pretrained(self, out: Path) -> None:
        """The same ids as a transformers tokenizer: byte-level BPE with no merges, bytes in byte order."""
        from tokenizers import Tokenizer as Backend
        from tokenizers import decoders, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        vocab = {char: byte for byte, char in bytes_to_unicode().items()}
        backend = Backend(models.BPE(vocab=vocab, merges=[]))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        backend.decoder = decoders.ByteLevel()
        tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")
        assert tok.eos_token_id == self.eos_token_id
        tok.save_pretrained(out)


class HFTokenizer:
    """A transformers tokenizer (hub id or local directory); `eos_token` overrides the one put between documents;
    `new_tokens` are added to it (model.extend_vocab, cpt.model.vocab)."""

    def __init__(self, source: str, eos_token: Optional[str] = None, new_tokens: Sequence[str] = ()):
        from transformers import AutoTokenizer

        self.name = source
        self.inner = AutoTokenizer.from_pretrained(source)
        self.extension = extend_tokenizer(self.inner, list(new_tokens)) if new_tokens else {}
        if eos_token is not None:
            eos_id = self.inner.convert_tokens_to_ids(eos_token)
            if eos_id is None or eos_id == self.inner.unk_token_id and eos_token != self.inner.unk_token:
                raise ValueError(f"config key 'model.eos_token': '{eos_token}' is not a token of '{source}'")
            self.eos_token_id = eos_id
        elif self.inner.eos_token_id is None:
            raise ValueError(f"tokenizer '{source}' has no EOS token: name one in model.eos_token")
        else:
            self.eos_token_id = self.inner.eos_token_id

    def encode(self, text: str) -> list[int]:
        return self.inner.encode(text, add_special_tokens=False)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.inner(texts, add_special_tokens=False)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.inner.decode(ids)

    def __len__(self) -> int:
        return len(self.inner)

    def save_pretrained(self, out: Path) -> None:
        self.inner.save_pretrained(out)


class BackendEncoder:
    """A transformers tokenizer's Rust backend alone, for worker processes: pickles as its JSON and loads without
    importing transformers (seconds per spawned worker). Encodes as HFTokenizer.encode_batch does: no special
    tokens added, no truncation or padding (a tokenizer.json may carry them; transformers turns them off per call),
    special-token text split or not as the tokenizer does it (checked by worker_encoder)."""

    def __init__(self, inner, eos_token_id: int):
        backend = inner.backend_tokenizer
        self.json, self.eos_token_id = backend.to_str(), eos_token_id
        self.split_special = backend.encode_special_tokens
        self._backend = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_backend": None}

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self._backend is None:
            from tokenizers import Tokenizer as Backend

            self._backend = Backend.from_str(self.json)
            self._backend.no_truncation()
            self._backend.no_padding()
            self._backend.encode_special_tokens = self.split_special
        # the ids without the character offsets (15% faster; the same ids: worker_encoder's probes check it)
        return [e.ids for e in self._backend.encode_batch_fast(texts, add_special_tokens=False)]


def worker_encoder(tok: Tokenizer):
    """What tokenizes documents in prepare's worker processes: the backend alone where it gives the same ids as the
    tokenizer on probe texts (a long one, one with the special tokens' text), else the tokenizer itself."""
    inner = getattr(tok, "inner", None)
    if inner is None or getattr(inner, "backend_tokenizer", None) is None:
        return tok
    backend = BackendEncoder(inner, tok.eos_token_id)
    special = " ".join(str(t) for t in inner.all_special_tokens)
    probes = [PROBE, "", f"{PROBE} {special} {PROBE}", PROBE * 600]  # the long one: past a truncation length
    return backend if backend.encode_batch(probes) == tok.encode_batch(probes) else tok


def build_tokenizer(cfg: ModelConfig, extend: bool = True) -> Tokenizer:
    """The run's tokenizer, with model.extend_vocab's tokens added (`extend=False`: without them)."""
    source = cfg.tokenizer or cfg.name_or_path
    added = new_tokens(cfg.extend_vocab) if extend else []
    if source == "byte":
        if cfg.eos_token is not None:
            raise ValueError("config key 'model.eos_token': the byte tokenizer has one EOS; set it to null")
        if added:
            raise ConfigError("model.extend_vocab", "the byte tokenizer cannot be extended: use a transformers "
                              "tokenizer (model.tokenizer=<dir or hub id>)")
        return ByteTokenizer()
    try:
        return HFTokenizer(source, cfg.eos_token, added)
    except OSError as e:
        if cfg.tokenizer_fallback:
            fallback = source_path(cfg.tokenizer_fallback)
            log.warning("tokenizer '%s' unreachable (%s); using the offline %s at %s", source,
                        _first_line(e), cfg.tokenizer_fallback, fallback)
            return HFTokenizer(str(fallback), cfg.eos_token, added)
        raise RuntimeError(
            f"could not load tokenizer '{source}' (model.tokenizer / model.name_or_path): {_first_line(e)}. "
            "Offline? Point model.tokenizer at a local directory, or use model.tokenizer=byte "
            "(HF_HUB_OFFLINE=1 skips the hub's retries)."
        ) from e


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__


def identity(tok: Tokenizer) -> dict:
    """What prepared data records: name, vocabulary size, EOS, a hash of the ids of a probe text and, for a
    transformers tokenizer, a hash of its vocabulary, merges and added tokens (so two vocabulary extensions of the
    same size differ)."""
    probe = hashlib.sha256(str(tok.encode(PROBE)).encode()).hexdigest()[:16]
    out = {"name": tok.name, "vocab_size": len(tok), "eos_token_id": tok.eos_token_id, "probe": probe}
    inner = getattr(tok, "inner", None)
    if inner is not None:
        import json

        model = json.loads(inner.backend_tokenizer.to_str())["model"]
        added = sorted((i, t.content) for i, t in inner.added_tokens_decoder.items())
        content = json.dumps([model, added], sort_keys=True)
        out["vocab_hash"] = hashlib.sha256(content.encode()).hexdigest()[:16]
    return out


def same_ids(a: dict, b: dict, keys: tuple = ("vocab_size", "eos_token_id", "probe", "vocab_hash")) -> bool:
    """Two identities give the same token ids (the name may differ: a hub id and its local copy). A key one of them
    lacks (data prepared before cpt recorded it) is not compared."""
    return all(a.get(k) == b.get(k) for k in keys if k in a and k in b)
