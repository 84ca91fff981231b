"""Word documents (`.docx`) -> one document per file (python-docx): paragraphs and headings as paragraphs, tables row by
row (cells joined by " | ", one row per line; a table nested in a cell inline in it), in document order, blocks
separated by a blank line. Page headers and footers are left out (running text, as in PDFs); footnotes and endnotes
follow the body as a "Notes" block, one "[n] text" line each. The core properties' title, when set, goes to metadata
"title". A file that is not a readable .docx (damaged zip, missing parts, an old binary .doc renamed) raises
FileError."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import docx
from docx.opc.constants import RELATIONSHIP_TYPE as RT
from docx.opc.exceptions import OpcError
from docx.oxml.ns import qn
from docx.table import Table
from lxml import etree
from lxml.etree import LxmlError

from cpt.config.schema import ConvertConfig
from cpt.data.read_errors import EmptyFileError, FileError, OnRecordError

CELL_SEPARATOR = " | "


def _table_rows(table: Table, cell_separator: str = CELL_SEPARATOR) -> list[str]:
    rows = []
    for row in table.rows:
        cells, seen = [], set()
        for cell in row.cells:  # a merged cell comes once per grid column it spans: written once
            if id(cell._tc) not in seen:
                seen.add(id(cell._tc))
                cells.append(_cell_text(cell))
        if any(cells):
            rows.append(cell_separator.join(cells))
    return rows


def _cell_text(cell) -> str:
    """A cell's paragraphs and the tables nested in it (python-docx's cell.text leaves those out), on one line: a
    nested table's rows separated by "; ", its cells by ", "."""
    parts = []
    for item in cell.iter_inner_content():
        text = "; ".join(_table_rows(item, ", ")) if isinstance(item, Table) else item.text
        parts.append(" ".join(text.split()))
    return " ".join(part for part in parts if part)


_NOT_A_NOTE = {"separator", "continuationSeparator", "continuationNotice"}  # Word's own rules above the notes


def _notes(document) -> list[str]:
    """The footnotes, then the endnotes, in their parts' order (python-docx has no API for them: read from the
    parts' XML), one line each."""
    notes = []
    for relation, tag in ((RT.FOOTNOTES, "w:footnote"), (RT.ENDNOTES, "w:endnote")):
        try:
            part = document.part.part_related_by(relation)
        except KeyError:  # the document has none
            continue
        for note in etree.fromstring(part.blob).iterchildren(qn(tag)):
            if note.get(qn("w:type")) in _NOT_A_NOTE:
                continue
            text = " ".join("".join(t.text or "" for t in par.iter(qn("w:t"))) for par in note.iter(qn("w:p")))
            if text.strip():
                notes.append(" ".join(text.split()))
    return notes


def read_docx(path: Path, cfg: ConvertConfig, on_record_error: OnRecordError) -> Iterator[dict]:
    try:
        document = docx.Document(str(path))
        blocks = []
        for item in document.iter_inner_content():
            if isinstance(item, Table):
                rows = _table_rows(item)
                if rows:
                    blocks.append("\n".join(rows))
            elif item.text.strip():
                blocks.append(item.text.strip())
        notes = _notes(document)
        if notes:
            blocks.append("Notes\n" + "\n".join(f"[{n}] {note}" for n, note in enumerate(notes, 1)))
        title = document.core_properties.title
    except (OpcError, zipfile.BadZipFile, KeyError, ValueError, LxmlError) as e:
        raise FileError(path, f"not a readable .docx ({type(e).__name__}: {e}): damaged or incomplete, or another "
                              "format renamed (.doc?): open and save it again as .docx, or convert it, e.g. "
                              "`libreoffice --headless --convert-to docx FILE`") from None
    if not blocks:
        raise EmptyFileError(path, "no text in the document")
    yield {"text": "\n\n".join(blocks), **({"title": title} if title else {})}
