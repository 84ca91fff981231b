"""The formats beyond text/CSV/JSON/PDF: compressed text files, Parquet (row groups as units of work), Arrow IPC
files and `datasets` save_to_disk directories, HTML (a real manual page: Debian's postgresql-doc-15, skipped when
missing unless CPT_REQUIRE_CORPORA=1), DOCX; each with its failure modes, on files the tests write."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from data.test_prepare import data_cfg, docs

from conftest import prepared_tree, real_corpus
from cpt.config.schema import ConvertConfig
from cpt.data.convert import convert_file, detect_format, expand_paths
from cpt.data.file_stage import FileTask, page_ranges
from cpt.data.prepare import prepare
from cpt.data.read_errors import FileError


def convert(path: Path, fmt: str | None = None, **options) -> tuple[list[dict], list[tuple[int, str]]]:
    errors: list[tuple[int, str]] = []
    docs = list(convert_file(path, detect_format(path, fmt), ConvertConfig(**options),
                             lambda n, msg: errors.append((n, msg))))
    json.dumps(docs)  # metadata must be JSON-serializable
    return docs, errors


def jsonl_lines(n: int, width: int = 12, start: int = 0) -> bytes:
    return b"".join(json.dumps({"text": f"document {i}: " + "word " * width, "id": i}).encode() + b"\n"
                    for i in range(start, start + n))


COMPRESS = {"gz": gzip.compress, "zst": lambda b: zstandard.ZstdCompressor().compress(b), "bz2": bz2.compress,
            "xz": lzma.compress}


# ------------------------------------------------------------------------------------------ compressed


@pytest.mark.parametrize("suffix", sorted(COMPRESS))
def test_compressed_jsonl_reads_like_the_plain_file(tmp_path, suffix):
    data = jsonl_lines(300)
    (tmp_path / "plain.jsonl").write_bytes(data)
    packed = tmp_path / f"x.jsonl.{suffix}"
    packed.write_bytes(COMPRESS[suffix](data))
    assert detect_format(packed, None) == "jsonl"
    assert convert(packed) == convert(tmp_path / "plain.jsonl")
    text = tmp_path / f"notes.txt.{suffix}"
    text.write_bytes(COMPRESS[suffix](b"Some notes, compressed.\n" * 20))
    assert convert(text)[0] == [{"text": "Some notes, compressed.\n" * 20}]


def test_zstd_frames_are_read_one_after_another(tmp_path):
    data = jsonl_lines(100)
    path = tmp_path / "x.jsonl.zst"
    path.write_bytes(COMPRESS["zst"](data[:1000]) + COMPRESS["zst"](data[1000:]))  # as `cat a.zst b.zst` makes
    assert [d["fields"]["id"] for d in convert(path)[0]] == list(range(100))


@pytest.mark.parametrize("suffix", ["gz", "zst"])
def test_a_truncated_compressed_file_keeps_what_was_read_and_says_where_it_broke(tmp_path, suffix):
    """zstd's own reader ends a truncated frame silently: it must be an error here too."""
    blob = COMPRESS[suffix](jsonl_lines(20000, width=30))
    path = tmp_path / f"x.jsonl.{suffix}"
    path.write_bytes(blob[: len(blob) // 2])
    got = []
    with pytest.raises(FileError) as e:
        for doc in convert_file(path, "jsonl", ConvertConfig(), lambda n, m: None):
            got.append(doc)
    assert 1000 < len(got) < 20000 and [d["line"] for d in got] == list(range(1, len(got) + 1))
    message = str(e.value)
    assert f"truncated {'gzip' if suffix == 'gz' else 'zstd'} data" in message
    assert f"the {len(got)} document(s) read before it are kept (through line {len(got)})" in message
    assert f"`{'gzip' if suffix == 'gz' else 'zstd'} -t x.jsonl.{suffix}`" in message


def test_a_compressed_binary_format_is_refused(tmp_path):
    path = tmp_path / "manual.pdf.gz"
    path.write_bytes(gzip.compress(b"%PDF-1.4"))
    with pytest.raises(FileError, match="gzip-compressed pdf file cannot be read as a stream: decompress it first"):
        convert(path)


# ------------------------------------------------------------------------------------------ parquet / arrow

def table(n: int, nulls: tuple[int, ...] = ()) -> pa.Table:
    return pa.table({"text": [None if i in nulls else f"row {i}: " + "text " * 30 for i in range(n)],
                     "id": list(range(n)), "lang": ["en"] * n, "vec": [[0.5, 1.5]] * n})


def test_parquet_rows_keep_scalar_columns_and_report_bad_rows_by_number(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(table(25, nulls=(3, 17)), path, row_group_size=10)
    got, errors = convert(path)
    assert [d["row"] for d in got] == [i + 1 for i in range(25) if i not in (3, 17)]
    assert got[0]["fields"] == {"id": 0, "lang": "en"}  # the list column is not metadata
    assert errors == [(4, "row 4: the text ('text', data.convert.json_text_field) is null"),
                      (18, "row 18: the text ('text', data.convert.json_text_field) is null")]
    with pytest.raises(FileError, match=r"no column 'body' \(data.convert.json_text_field\); the columns: "
                                        r"\['text', 'id', 'lang', 'vec'\]: set data.convert.json_text_field"):
        convert(path, json_text_field="body")
    with pytest.raises(FileError, match="column 'id' .* holds int64, not strings"):
        convert(path, json_text_field="id")


def test_parquet_row_groups_become_tasks_with_the_same_output_for_any_num_proc(tmp_path):
    """5 row groups in ranges of 2 -> 3 tasks; read by 1 or 2 workers == read whole, byte for byte."""
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(table(50, nulls=(12,)), src / "big.parquet", row_group_size=10)
    (src / "small.jsonl").write_bytes(jsonl_lines(5, width=30))
    sources = [{"name": "s", "paths": [str(src)]}]
    cfg = data_cfg(tmp_path, sources, "data.convert.parquet_row_groups_per_task=2").data
    task = FileTask("s", src / "big.parquet", None, cfg.convert, cfg.clean, cfg.dedup, None, 0.1)
    assert [t.row_groups for t in page_ranges(task)] == [(0, 1), (2, 3), (4, 4)]
    whole = prepare(data_cfg(tmp_path / "whole", sources, "data.convert.parquet_row_groups_per_task=null"))
    parts = [prepare(data_cfg(tmp_path / f"parts{n}", sources, "data.convert.parquet_row_groups_per_task=2",
                              f"data.num_proc={n}")) for n in (1, 2)]
    assert prepared_tree(whole) == prepared_tree(parts[0]) == prepared_tree(parts[1])
    kept = docs(whole, "s", "train") + docs(whole, "s", "val")
    assert sorted(d["row"] for d in kept if "row" in d) == [r for r in range(1, 51) if r != 13]
    report = json.loads((whole / "report.json").read_text())
    entry = next(f for f in report["files"] if f["path"].endswith("big.parquet"))
    assert entry["status"] == "partial" and [e["line"] for e in entry["record_errors"]] == [13]


def test_a_damaged_row_group_stops_the_file_there_however_it_is_split(tmp_path):
    """Row group 2 of 5 damaged: rows 1-20 kept and the file reported partly read with the row group named, whether it
    is read whole or in ranges of one row group (the parts after the damage are not used either)."""
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(table(50), src / "d.parquet", row_group_size=10)
    chunk = pq.ParquetFile(src / "d.parquet").metadata.row_group(2).column(0)
    data = bytearray((src / "d.parquet").read_bytes())
    start, end = chunk.data_page_offset + 20, chunk.data_page_offset + chunk.total_compressed_size - 5
    data[start:end] = b"\xff" * (end - start)
    (src / "d.parquet").write_bytes(bytes(data))
    sources = [{"name": "s", "paths": [str(src)]}]
    outs = [prepare(data_cfg(tmp_path / str(n), sources, f"data.convert.parquet_row_groups_per_task={n}",
                             "data.dedup.near=false")) for n in ("null", 1)]
    assert prepared_tree(outs[0]) == prepared_tree(outs[1])
    (entry,) = json.loads((outs[0] / "report.json").read_text())["files"]
    assert entry["status"] == "partly_read" and entry["kept"] == 20
    assert "row group 2 (rows 21-30) cannot be read" in entry["error"]
    assert "the rows before it are kept" in entry["error"]


def test_a_row_grouped_file_is_passed_on_part_by_part_and_not_held():
    """The parts of a row-grouped Parquet file reach the parent one by one (`more` on all but the last) and none is
    kept once the next has come: memory does not grow with the size of a file."""
    import gc
    import weakref

    from cpt.data.file_stage import FileResult, assemble

    task = FileTask("s", Path("big.parquet"), None, ConvertConfig(), None, None, None, 0.1)
    alive = []

    def parts():
        for _ in range(4):
            part = FileResult(format="parquet")
            alive.append(weakref.ref(part))
            yield task, 4, part

    passed = []
    for _, result in assemble(parts()):
        passed.append(result.more)
        del result
        gc.collect()
        assert sum(ref() is not None for ref in alive) <= 1  # only the part just passed on (held by the generator)
    assert passed == [True, True, True, False]


def test_a_pdf_part_whose_worker_died_fails_its_file_once():
    """A page range whose worker died comes back with no format: its PDF still gives one result, failed with that
    part's error, whichever part it was."""
    from cpt.data.file_stage import FileResult, assemble

    task = FileTask("s", Path("manual.pdf"), None, ConvertConfig(), None, None, None, 0.1)
    for dead in range(3):
        parts = [FileResult(error="manual.pdf: the worker process died") if n == dead else
                 FileResult(format="pdf", pages=[["a line"]]) for n in range(3)]
        (only,) = [result for _, result in assemble((task, 3, part) for part in parts)]
        assert only.error == "manual.pdf: the worker process died" and not only.more


def test_a_save_to_disk_directory_is_one_source_read_in_order(tmp_path):
    datasets = pytest.importorskip("datasets", reason="datasets (the dev extra) writes the directory")
    ds = datasets.Dataset.from_dict({"text": [f"sample {i}" for i in range(30)], "k": list(range(30))})
    ds.save_to_disk(str(tmp_path / "corpus" / "ds"), num_shards=3)
    (tmp_path / "corpus" / "notes.txt").write_text("beside it")
    found = expand_paths([str(tmp_path / "corpus")], "k")
    assert found == [tmp_path / "corpus" / "ds", tmp_path / "corpus" / "notes.txt"]  # not its state.json
    got, errors = convert(found[0])
    assert [d["text"] for d in got] == [f"sample {i}" for i in range(30)] and not errors
    assert [d["row"] for d in got] == list(range(1, 31)) and got[29]["fields"] == {"k": 29}


def test_arrow_ipc_file_and_stream_formats(tmp_path):
    t = table(7, nulls=(2,))
    with pa.ipc.new_file(str(tmp_path / "f.arrow"), t.schema) as writer:
        writer.write_table(t, max_chunksize=3)
    with pa.ipc.new_stream(str(tmp_path / "s.arrow"), t.schema) as writer:
        writer.write_table(t, max_chunksize=3)
    for name in ("f.arrow", "s.arrow"):
        got, errors = convert(tmp_path / name)
        assert [d["row"] for d in got] == [1, 2, 4, 5, 6, 7] and [n for n, _ in errors] == [3]
    (tmp_path / "junk.arrow").write_bytes(b"not arrow at all" * 10)
    with pytest.raises(FileError, match="not a readable Arrow IPC file or stream"):
        convert(tmp_path / "junk.arrow")


# ------------------------------------------------------------------------------------------ html / docx

def test_a_real_manual_page_without_its_navigation(tmp_path):
    page = real_corpus("postgresql-html", "tutorial-join.html")
    ((doc,), errors) = convert(page)
    text = doc["text"]
    assert doc["title"] == "2.6.\xa0Joins Between Tables" and not errors  # as the page writes it
    assert "Thus far, our queries have only accessed one table at a time." in text  # the first body sentence
    assert "2.6. Joins Between Tables" in " ".join(text.split())  # its heading
    assert "This would be accomplished by the following query:" in " ".join(text.split())
    nav = ["Prev", "Up", "Home", "Next", "2.5. Querying a Table", "2.7. Aggregate Functions"]  # the bars' texts
    lines = {" ".join(line.split()) for line in text.replace("\t", "\n").splitlines()}
    assert not [n for n in nav if n in lines] and "2.7. Aggregate Functions" not in text
    gz = tmp_path / "page.html.gz"
    gz.write_bytes(gzip.compress(page.read_bytes()))
    assert convert(gz)[0] == convert(page)[0]


def test_docx_heading_paragraph_and_table_in_document_order(tmp_path):
    import docx  # lazy: python-docx is needed by this test only

    document = docx.Document()
    document.add_heading("Maintenance schedule", level=1)
    document.add_paragraph("Pumps are checked every spring.")
    grid = document.add_table(rows=2, cols=3)
    for r, row in enumerate([("Part", "Interval", "Owner"), ("Seal", "6 months", "Ops")]):
        for c, value in enumerate(row):
            grid.cell(r, c).text = value
    nested = grid.cell(1, 2).add_table(rows=2, cols=2)  # a table in a cell: its text stays in that cell
    for r, row in enumerate([("Ana", "day"), ("Ben", "night")]):
        for c, value in enumerate(row):
            nested.cell(r, c).text = value
    document.add_paragraph("Report leaks at once.")
    document.save(tmp_path / "m.docx")
    (got,), errors = convert(tmp_path / "m.docx")
    assert got["text"] == ("Maintenance schedule\n\nPumps are checked every spring.\n\nPart | Interval | Owner\n"
                           "Seal | 6 months | Ops Ana, day; Ben, night\n\nReport leaks at once.") and not errors
    (tmp_path / "bad.docx").write_bytes((tmp_path / "m.docx").read_bytes()[:300])
    with pytest.raises(FileError, match=r"bad\.docx: not a readable \.docx .*open and save it again"):
        convert(tmp_path / "bad.docx")


def with_notes(path: Path, footnotes: list[str], endnotes: list[str]) -> None:
    """Give a .docx footnotes and endnotes as Word stores them: their parts (after Word's separator notes), the
    document's relationships to them, their content types."""
    main = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
    relation = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/"
    content = "application/vnd.openxmlformats-officedocument.wordprocessingml."
    with zipfile.ZipFile(path) as z:
        files = {name: z.read(name) for name in z.namelist()}
    rels, types = files["word/_rels/document.xml.rels"].decode(), files["[Content_Types].xml"].decode()
    for kind, notes in (("footnote", footnotes), ("endnote", endnotes)):
        separator = f'<w:{kind} w:type="separator" w:id="-1"><w:p><w:r><w:separator/></w:r></w:p></w:{kind}>'
        items = "".join(f'<w:{kind} w:id="{i}"><w:p><w:r><w:t>{note}</w:t></w:r></w:p></w:{kind}>'
                        for i, note in enumerate(notes, 1))
        files[f"word/{kind}s.xml"] = f'<w:{kind}s xmlns:w="{main}">{separator}{items}</w:{kind}s>'.encode()
        rels = rels.replace("</Relationships>", f'<Relationship Id="rId{kind}" Type="{relation}{kind}s" '
                                                f'Target="{kind}s.xml"/></Relationships>')
        types = types.replace("</Types>", f'<Override PartName="/word/{kind}s.xml" '
                                          f'ContentType="{content}{kind}s+xml"/></Types>')
    files["word/_rels/document.xml.rels"], files["[Content_Types].xml"] = rels.encode(), types.encode()
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)


def test_docx_footnotes_and_endnotes_follow_the_body(tmp_path):
    import docx  # lazy: python-docx is needed by these tests only

    document = docx.Document()
    document.add_paragraph("The lease ends on notice.")
    document.save(tmp_path / "n.docx")
    with_notes(tmp_path / "n.docx", ["See the Tenancy Act 2019, s. 4.", "Repealed in 2021."], ["Drafted by counsel."])
    (got,), errors = convert(tmp_path / "n.docx")
    assert got["text"] == ("The lease ends on notice.\n\nNotes\n[1] See the Tenancy Act 2019, s. 4.\n"
                           "[2] Repealed in 2021.\n[3] Drafted by counsel.") and not errors


# ------------------------------------------------------------------------------------------ in prepare

def test_bad_files_are_reported_with_reasons_while_the_rest_is_prepared(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(table(20), src / "good.parquet", row_group_size=5)
    (src / "truncated.parquet").write_bytes((src / "good.parquet").read_bytes()[:-40])
    blob = gzip.compress(jsonl_lines(4000, width=30))
    (src / "broken.jsonl.gz").write_bytes(blob[: len(blob) // 2])
    (src / "fine.jsonl.zst").write_bytes(COMPRESS["zst"](jsonl_lines(5, width=30, start=10**6)))
    out = prepare(data_cfg(tmp_path, [{"name": "s", "paths": [str(src)]}], "data.dedup.near=false"))
    files = {Path(f["path"]).name: f for f in json.loads((out / "report.json").read_text())["files"]}
    assert files["good.parquet"]["status"] == "ok" and files["good.parquet"]["kept"] == 20
    assert files["fine.jsonl.zst"]["status"] == "ok" and files["fine.jsonl.zst"]["kept"] == 5
    bad = files["truncated.parquet"]
    assert bad["status"] == "error" and "not a readable Parquet file" in bad["error"] and bad["docs"] == 0
    broken = files["broken.jsonl.gz"]
    assert broken["status"] == "partly_read" and 500 < broken["kept"] < 4000
    assert f"through line {broken['kept']}), the rest of the file is lost" in broken["error"]
    kept = docs(out, "s", "train") + docs(out, "s", "val")
    assert sum(d["path"].endswith("broken.jsonl.gz") for d in kept) == broken["kept"]


def test_row_group_ranges_are_kept_in_a_slurm_plan(tmp_path):
    from cpt.data.slurm_prepare import _load_or_write_plan, _units

    pq.write_table(table(30), tmp_path / "t.parquet", row_group_size=10)
    cfg = data_cfg(tmp_path, [{"name": "s", "paths": [str(tmp_path)]}], "data.convert.parquet_row_groups_per_task=1")
    task = FileTask("s", tmp_path / "t.parquet", None, cfg.data.convert, cfg.data.clean, cfg.data.dedup, None, 0.1)
    _load_or_write_plan([task], tmp_path, 2)
    assert [(part.row_groups, n) for _, part, n in _units([task], tmp_path)] == [((0, 0), 3), ((1, 1), 3),
                                                                                  ((2, 2), 3)]
