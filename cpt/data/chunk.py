"""Long documents cut into chunks before dedup and split (`data.chunk_chars`): a book or a manual then yields a
validation share, and near-duplicate detection works on sections instead of whole books.

Cuts fall at the coarsest boundary that keeps a chunk within the limit: page breaks (PDFs mark them with \\f), then
blank lines (paragraphs), then line ends, then spaces, then anywhere. Each chunk records its index, and for PDFs the
pages it covers."""

from __future__ import annotations

from typing import Optional

PAGE_BREAK = "\f"
SEPARATORS = ("\n\n", "\n", " ")


def split_document(text: str, max_chars: Optional[int]) -> list[tuple[str, dict]]:
    """[(chunk text, metadata)]; one piece without metadata when the text fits (or max_chars is None). Page breaks
    become blank lines in every piece."""
    if max_chars is None or len(text) <= max_chars:
        return [(text.replace(PAGE_BREAK, "\n\n"), {})]
    if PAGE_BREAK in text:
        pages = text.split(PAGE_BREAK)
        pieces = []
        for first, last in _spans([len(p) for p in pages], 2, max_chars):
            joined = "\n\n".join(pages[first:last + 1])
            pieces += [(piece, {"page_range": [first + 1, last + 1]}) for piece in _pieces(joined, max_chars)]
    else:
        pieces = [(piece, {}) for piece in _pieces(text, max_chars)]
    return [(piece, {**meta, "chunk": i}) for i, (piece, meta) in enumerate(pieces)]


def _spans(lengths: list[int], sep_len: int, max_chars: int) -> list[tuple[int, int]]:
    """Greedy groups of consecutive units (first, last index) whose joined length stays within max_chars; a unit
    longer than that is a group of its own."""
    spans, first, size = [], 0, lengths[0] if lengths else 0
    for i in range(1, len(lengths)):
        if size + sep_len + lengths[i] <= max_chars:
            size += sep_len + lengths[i]
        else:
            spans.append((first, i - 1))
            first, size = i, lengths[i]
    spans.append((first, len(lengths) - 1))
    return spans


def _pieces(text: str, max_chars: int, separators: tuple[str, ...] = SEPARATORS) -> list[str]:
    if len(text) <= max_chars:
        return [text]
    if not separators:
        return [text[i:i + max_chars] for i in range(0, len(text), max_chars)]
    sep, finer = separators[0], separators[1:]
    units = text.split(sep)
    pieces = []
    for first, last in _spans([len(u) for u in units], len(sep), max_chars):
        pieces += _pieces(sep.join(units[first:last + 1]), max_chars, finer)
    return [p for p in pieces if p.strip()]
