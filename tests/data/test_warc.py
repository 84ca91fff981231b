"""WARC web archives as a source of cpt.prepare (cpt.data.warc), on archives the tests write record by record as
crawlers do (one gzip member per record): one document per HTML page with status 200, its url, date and title; the
crawled pages' menus, cookie banners and footers removed; other responses counted; a truncated or foreign archive
reported with the pages before the break kept, the other files prepared. And data.convert.html_main_content for
.html files."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

from data.test_prepare import data_cfg, docs

from cpt.data.file_stage import FileResult
from cpt.data.prepare import prepare
from cpt.data.slurm_prepare import _decode, _encode

BOILERPLATE = ("Pricing", "Contact us", "We use cookies", "All rights reserved")


def web_page(title: str, body: str) -> str:
    """A crawled page: a menu, a cookie banner and a footer no markup names as navigation, around the article."""
    return (f"<html><head><title>{title}</title></head><body>"
            '<div class="top-menu"><ul><li><a href="/">Home</a></li><li><a href="/p">Pricing</a></li>'
            '<li><a href="/c">Contact us</a></li></ul></div>'
            '<div class="cookie-banner">We use cookies to improve your experience. <a href="/ok">Accept</a></div>'
            f'<div id="content"><h1>{title}</h1><p>{body}</p></div>'
            '<div class="copyright">Copyright 2024 Example Ltd. All rights reserved. <a href="/t">Terms</a></div>'
            "</body></html>")


def sentences(seed: int, words: int = 60) -> str:
    rng = random.Random(seed)
    vocabulary = ("lease tenant landlord notice deposit repair clause term party written agreement court months "
                  "payment rent property damage law contract").split()
    return " ".join(rng.choice(vocabulary) for _ in range(words)) + "."


def record(kind: str, uri: str, payload: bytes = b"", status: str = "200 OK", content_type: str = "text/html",
           headers: str = "") -> bytes:
    """One WARC/1.0 record; a response carries an HTTP message (status line, headers, payload)."""
    if kind == "response":
        block = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n{headers}"
                 f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload
        block_type = "application/http; msgtype=response"
    else:
        block, block_type = payload, "application/warc-fields"
    head = (f"WARC/1.0\r\nWARC-Type: {kind}\r\nWARC-Target-URI: {uri}\r\nWARC-Date: 2024-03-0{len(uri) % 9 + 1}"
            f"T10:00:00Z\r\nWARC-Record-ID: <urn:uuid:{abs(hash((kind, uri)))}>\r\nContent-Type: {block_type}\r\n"
            f"Content-Length: {len(block)}\r\n\r\n").encode()
    return head + block + b"\r\n\r\n"


def chunked(data: bytes, size: int = 50) -> bytes:
    return b"".join(b"%x\r\n" % len(data[i : i + size]) + data[i : i + size] + b"\r\n"
                    for i in range(0, len(data), size)) + b"0\r\n\r\n"


def crawl() -> list[bytes]:
    """warcinfo, a request, 3 pages (one gzip-encoded, one chunked), an image, a 404, a redirect, a script-only page."""
    return [record("warcinfo", "", b"software: cpt-tests\r\n"), record("request", "https://law.example/lease"),
            record("response", "https://law.example/lease", web_page("Lease notice", sentences(1)).encode()),
            record("response", "https://law.example/logo.png", b"\x89PNG\r\n\x1a\n....", content_type="image/png"),
            record("response", "https://law.example/old", web_page("Gone", sentences(2)).encode(),
                   status="404 Not Found"),
            record("response", "https://law.example/moved", b"", status="301 Moved Permanently",
                   headers="Location: https://law.example/new\r\n"),
            record("response", "https://law.example/deposit",
                   gzip.compress(web_page("Deposit rules", sentences(3)).encode()),
                   content_type="text/html; charset=utf-8", headers="Content-Encoding: gzip\r\n"),
            record("response", "https://law.example/repairs",
                   chunked(web_page("Repairs", sentences(4)).encode()), headers="Transfer-Encoding: chunked\r\n"),
            record("response", "https://law.example/app", b"<html><body><script>start()</script></body></html>")]


def prepared_pages(out: Path) -> dict[str, dict]:
    return {d["url"]: d for split in ("train", "val") for d in docs(out, "web", split)}


def test_warc_pages_become_documents_with_their_url_and_the_rest_is_counted(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "crawl.warc.gz").write_bytes(b"".join(gzip.compress(r) for r in crawl()))
    out = prepare(data_cfg(tmp_path, [{"name": "web", "paths": [str(src)]}], "data.clean.min_chars=20"))
    pages = prepared_pages(out)
    assert sorted(pages) == ["https://law.example/deposit", "https://law.example/lease", "https://law.example/repairs"]
    lease = pages["https://law.example/lease"]
    assert lease["title"] == "Lease notice" and lease["date"] == "2024-03-08T10:00:00Z" and lease["record"] == 3
    assert sentences(1) in lease["text"] and sentences(3) in pages["https://law.example/deposit"]["text"]
    assert sentences(4) in pages["https://law.example/repairs"]["text"]  # de-chunked
    assert not any(b in page["text"] for page in pages.values() for b in BOILERPLATE)  # main content by default
    (entry,) = json.loads((out / "report.json").read_text())["files"]
    assert entry["status"] == "ok" and entry["dropped"] == {"not_html": 1, "not_200": 2, "no_main_text": 1}


def test_main_content_is_on_for_crawled_pages_and_off_for_html_files_unless_set(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "page.html").write_text(web_page("Lease notice", sentences(1)))
    (src / "crawl.warc").write_bytes(b"".join(crawl()))
    texts = {}
    for setting in ("null", "true", "false"):
        out = prepare(data_cfg(tmp_path / setting, [{"name": "web", "paths": [str(src)]}], "data.clean.min_chars=20",
                               f"data.convert.html_main_content={setting}", "data.dedup.near=false",
                               "data.dedup.exact=false"))
        kept = [d for split in ("train", "val") for d in docs(out, "web", split)]
        texts[setting] = {"html": next(d["text"] for d in kept if "url" not in d),
                          "warc": next(d["text"] for d in kept if d.get("url") == "https://law.example/lease")}
    for setting, kinds in texts.items():
        for kind, text in kinds.items():
            assert sentences(1) in text
            main_content = setting == "true" or (setting == "null" and kind == "warc")
            assert all(b not in text for b in BOILERPLATE) if main_content else all(b in text for b in BOILERPLATE), \
                (setting, kind, text)


def test_a_truncated_or_foreign_archive_is_reported_and_the_rest_is_prepared(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    pages = [[record("response", f"https://law.example/{n}", web_page(f"Page {n}", sentences(n, 4000)).encode())
              for n in range(first, first + 12)] for first in (0, 100)]  # two archives, no page in both
    plain = b"".join(pages[0])
    (src / "cut.warc").write_bytes(plain[: len(plain) - 500])  # the last record ends early
    members = b"".join(gzip.compress(r) for r in pages[1])
    (src / "cut.warc.gz").write_bytes(members[: len(members) - 400])  # the last gzip member ends early
    image = record("response", "https://law.example/scan.png", b"\x89PNG" + bytes(range(256)) * 40,
                   content_type="image/png")
    two = {seed: b"".join(record("response", f"https://law.example/{n}", web_page(f"P{n}", sentences(n)).encode())
                          for n in (seed, seed + 1)) for seed in (20, 30)}  # pages no other file has
    (src / "cut-image.warc").write_bytes(two[20] + image[:-3000])  # cut inside a record that is no page
    third = record("response", "https://law.example/y", web_page("Y", sentences(10)).encode())
    (src / "cut-header.warc").write_bytes(two[30] + third[:40])  # cut inside a WARC header
    (src / "notes.warc").write_text("these are notes, not a web archive\n" * 20)
    (src / "good.warc").write_bytes(b"".join(crawl()))
    out = prepare(data_cfg(tmp_path, [{"name": "web", "paths": [str(src)]}], "data.clean.min_chars=20",
                           "data.dedup.near=false"))
    report = {Path(f["path"]).name: f for f in json.loads((out / "report.json").read_text())["files"]}
    assert report["cut.warc"]["status"] == "partly_read" and report["cut.warc"]["kept"] == 11
    assert "record 12 is cut short" in report["cut.warc"]["error"]
    assert "the 11 page(s) before it are kept" in report["cut.warc"]["error"]
    assert report["cut.warc.gz"]["status"] == "partly_read" and 0 < report["cut.warc.gz"]["kept"] < 12
    assert "gzip -t cut.warc.gz" in report["cut.warc.gz"]["error"]
    assert report["cut-image.warc"]["status"] == "partly_read" and report["cut-image.warc"]["kept"] == 2
    assert "record 3 is cut short" in report["cut-image.warc"]["error"]
    assert report["cut-header.warc"]["status"] == "partly_read" and report["cut-header.warc"]["kept"] == 2
    assert "record 3 cannot be read" in report["cut-header.warc"]["error"]
    assert report["notes.warc"]["status"] == "error" and "has no WARC header" in report["notes.warc"]["error"]
    assert report["good.warc"]["status"] == "ok" and report["good.warc"]["kept"] == 3


def test_skipped_counts_survive_a_slurm_shard():
    """What a Slurm array task writes for a file and the finishing prepare reads back keeps the skipped counts (the
    row filter's and a reader's)."""
    result = FileResult(format="warc", skipped={"not_html": 2, "filtered_out": 5})
    assert _decode(json.loads(json.dumps(_encode(result)))).skipped == {"not_html": 2, "filtered_out": 5}
