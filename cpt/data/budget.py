"""A source's budget (`data.sources[].max_docs` / `max_tokens`): the first documents of the source, in its fixed
order (file order; a Hugging Face source's files in hf.shuffle_seed's order), after cleaning and dedup, both splits
together, whole documents only: a document is kept while the source's count plus it stays within the budget; the
first one that would pass it fills the source (no later, shorter document is taken instead: the budget is a prefix,
the same for any number of workers). Tokens are counted as the shards hold them — the document's ids and its EOS —
with the tokenizer the packer uses. Once a source is full prepare stops reading it (`wants`), so a 50 M-token
budget of a hub dataset downloads about 50 M tokens' worth, not the dataset."""

from __future__ import annotations

from typing import Optional

from cpt.config.schema import SourceConfig
from cpt.model.tokenizer import Tokenizer, worker_encoder


class Budgets:
    def __init__(self, sources: list[SourceConfig], tokenizer: Tokenizer):
        self.limits = {s.name: (s.max_docs, s.max_tokens) for s in sources if s.max_docs or s.max_tokens}
        self.docs = dict.fromkeys(self.limits, 0)
        self.tokens = dict.fromkeys(self.limits, 0)
        self.full: set[str] = set()
        # the packer's encoder (same ids), built only where a token budget needs it
        self.encoder = worker_encoder(tokenizer) if any(t for _, t in self.limits.values()) else None

    def wants(self, source: str) -> bool:
        """Whether the source still takes documents (what the readers are asked for)."""
        return source not in self.full

    def admit(self, source: str, text: str) -> bool:
        """True: keep this document (and count it); False: the source is full, drop it."""
        if source not in self.limits:
            return True
        if source in self.full:
            return False
        max_docs, max_tokens = self.limits[source]
        tokens = len(self.encoder.encode_batch([text])[0]) + 1 if max_tokens else 0  # + EOS, as packed
        over_docs = max_docs and self.docs[source] + 1 > max_docs
        if over_docs or (max_tokens and self.tokens[source] + tokens > max_tokens):
            self.full.add(source)
            return False
        self.docs[source] += 1
        self.tokens[source] += tokens
        if (max_docs and self.docs[source] == max_docs) or (max_tokens and self.tokens[source] == max_tokens):
            self.full.add(source)
        return True

    def summary(self, source: str) -> Optional[str]:
        if source not in self.limits:
            return None
        max_docs, max_tokens = self.limits[source]
        state = "reached" if source in self.full else "not reached (the source has less)"
        return (f"budget {state}: {self.docs[source]} documents" + (f" (max_docs {max_docs})" if max_docs else "")
                + (f", {self.tokens[source]} tokens (max_tokens {max_tokens})" if max_tokens else ""))
