"""WARC web archives (`.warc`, `.warc.gz` — Common Crawl's, `wget --warc-file`'s, Heritrix's — also .zst/.bz2/.xz)
-> one document per HTML page. Read as a stream by warcio (through cpt.data.compressed, so a damaged or truncated
archive keeps the pages before the break and says where it broke, as every compressed file does): each `response`
record with HTTP status 200 and an HTML content type, its payload decoded (chunked transfer, gzip/deflate/brotli
content encodings), is extracted as an HTML file is (cpt.data.html) — with resiliparse's main-content rules unless
data.convert.html_main_content=false: crawled pages carry menus, cookie banners and footers no markup names.
Metadata: "url" (WARC-Target-URI), "date" (WARC-Date), "record" (the record's number in the file), "title".

Records that hold no page (warcinfo, request, metadata, revisit, resource) are passed over; responses that are not
HTML (images, PDFs, scripts) or not status 200 (redirects, errors), and pages with no main text, are counted per
file as `not_html` / `not_200` / `no_main_text`.
A record cut short (its payload shorter than its Content-Length) ends the file: the pages before it are kept."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from warcio.archiveiterator import ArchiveIterator
from warcio.exceptions import ArchiveLoadFailed

from cpt.config.schema import ConvertConfig
from cpt.data.compressed import open_binary
from cpt.data.html import html_to_text
from cpt.data.read_errors import EmptyFileError, FileError, OnRecordError

HTML_TYPES = ("text/html", "application/xhtml+xml")
SKIP = "skip"  # a record {"skip": reason}: not a document, counted under that reason (cpt.data.file_stage)


def read_warc(path: Path, cfg: ConvertConfig, on_record_error: OnRecordError) -> Iterator[dict]:
    main_content = cfg.html_main_content is not False  # null (default): on for crawled pages
    pages = 0
    with open_binary(path) as f:
        records = ArchiveIterator(f)
        number = 0
        while True:
            try:
                record = next(records, None)
            except ArchiveLoadFailed as e:
                raise FileError(path, _broken(pages, f"record {number + 1} is not a WARC record "
                                                     f"({' '.join(str(e).split())[:120]})")) from None
            if record is None:
                break
            number += 1
            if record.format != "warc":  # warcio takes any other line for an (old, headerless) ARC record
                raise FileError(path, _broken(pages, f"record {number} has no WARC header (not a WARC file?)"))
            if record.rec_type != "response":
                continue
            status = record.http_headers.get_statuscode() if record.http_headers else None
            kind = (record.http_headers.get_header("Content-Type") or "") if record.http_headers else ""
            if kind.split(";")[0].strip().lower() not in HTML_TYPES:
                yield {SKIP: "not_html"}
                continue
            if status != "200":
                yield {SKIP: "not_200"}
                continue
            try:
                payload = record.content_stream().read()
            except Exception as e:  # a content encoding that does not decode: this page only
                on_record_error(number, f"payload not decodable ({type(e).__name__}: {e})")
                continue
            if record.raw_stream.limit:  # fewer bytes than the record's Content-Length: the archive ends here
                raise FileError(path, _broken(pages, f"record {number} is cut short (a truncated archive)"))
            text, title = html_to_text(payload, main_content)
            if not text.strip():  # a page of scripts or images only: common in crawls, not an error
                yield {SKIP: "no_main_text"}
                continue
            pages += 1
            yield {"text": text, "url": record.rec_headers.get_header("WARC-Target-URI"),
                   "date": record.rec_headers.get_header("WARC-Date"), "record": number,
                   **({"title": title} if title else {})}
    if not pages:
        raise EmptyFileError(path, "no HTML page with status 200 in the archive")


def _broken(pages: int, why: str) -> str:
    kept = f"the {pages} page(s) before it are kept" if pages else "no page was read before it"
    return f"{why}; {kept}: download the archive again, or look at its records with `warcio index FILE`"
