"""WARC web archives (`.warc`, `.warc.gz` — Common Crawl's, `wget --warc-file`'s, Heritrix's — also .zst/.bz2/.xz) ->
one document per HTML page. Read as a stream by warcio (through cpt.data.compressed, so a damaged or truncated
archive keeps the pages before the break and says where it broke, as every compressed file does): each `response`
record with HTTP status 200 and an HTML content type, its payload decoded (chunked transfer, gzip/deflate content
encodings; a page warcio cannot decode, e.g. brotli, is a record error), is extracted as an HTML file is
(cpt.data.html) — with resiliparse's main-content rules unless data.convert.html_main_content=false: crawled pages
carry menus, cookie banners and footers no markup names. Metadata: "url" (WARC-Target-URI), "date" (WARC-Date),
"record" (the record's number in the file), "title".

Records that hold no page (warcinfo, request, metadata, revisit, resource) are passed over; responses that are not HTML
(images, PDFs, scripts) or not status 200 (redirects, errors), and pages with no main text, are counted per file as
`not_html` / `not_200` / `no_main_text`. Every record is read to its end: a record cut short (fewer bytes than its
Content-Length), whatever its type, or a record warcio cannot parse ends the file, the pages before it kept."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Optional

from warcio.archiveiterator import ArchiveIterator

from cpt.config.schema import ConvertConfig
from cpt.data.compressed import CorruptDataError, open_binary
from cpt.data.html import html_to_text
from cpt.data.read_errors import SKIP, EmptyFileError, FileError, OnRecordError

HTML_TYPES = ("text/html", "application/xhtml+xml")


def read_warc(path: Path, cfg: ConvertConfig, on_record_error: OnRecordError) -> Iterator[dict]:
    main_content = cfg.html_main_content is not False  # null (default): on for crawled pages
    pages = number = 0
    with open_binary(path) as f:
        records = ArchiveIterator(f)
        while True:
            try:
                record = next(records, None)
            except CorruptDataError:
                raise  # the compressed stream broke: reported as any compressed file (cpt.data.convert)
            except Exception as e:  # warcio on a broken record (ArchiveLoadFailed, or its own errors on a header cut
                # short): the archive cannot be followed past it
                raise FileError(path, _broken(pages, f"record {number + 1} cannot be read ({type(e).__name__}: "
                                                     f"{' '.join(str(e).split())[:120]})")) from None
            if record is None:
                break
            number += 1
            if record.format != "warc":  # warcio takes any other line for an (old, headerless) ARC record
                raise FileError(path, _broken(pages, f"record {number} has no WARC header (not a WARC file?)"))
            page = _page(record, number, main_content, on_record_error)
            while record.raw_stream.read(1 << 16):  # the rest of the record (all of it when it held no page)
                pass
            if getattr(record.raw_stream, "limit", 0):  # fewer bytes than its Content-Length: the archive ends here
                raise FileError(path, _broken(pages, f"record {number} is cut short (a truncated archive)"))
            if page is not None:
                pages += 0 if SKIP in page else 1
                yield page
    if not pages:
        raise EmptyFileError(path, "no HTML page with status 200 in the archive")


def _page(record, number: int, main_content: bool, on_record_error: OnRecordError) -> Optional[dict]:
    """A response record's page as a document, {SKIP: reason} for a response that is no page, None for a record
    of another type (or a payload that does not decode: a record error)."""
    if record.rec_type != "response":
        return None
    http = record.http_headers
    if http is None or (http.get_header("Content-Type") or "").split(";")[0].strip().lower() not in HTML_TYPES:
        return {SKIP: "not_html"}
    if http.get_statuscode() != "200":
        return {SKIP: "not_200"}
    try:
        payload = record.content_stream().read()
    except Exception as e:  # a content encoding that does not decode (brotli: warcio 1.8.1 fails on it): this page
        on_record_error(number, f"payload not decodable ({type(e).__name__}: {e})")
        return None
    text, title = html_to_text(payload, main_content)
    if not text.strip():  # a page of scripts or images only: common in crawls, not an error
        return {SKIP: "no_main_text"}
    return {"text": text, "url": record.rec_headers.get_header("WARC-Target-URI"),
            "date": record.rec_headers.get_header("WARC-Date"), "record": number, **({"title": title} if title else {})}


def _broken(pages: int, why: str) -> str:
    kept = f"the {pages} page(s) before it are kept" if pages else "no page was read before it"
    return f"{why}; {kept}: download the archive again, or look at its records with `warcio index FILE`"
