"""cpt.data.convert: one reader per format, on generated files (every format, every failure mode) and on real
corpora (the R manuals as PDF, the licensedcode-data license texts with YAML front matter).

Real corpora are skipped when missing (`python -m cpt.corpora`; `apt-get install r-doc-pdf`), unless
CPT_REQUIRE_CORPORA=1, which turns a missing corpus into a failure."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from conftest import real_corpus
from cpt.config.schema import ConvertConfig
from cpt.data.convert import FORMATS, convert_file, detect_format, expand_paths
from cpt.data.read_errors import FileError


def convert(path: Path, fmt: str | None = None, **options) -> tuple[list[dict], list[tuple[int, str]]]:
    """All documents of a file and the record errors reported on the way."""
    errors: list[tuple[int, str]] = []
    fmt = detect_format(path, fmt)
    docs = list(convert_file(path, fmt, ConvertConfig(**options), lambda n, msg: errors.append((n, msg))))
    json.dumps(docs)  # metadata must be JSON-serializable
    return docs, errors


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def write_pdf(path: Path, pages: list[list[str | list[str]]]) -> Path:
    """A minimal PDF, one text line per item (Helvetica, 14 pt apart); a list item is one line whose words
    are placed 2.75 pt apart (TJ kerning, no space characters), as TeX does."""

    def show(line: str | list[str]) -> str:
        if isinstance(line, str):
            return f"({line}) Tj"
        return "[" + " -250 ".join(f"({w})" for w in line) + "] TJ"

    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages)))  # page i: object 4 + 2i, its content 5 + 2i
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>",
               "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    for i, lines in enumerate(pages):
        ops = "".join(f"BT /F1 11 Tf 72 {750 - 14 * j} Td {show(line)} ET\n" for j, line in enumerate(lines))
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
                       f"/Resources << /Font << /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>")
        objects.append(f"<< /Length {len(ops)} >>\nstream\n{ops}endstream")
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for k, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{k} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return write(path, bytes(out))


# ------------------------------------------------------------------------------------------ paths and formats

def test_expand_paths_dirs_globs_and_missing(tmp_path, monkeypatch):
    for name in ["a/1.txt", "a/b/2.md", "a/.hidden.txt", "a/.git/x.txt", "c/3.txt", "c/d/4.txt", "c/d/5.csv"]:
        write(tmp_path / name, "x")
    monkeypatch.chdir(tmp_path)
    files = expand_paths(["a", "c/**/*.txt", "a/1.txt"], "data.sources[0].paths")
    assert [p.relative_to(tmp_path).as_posix() for p in files] == ["a/1.txt", "a/b/2.md", "c/3.txt", "c/d/4.txt"]
    assert all(p.is_absolute() for p in files)
    for missing in ["corpus/*.txt", "nothing.txt"]:
        with pytest.raises(FileNotFoundError, match=rf"config key 'data.sources\[1\].paths': '{re.escape(missing)}' "
                                                    "matches no file"):
            expand_paths(["a", missing], "data.sources[1].paths")


def test_detect_format_by_extension_and_override(tmp_path):
    assert {FORMATS[e] for e in (".txt", ".md", ".rst", ".text")} == {"text"}
    assert detect_format(tmp_path / "x.JSONL", None) == "jsonl"
    assert detect_format(tmp_path / "x.ndjson", None) == "jsonl"
    assert detect_format(tmp_path / "x.tsv", None) == "tsv"
    assert detect_format(tmp_path / "mit.LICENSE", "text") == "text"
    with pytest.raises(FileError, match=r"mit\.LICENSE: unknown extension '\.license': set the source's `format`"):
        detect_format(tmp_path / "mit.LICENSE", None)
    with pytest.raises(ValueError, match="choose one of arrow, csv, docx, html, json, jsonl, parquet, pdf, text, tsv"):
        detect_format(tmp_path / "x.txt", "rtf")


# ------------------------------------------------------------------------------------------ text

def test_text_front_matter_becomes_metadata(tmp_path):
    path = write(tmp_path / "doc.txt", "---\ntitle: Notes\ndate: 2024-05-01\ntags: [a, b]\n---\n\nBody one.\nTwo.\n")
    (doc,), errors = convert(path)
    assert errors == []
    assert doc["front_matter"] == {"title": "Notes", "date": "2024-05-01", "tags": ["a", "b"]}
    assert doc["text"] == "Body one.\nTwo.\n"
    (kept,), _ = convert(path, strip_front_matter=False)
    assert kept["text"].startswith("---\ntitle: Notes") and "front_matter" not in kept


def test_markdown_without_front_matter_is_one_document(tmp_path):
    path = write(tmp_path / "readme.md", "# Title\r\n\r\nA paragraph --- with dashes.\r\n\r\n---\r\n\r\nMore.\r\n")
    (doc,), errors = convert(path)
    assert errors == [] and set(doc) == {"text"}
    assert doc["text"] == "# Title\n\nA paragraph --- with dashes.\n\n---\n\nMore.\n"


def test_malformed_front_matter_is_reported_and_kept_as_text(tmp_path):
    path = write(tmp_path / "bad.md", "---\ntitle: [unclosed\n---\nThe body.\n")
    (doc,), errors = convert(path)
    assert doc["text"] == "---\ntitle: [unclosed\n---\nThe body.\n" and "front_matter" not in doc
    assert len(errors) == 1 and errors[0][0] == 1 and "malformed YAML front matter" in errors[0][1]


@pytest.mark.parametrize("content,match", [
    (b"", "empty file"),
    (b" \n\t\n", "empty file"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), r"binary file named \.txt\?"),
    ("caf\u00e9 ok\nna\u00efve\n".encode() + b"line three \xe9t\xe9\n",  # latin-1 bytes on line 3
     r"invalid UTF-8 at byte offset 27 \(line 3.*iconv"),
])
def test_unusable_text_files_raise_file_error(tmp_path, content, match):
    path = write(tmp_path / "bad.txt", content)
    with pytest.raises(FileError, match=match) as info:
        convert(path)
    assert str(path) in str(info.value)


# ------------------------------------------------------------------------------------------ csv / tsv

def test_csv_joins_text_columns_and_keeps_other_fields(tmp_path):
    long_cell = "word " * 40_000  # beyond the csv module's default field size limit of 128 KiB
    path = write(tmp_path / "t.csv", "\ufeffid,title,body,lang\n1,Hello,\"First body,\nwith a newline\",en\n"
                                     f"2,,Only body,fr\n3,a,b\n4,Big,{long_cell},de\n")
    docs, errors = convert(path, csv_text_columns=["title", "body"])
    assert [d["text"] for d in docs[:2]] == ["Hello\n\nFirst body,\nwith a newline", "Only body"]
    assert docs[0]["fields"] == {"id": "1", "lang": "en"} and docs[0]["row"] == 1
    assert [d["row"] for d in docs] == [1, 2, 4] and docs[2]["text"] == "Big\n\n" + long_cell
    assert len(errors) == 1 and errors[0][0] == 5 and "3 fields" in errors[0][1]


def test_csv_missing_text_column_names_columns_and_key(tmp_path):
    path = write(tmp_path / "t.csv", "id,content\n1,hello\n")
    with pytest.raises(FileError, match=r"\['id', 'content'\].*data\.convert\.csv_text_columns"):
        convert(path)


def test_tsv(tmp_path):
    path = write(tmp_path / "t.tsv", "text\tscore\nfirst, with a comma\t0.5\nsecond\t1\n")
    docs, errors = convert(path)
    assert errors == [] and [(d["text"], d["fields"]) for d in docs] == [
        ("first, with a comma", {"score": "0.5"}), ("second", {"score": "1"})]


# ------------------------------------------------------------------------------------------ json / jsonl

def test_json_array_of_objects_and_strings(tmp_path):
    path = write(tmp_path / "a.json", json.dumps([{"text": "one", "id": 7, "tags": ["x"], "ok": True}, "two"]))
    docs, errors = convert(path)
    assert errors == []
    assert docs == [{"text": "one", "record": 1, "fields": {"id": 7, "ok": True}},
                    {"text": "two", "record": 2, "fields": {}}]


def test_json_records_path_and_dotted_text_field(tmp_path):
    data = {"meta": {"v": 1}, "data": {"items": [{"body": {"en": "hello"}, "n": 1}, {"body": {"en": "bye"}, "n": 2}]}}
    path = write(tmp_path / "o.json", json.dumps(data))
    docs, errors = convert(path, json_records="data.items", json_text_field="body.en")
    assert errors == [] and [(d["text"], d["fields"]) for d in docs] == [("hello", {"n": 1}), ("bye", {"n": 2})]
    (whole,), errors = convert(write(tmp_path / "one.json", '{"text": "single", "lang": "en"}'))
    assert whole["text"] == "single" and whole["fields"] == {"lang": "en"}
    with pytest.raises(FileError, match=r"data\.convert\.json_records.*\['meta', 'data'\]"):
        convert(path, json_records="data.rows")


def test_json_record_without_text_field_is_reported(tmp_path):
    path = write(tmp_path / "a.json", json.dumps([{"text": "a"}, {"body": "b", "id": 2}, {"text": 3}, {"text": "d"}]))
    docs, errors = convert(path)
    assert [d["text"] for d in docs] == ["a", "d"] and [d["record"] for d in docs] == [1, 4]
    assert [n for n, _ in errors] == [2, 3]
    assert "data.convert.json_text_field" in errors[0][1] and "['body', 'id']" in errors[0][1]


def test_invalid_json_names_line_and_column(tmp_path):
    path = write(tmp_path / "a.json", '[\n  {"text": "a"},\n  {"text": }\n]\n')
    with pytest.raises(FileError, match="invalid JSON at line 3, column 12"):
        convert(path)


def test_jsonl_bad_lines_are_reported_the_rest_kept(tmp_path):
    lines = ['{"text": "first", "id": 1}', "", '{"text": "broken', '{"id": 4}', '["a list"]', '{"text": "last"}']
    path = write(tmp_path / "a.jsonl", "\n".join(lines) + "\n")
    docs, errors = convert(path)
    assert [(d["text"], d["line"], d["fields"]) for d in docs] == [("first", 1, {"id": 1}), ("last", 6, {})]
    assert [n for n, _ in errors] == [3, 4, 5]
    assert errors[0][1].startswith("invalid JSON") and "json_text_field" in errors[1][1]


# ------------------------------------------------------------------------------------------ pdf (generated)

def test_pdf_running_headers_footers_and_dot_leaders_removed(tmp_path):
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
    toc = ["Contents", "1 Getting started . . . . . . . . . . 2", "2 Going on..........4"]
    pages = [["ACME Handbook", *(toc if n == 1 else [f"The {w} part.", f"More on {w}."]),
              "See the appendix." if n in (2, 3) else f"So much for {w}.", f"Page {n} of 6"]
             for n, w in enumerate(words, 1)]
    (doc,), errors = convert(write_pdf(tmp_path / "h.pdf", pages))
    assert errors == [] and doc["pages"] == 6
    assert "ACME" not in doc["text"] and "Page" not in doc["text"] and ". . . ." not in doc["text"]
    assert "...." not in doc["text"] and "Getting started" not in doc["text"]
    assert doc["text"].startswith("Contents\nSo much for alpha.\f"  # pages end in page breaks (for chunking)
                                  "The bravo part.\nMore on bravo.\nSee the appendix.\f")
    assert doc["text"].count("See the appendix.") == 2  # on 2 of 6 pages: not a running line
    (short,), _ = convert(write_pdf(tmp_path / "short.pdf", pages[1:4]))  # < 4 pages: nothing is a running line
    assert short["text"].count("ACME Handbook") == 3


def test_pdf_per_chapter_running_heads_with_page_numbers(tmp_path):
    # TeX style: "Chapter c: Title <page>" (or "<page> Chapter c: Title") changes every chapter; chapter openings
    # carry the page number alone
    titles, words = ["Intro", "Usage", "Details", "Ending"], "ab bc cd de ef fg gh hi".split()
    pages = []
    for n, w in enumerate(words, 1):  # printed page n on PDF page n + 2; a chapter every 2 pages
        head = f"Chapter {n // 2}: {titles[n // 2 - 1]}"
        head = str(n) if n % 2 else f"{n} {head}" if n % 4 == 0 else f"{head} {n}"  # two-sided: left pages
        pages.append([head, f"Text {w}.", f"{n} A footnote on {w}."])
    (doc,), _ = convert(write_pdf(tmp_path / "t.pdf", [["Title page"], ["Contents"], *pages]))
    lines = re.split(r"[\n\f]", doc["text"])
    assert not [line for line in lines if "Chapter" in line or line.isdigit()], lines
    assert all(f"Text {w}." in lines and f"{n} A footnote on {w}." in lines for n, w in enumerate(words, 1)), lines


def test_pdf_x_tolerance_is_honoured(tmp_path):
    path = write_pdf(tmp_path / "tex.pdf", [[["words", "set", "apart", "by", "kerning"]]])
    (doc,), _ = convert(path)  # pdf_x_tolerance=1.0 by default; the gap is 2.75 pt
    assert doc["text"] == "words set apart by kerning"
    (glued,), _ = convert(path, pdf_x_tolerance=3)
    assert glued["text"] == "wordssetapartbykerning"


def test_pdf_without_text_layer(tmp_path):
    with pytest.raises(FileError, match="no text layer.*OCR"):
        convert(write_pdf(tmp_path / "scan.pdf", [[], []]))


def test_corrupt_pdf(tmp_path):
    path = write(tmp_path / "broken.pdf", random.Random(0).randbytes(4096))
    with pytest.raises(FileError, match="broken.pdf: not a readable PDF"):
        convert(path)


def test_encrypted_pdf(tmp_path):
    pypdf = pytest.importorskip("pypdf", reason="pypdf (dev extra) writes the encrypted test PDF")
    writer = pypdf.PdfWriter()
    writer.add_blank_page(200, 200)
    writer.encrypt("secret", algorithm="AES-128")
    writer.write(tmp_path / "locked.pdf")
    with pytest.raises(FileError, match=r"locked.pdf: the PDF is encrypted.*qpdf .*--decrypt"):
        convert(tmp_path / "locked.pdf")


# ------------------------------------------------------------------------------------------ real corpora

@pytest.fixture(scope="module")
def r_data():
    """R-data.pdf (41 pages), converted, and the raw lines pdfplumber gives for each of its pages."""
    import pdfplumber

    path = real_corpus("r-manuals", "R-data.pdf")
    (doc,), errors = convert(path)
    assert errors == []
    with pdfplumber.open(path) as pdf:
        raw = []
        for page in pdf.pages:
            raw.append([line for line in (page.extract_text(x_tolerance=1) or "").splitlines() if line.strip()])
            page.close()
    return doc, raw


def test_r_manual_words_are_spaced(r_data):
    import pdfplumber

    doc, _ = r_data
    text = doc["text"]
    with pdfplumber.open(real_corpus("r-manuals", "R-data.pdf")) as pdf:
        pdfplumber_default = pdf.pages[1].extract_text()  # x_tolerance=3
    assert "undertheaboveconditionsformodifiedversions" in pdfplumber_default
    assert "another language, under the above conditions for modified versions" in text
    assert "undertheabove" not in text
    assert "Reading data into a statistical system for analysis and exporting the results" in text
    words = re.findall(r"[A-Za-z]+", text)
    assert len(words) > 10_000 and sum(len(w) > 25 for w in words) / len(words) < 0.0005
    assert doc["pages"] == 41


def test_r_manual_dot_leaders_removed(r_data):
    doc, raw = r_data
    leader = re.compile(r"(\.\s*){4,}\d+\s*$")
    assert sum(bool(leader.search(line)) for lines in raw for line in lines) > 30
    assert not [line for line in doc["text"].splitlines() if leader.search(line)]
    assert "Table of Contents" in doc["text"]


def test_r_manual_running_headers_removed(r_data):
    doc, raw = r_data
    head = re.compile(r"^(Chapter \d+|Appendix [A-Z]): .+ \d+$")  # "Chapter 2: Spreadsheet-like data 9"
    assert sum(bool(lines and head.match(lines[0])) for lines in raw) > len(raw) / 2
    lines = doc["text"].splitlines()
    assert not [line for line in lines if head.match(line)]
    assert not [line for line in lines if line.strip().isdigit()]  # the page numbers of chapter openings
    assert "2 Spreadsheet-like data" in lines  # chapter titles stay


def test_license_texts_front_matter():
    licenses = real_corpus("licenses")
    mit, _ = convert(licenses / "mit.LICENSE", "text")
    assert mit[0]["front_matter"]["key"] == "mit" and mit[0]["front_matter"]["spdx_license_key"] == "MIT"
    assert mit[0]["text"].startswith("Permission is hereby granted, free of charge")
    converted = 0
    for path in sorted(licenses.glob("*.LICENSE"))[::4]:
        try:
            (doc,), errors = convert(path, "text")
        except FileError as e:  # a few entries are front matter only
            assert "no text besides the front matter" in str(e)
            continue
        assert errors == [] and doc["front_matter"]["key"] == path.stem
        assert not doc["text"].startswith("---\n") and f"key: {path.stem}\n" not in doc["text"]
        converted += 1
    assert converted > 500
