"""Long documents are cut at the coarsest boundary that keeps each chunk within data.chunk_chars."""

from __future__ import annotations

from cpt.data.chunk import split_document


def test_short_text_is_one_piece_and_page_breaks_become_blank_lines():
    assert split_document("page one\fpage two", 100) == [("page one\n\npage two", {})]
    assert split_document("x" * 500, None) == [("x" * 500, {})]


def test_paragraphs_are_grouped_up_to_the_limit():
    paragraphs = [f"Paragraph {i}. " + "word " * 20 for i in range(10)]  # ~115 characters each
    pieces = split_document("\n\n".join(paragraphs), 300)
    assert all(len(text) <= 300 for text, _ in pieces)
    assert [meta["chunk"] for _, meta in pieces] == list(range(len(pieces))) and len(pieces) == 5
    # every cut between two paragraphs, as many whole paragraphs per chunk as fit (a fixed-width cutter would split
    # paragraphs)
    assert [text for text, _ in pieces] == ["\n\n".join(paragraphs[i:i + 2]) for i in range(0, 10, 2)]


def test_pdf_pages_are_grouped_and_their_range_recorded():
    pages = [f"Page {i} " + "text " * 30 for i in range(1, 8)]  # ~157 characters each
    pieces = split_document("\f".join(pages), 400)
    assert [meta["page_range"] for _, meta in pieces] == [[1, 2], [3, 4], [5, 6], [7, 7]]
    assert pieces[0][0] == pages[0] + "\n\n" + pages[1]


def test_a_paragraph_longer_than_the_limit_is_cut_at_lines_then_spaces_then_anywhere():
    pieces = split_document("one line\n" + "w" * 250 + " tail", 100)
    # the line end first, then the space, then the 250-character word in 100-character cuts
    assert [text for text, _ in pieces] == ["one line", "w" * 100, "w" * 100, "w" * 50, "tail"]
