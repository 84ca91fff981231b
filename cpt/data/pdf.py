"""PDF -> one document: text page by page (pdfplumber), running headers/footers and dot-leader lines removed,
pages joined by page breaks (\\f) so that chunking (cpt.data.chunk) cuts there first and records page ranges.

Reading the pages is what costs (a 2,400-page manual: ~90 s in one process), so a big PDF can be read in page
ranges by several workers (`read_pages`) and put together afterwards (`to_record`), with the same result as one
`read_pdf` over the whole file: the running-line statistics need every page, so they run on the joined pages."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Optional

from cpt.config.schema import ConvertConfig
from cpt.data.read_errors import FileError, OnRecordError

# table-of-contents / index lines: "2.1 Installing R . . . . 12", "Introduction....5", "abline . . . 67, 70"
_DOT_LEADER = re.compile(r"(?:\.\s*){4,}(?:\d+|[ivxlcdm]+)(?:\s*,\s*\d+)*\s*$", re.IGNORECASE)
_LEADING_NUMBER = re.compile(r"^(\d+)\b")
_TRAILING_NUMBER = re.compile(r"\b(\d+)$")

Pages = list[list[str]]  # the text lines of each page

_open: dict = {}  # this process's open PDF {(path, size, mtime): pdfplumber.PDF}: parts of one file reuse it


def read_pdf(path: Path, cfg: ConvertConfig, on_record_error: OnRecordError) -> dict:
    """The whole file as one record {"text", "pages"}."""
    try:
        return to_record(path, read_pages(path, cfg, on_record_error))
    finally:
        close()


def page_count(path: Path) -> Optional[int]:
    """The number of pages from the document catalog, without reading any page; None when the file cannot tell
    (damaged, encrypted: reading it whole then reports why)."""
    from pdfminer.pdfdocument import PDFDocument
    from pdfminer.pdfparser import PDFParser
    from pdfminer.pdftypes import resolve1

    try:
        with open(path, "rb") as f:
            return int(resolve1(resolve1(PDFDocument(PDFParser(f)).catalog["Pages"])["Count"]))
    except Exception:
        return None


def read_pages(path: Path, cfg: ConvertConfig, on_record_error: OnRecordError, first: int = 1,
               last: Optional[int] = None) -> Pages:
    """The text lines of pages first..last (1-based, inclusive; last=None: to the end). A page whose extraction
    fails is reported through on_record_error under its page number and counts as empty."""
    pdf = _opened(path)
    pages: Pages = []
    for n, page in enumerate(pdf.pages[first - 1:last], first):
        try:
            text = page.extract_text(x_tolerance=cfg.pdf_x_tolerance) or ""
        except Exception as e:
            on_record_error(n, f"page {n}: text extraction failed ({type(e).__name__}: {e}); page skipped")
            text = ""
        finally:
            page.close()  # flushes the page's cached characters: memory stays flat on big PDFs
        pages.append([line.strip() for line in text.splitlines() if line.strip()])
    return pages


def to_record(path: Path, pages: Pages) -> dict:
    """Every page of a file (in order) -> {"text", "pages"}; FileError when no page has text."""
    if not any(pages):
        raise FileError(path, f"no text layer in {len(pages)} page(s) (scanned images?): OCR it first, e.g. "
                              "`ocrmypdf in.pdf out.pdf`")
    kept = _drop_running_lines(pages)
    text = "\f".join("\n".join(line for line in lines if not _DOT_LEADER.search(line)) for lines in kept)
    return {"text": text.strip(), "pages": len(pages)}


def _opened(path: Path):
    """pdfplumber's PDF for `path`, opened once per process: listing the pages of a big file takes seconds, so the
    parts of one file that land on the same worker pay it once. Only the latest file stays open."""
    import pdfplumber
    from pdfminer.pdfdocument import PDFEncryptionError, PDFPasswordIncorrect

    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key in _open:
        return _open[key]
    close()
    pdf = None
    try:
        pdf = pdfplumber.open(path)
        pdf.pages  # noqa: B018  (lists every page now, where errors of a damaged page tree surface)
    except Exception as e:
        if pdf is not None:
            pdf.close()
        cause = e.args[0] if e.args and isinstance(e.args[0], Exception) else e
        if isinstance(cause, (PDFPasswordIncorrect, PDFEncryptionError)):
            raise FileError(path, "the PDF is encrypted (it needs a password): decrypt it first, e.g. "
                                  "`qpdf --password=PASSWORD --decrypt in.pdf out.pdf`") from None
        raise FileError(path, f"not a readable PDF ({type(cause).__name__}: {cause}): check that the file is "
                              "complete, or repair it, e.g. `qpdf in.pdf repaired.pdf`") from None
    _open[key] = pdf
    return pdf


def close() -> None:
    """Close the PDF this process keeps open, if any."""
    for pdf in _open.values():
        pdf.close()
    _open.clear()


def _edges(lines: list[str]) -> list[int]:
    """Indices of a page's first 2 and last 2 lines: where running headers and footers sit."""
    return sorted({*range(min(2, len(lines))), *range(max(0, len(lines) - 2), len(lines))})


def _shape(line: str) -> str:
    return re.sub(r"\d+", "#", " ".join(line.split()))


def _edge_numbers(lines: list[str], i: int) -> set[int]:
    """Numbers where a printed page number sits: the last token of an edge line, or the first token of the
    page's first line ("14 Chapter 2: ..."); elsewhere a leading number is a chapter's or a footnote's."""
    found = [_TRAILING_NUMBER.search(lines[i])] + ([_LEADING_NUMBER.search(lines[i])] if i == 0 else [])
    return {int(m.group(1)) for m in found if m}


def _drop_running_lines(pages: list[list[str]]) -> list[list[str]]:
    """Remove running headers/footers from the first 2 / last 2 lines of each page (PDFs of >= 4 pages):
    - a line whose shape (digit runs -> '#') sits there on at least half of the pages ("Page # of #", a title);
    - a line carrying the printed page number, found as the number that equals the page's position minus one
      constant offset on at least half of the pages (TeX's per-chapter "Chapter 2: Installing R 14").
    """
    if len(pages) < 4:
        return pages
    shapes: Counter = Counter()
    offsets: Counter = Counter()
    for p, lines in enumerate(pages):
        shapes.update({_shape(lines[i]) for i in _edges(lines)})
        offsets.update({p - n for i in _edges(lines) for n in _edge_numbers(lines, i)})
    half = len(pages) / 2
    running = {s for s, count in shapes.items() if count >= half}
    offset, hits = offsets.most_common(1)[0] if offsets else (0, 0)
    out = []
    for p, lines in enumerate(pages):
        drop = {i for i in _edges(lines)
                if _shape(lines[i]) in running or (hits >= half and p - offset in _edge_numbers(lines, i))}
        out.append([line for i, line in enumerate(lines) if i not in drop])
    return out
