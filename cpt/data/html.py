"""HTML (`.html`, `.htm`, `.xhtml`, also compressed) -> one document per page: the page's text without navigation,
page headers and footers and sidebars; headings, paragraphs, lists (one "•" item per line), tables and preformatted
blocks kept. The page's <title> goes to metadata "title".

Extractor: resiliparse's `extract_plain_text` (C++), after removing the elements that mark navigation, headers,
footers and sidebars (`NAVIGATION`: <nav>, <aside>, <footer>, their ARIA roles, and class / id names such as DocBook's
navheader/navfooter or Sphinx's sphinxsidebar/footer). data.convert.html_main_content=true adds resiliparse's
main-content rules, for web pages without such markup (the default for the pages of WARC archives: cpt.data.warc).
bench/html_extract.py chose this on two real manuals (DocBook and Sphinx): no navigation text, >= 99.5% of the body's
paragraphs and headings kept, 2,278 / 61 pages/s; trafilatura dropped 80-86% of the DocBook section headings at
13-95 pages/s, resiliparse's main-content rules alone leaked every DocBook navigation bar and dropped 17-22% of list
items, inscriptis has no main-content step (BENCHMARKS.md, "HTML extraction")."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.encoding import bytes_to_str, detect_encoding
from resiliparse.parse.html import HTMLTree

from cpt.config.schema import ConvertConfig
from cpt.data.compressed import open_binary
from cpt.data.read_errors import EmptyFileError, FileError, OnRecordError

# what marks navigation, page headers and footers, sidebars (and Sphinx's "¶" heading permalinks): HTML5 elements and
# roles, and conservative class / id names ("menu" would also match DocBook's inline "menuchoice", "header" an
# article's own header)
_NAMES = ("navheader", "navfooter", "navbar", "navigation", "breadcrumb", "skip-link", "skiplink", "footer", "sidebar",
          "headerlink")
NAVIGATION = ", ".join(["nav", "aside", "footer", "[role=navigation]", "[role=contentinfo]", "[role=complementary]",
                        "[role=search]", *(f"[{attr}*={name}]" for attr in ("class", "id") for name in _NAMES)])


def html_to_text(html: str | bytes, main_content: bool = False) -> tuple[str, str]:
    """(text, title) of one page; bytes are decoded by their declared or detected encoding. main_content: resiliparse's
    boilerplate rules on top of removing NAVIGATION (False: every other element's text)."""
    if isinstance(html, bytes):
        html = bytes_to_str(html, detect_encoding(html))
    tree = HTMLTree.parse(html)
    if tree.body is not None:
        for node in list(tree.body.query_selector_all(NAVIGATION)):
            if node.parent is not None:
                node.parent.remove_child(node)
    text = extract_plain_text(tree, main_content=main_content, list_bullets=True, alt_texts=False, links=False,
                              form_fields=False, noscript=False)
    return text, (tree.title or "").strip()


def read_html(path: Path, cfg: ConvertConfig, on_record_error: OnRecordError) -> Iterator[dict]:
    with open_binary(path) as f:
        data = f.read()
    try:
        text, title = html_to_text(data, cfg.html_main_content is True)  # null: off for files
    except Exception as e:  # the parser is lenient: what reaches here is a file it cannot take at all
        raise FileError(path, f"not readable as HTML ({type(e).__name__}: {e}): check the file, or set the "
                              "source's `format` if it is not HTML") from None
    if not text.strip():
        raise EmptyFileError(path, "no main text in the page (navigation or markup only)")
    yield {"text": text, **({"title": title} if title else {})}
