"""Benchmark (not a test): HTML main-content extractors on real pages — speed, navigation leaking into the text,
body text kept. It chose the extractor of cpt.data.html (see BENCHMARKS.md, "HTML extraction").

    python bench/html_extract.py [--pages 300] [--corpus postgresql python]

Pages (every k-th page of the sorted listing), two site layouts from Debian documentation packages:
  postgresql  the PostgreSQL 15 manual (`apt-get install postgresql-doc-15`): DocBook XHTML, navigation tables above
              and below the body (div.navheader / div.navfooter: "Prev", "Up", "Home", "Next", neighbours' titles)
  python      the Python 3.11 documentation (`apt-get install python3.11-doc`): Sphinx, navigation bars
              (div.related, <nav>), a sidebar (div.sphinxsidebar: contents, "Previous topic", "This Page"...), a
              footer (div.footer: copyright, "Found a bug?")
The truth is read from the markup: the navigation elements' texts that are not also body texts ("nav-only"), and the
body's paragraph, heading and list-item texts (tables of contents left out of both). Measured per extractor:
  pages/s          one process, the HTML already in memory (str), the whole extraction call
  nav leak         pages whose output has a nav-only text: a text of 12+ characters anywhere, a shorter one (a
                   link: "Prev", "next", "index") as a whole segment (lines cut at tabs, "|", "»", 2+ spaces)
  paragraphs kept  body <p> texts (>= 40 chars) found whole in the output, whitespace-normalized: share over all pages
  headings / items the same for body <h1>-<h4> and <li> texts
Extractors that are not installed are left out (`pip install trafilatura==2.3.1 resiliparse==2.0.0
inscriptis==2.7.6`).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import lxml.html

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # cpt from this checkout

CORPORA = {
    "postgresql": (Path("/usr/share/doc/postgresql-doc-15/html"), "*.html",
                   '//div[@class="navheader" or @class="navfooter"]', '//div[@class="toc"]'),
    "python": (Path("/usr/share/doc/python3.11/html"), "library/*.html",
               '//div[@class="related" or @class="sphinxsidebar" or @class="footer" or @class="mobile-nav"]'
               '|//nav|//*[@role="navigation"]', '//div[@class="toctree-wrapper compound"]'),
}
_SEGMENTS = re.compile(r"[\t|»\n]+| {2,}")
LONG = 12  # a nav-only text this long counts as leaked anywhere in the output; a shorter one as a whole segment


def _norm(text: str) -> str:
    return " ".join(text.split())


def truth(html: str, nav_xpath: str, toc_xpath: str) -> dict[str, list[str]]:
    """What the page holds, read from the markup: nav-only texts, and the body's paragraph, heading and list-item
    texts."""
    root = lxml.html.fromstring(html.encode("utf-8"))
    for link in root.xpath('//a[@class="headerlink"]'):  # Sphinx's "¶" permalinks: markup, not text
        link.drop_tree()
    nav = [_norm(e.text_content()) for n in root.xpath(nav_xpath) for e in n.iter() if e.tag == "a"]
    nav += [_norm(t) for n in root.xpath(nav_xpath) for e in n.iter() for t in (e.text, e.tail) if t]
    for node in root.xpath(nav_xpath):
        if node.getparent() is not None:
            node.drop_tree()
    body = _norm(root.text_content())  # a table of contents is not navigation leaking, and not body text either
    out = {"nav": sorted({t for t in nav if len(t) >= 3 and t not in body})}
    for node in root.xpath(toc_xpath):
        node.drop_tree()
    texts = {"paragraphs": "//p", "headings": "//h1|//h2|//h3|//h4", "items": "//li"}
    for kind, xpath in texts.items():
        found = [_norm(e.text_content()) for e in root.xpath(xpath)]
        out[kind] = [t for t in found if len(t) >= (40 if kind == "paragraphs" else 3)]
    return out


def extractors() -> dict:
    found = {}
    try:
        import trafilatura

        found["trafilatura 2.3.1 (include_tables)"] = lambda html: trafilatura.extract(
            html, include_comments=False, include_tables=True, deduplicate=False) or ""
        found["trafilatura (favor_recall)"] = lambda html: trafilatura.extract(
            html, include_comments=False, include_tables=True, favor_recall=True) or ""
    except ImportError:
        pass
    try:
        from resiliparse.extract.html2text import extract_plain_text
        from resiliparse.parse.html import HTMLTree

        found["resiliparse 2.0.0 (main_content)"] = lambda html: extract_plain_text(
            HTMLTree.parse(html), main_content=True, list_bullets=True, alt_texts=False, links=False)
    except ImportError:
        pass
    try:
        from cpt.data.html import html_to_text

        found["cpt.data.html (resiliparse, main_content=false, + navigation selectors)"] = \
            lambda html: html_to_text(html, main_content=False)[0]
        found["cpt.data.html (resiliparse, main_content=true, + navigation selectors)"] = \
            lambda html: html_to_text(html, main_content=True)[0]
    except ImportError:
        pass
    try:
        import inscriptis

        found["inscriptis 2.7.6 (whole page)"] = inscriptis.get_text
    except ImportError:
        pass
    return found


def measure(name: str, extract, pages: list[str], truths: list[dict]) -> dict:
    start = time.perf_counter()
    outputs = [extract(html) for html in pages]
    seconds = time.perf_counter() - start
    leaks = 0
    for out, t in zip(outputs, truths):
        segments, flat = {_norm(seg) for seg in _SEGMENTS.split(out)}, _norm(out)
        leaks += any(text in flat if len(text) >= LONG else text in segments for text in t["nav"])
    row = {"extractor": name, "pages/s": len(pages) / seconds, "nav leak": leaks / len(pages)}
    for kind in ("paragraphs", "headings", "items"):
        hits = total = 0
        for out, t in zip(outputs, truths):
            flat = _norm(out)
            total += len(t[kind])
            hits += sum(text in flat for text in t[kind])
        row[f"{kind} kept"] = hits / max(total, 1)
    row["empty outputs"] = sum(not out.strip() for out in outputs)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", nargs="+", choices=sorted(CORPORA), default=sorted(CORPORA))
    parser.add_argument("--pages", type=int, default=300, help="per corpus")
    args = parser.parse_args()
    for corpus in args.corpus:
        directory, pattern, nav_xpath, toc_xpath = CORPORA[corpus]
        files = sorted(directory.glob(pattern))
        if not files:
            print(f"{corpus}: no {pattern} in {directory}: apt-get install its package (see --help); left out\n")
            continue
        chosen = files[:: max(1, len(files) // args.pages)][: args.pages]
        pages = [f.read_text(encoding="utf-8") for f in chosen]
        truths = [truth(html, nav_xpath, toc_xpath) for html in pages]
        size = sum(len(p.encode()) for p in pages)
        print(f"### {corpus}: {len(pages)} pages of {directory} ({size / 1e6:.1f} MB of HTML); truth: "
              + ", ".join(f"{sum(len(t[k]) for t in truths)} {k}" for k in ("nav", "paragraphs", "headings", "items"))
              + "\n")
        rows = [measure(name, extract, pages, truths) for name, extract in extractors().items()]
        cols = ["extractor", "pages/s", "nav leak", "paragraphs kept", "headings kept", "items kept", "empty outputs"]
        print("| " + " | ".join(cols) + " |")
        print("|" + "---|" * len(cols))
        for row in rows:
            cells = [row["extractor"], f"{row['pages/s']:.0f}"] + [f"{row[c]:.1%}" for c in cols[2:6]]
            print("| " + " | ".join(cells + [str(row["empty outputs"])]) + " |")
        print()


if __name__ == "__main__":
    main()
