"""Raw files -> documents: one reader per format, each streaming dicts {"text": str, **metadata}.

Options come from `data.convert` (cpt.config.schema.ConvertConfig). A problem with a whole file raises FileError (the
caller reports the file and goes on); a problem with one line / record / row / page calls
on_record_error(number, message) and the rest of the file goes on. Formats:
  text   one document per file; optional YAML front matter (`---` ... `---`) -> metadata "front_matter"
  csv    one document per row: the columns data.convert.csv_text_columns joined by a blank line; "row", "fields"
  tsv    as csv, tab-separated
  json   the whole file: a list of records, one record, or the list at data.convert.json_records; "record", "fields"
  jsonl  one record per line, text at data.convert.json_text_field; "line", "fields"
  pdf    one document per file, page by page, running headers/footers and dot-leader lines removed; "pages"
  parquet  one document per row (cpt.data.columnar): text at data.convert.json_text_field; "row", "fields"
  arrow    as parquet, from an Arrow IPC file/stream or a `datasets` save_to_disk directory (one source)
  html   one document per page, main content only (cpt.data.html); "title"
  docx   one document per file: paragraphs, headings, tables row by row (cpt.data.docx); "title"
  warc   one document per HTML page of a web archive (cpt.data.warc); "url", "date", "record", "title"
Text formats can be compressed (x.jsonl.zst, x.txt.gz, x.csv.bz2, x.json.xz: cpt.data.compressed), read as a stream.
A compressed file that breaks midway keeps the documents read before the break; the file is reported with where it
broke.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from cpt.common.errors import UserError
from cpt.config.schema import ConvertConfig
from cpt.data.columnar import is_dataset_dir, read_arrow, read_parquet
from cpt.data.compressed import CorruptDataError, check_command, compression, inner_suffix, open_binary
from cpt.data.docx import read_docx
from cpt.data.html import read_html
from cpt.data.pdf import read_pdf
from cpt.data.read_errors import SKIP, EmptyFileError, FileError, OnRecordError
from cpt.data.warc import read_warc

FORMATS: dict[str, str] = {".txt": "text", ".md": "text", ".rst": "text", ".text": "text", ".csv": "csv", ".tsv": "tsv",
                           ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".pdf": "pdf",
                           ".parquet": "parquet", ".arrow": "arrow", ".feather": "arrow", ".html": "html",
                           ".htm": "html", ".xhtml": "html", ".docx": "docx", ".warc": "warc"}
STREAMABLE = {"text", "csv", "tsv", "json", "jsonl", "html", "warc"}  # the formats that can be read compressed
_FORMAT_NAMES = sorted(set(FORMATS.values()))
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_ICONV = "convert it first, e.g. `iconv -f latin1 -t utf-8 in > out` (use its real encoding)"

class NoFilesError(UserError, FileNotFoundError):
    """A configured path or pattern matches no file."""


class _RecordError(Exception):
    """One record cannot be converted (internal: turned into an on_record_error call)."""


# ---------------------------------------------------------------------------------------------- file lists

def expand_paths(patterns: list[str], key: str) -> list[Path]:
    """Files named by paths, directories (recursive, hidden files/dirs skipped) or glob patterns (with **),
    sorted and de-duplicated. A pattern that matches no file raises NoFilesError naming `key`."""
    found: set[str] = set()
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        if glob.has_magic(expanded):
            matches = sorted(glob.glob(expanded, recursive=True))
        else:
            matches = [expanded] if os.path.exists(expanded) else []
        files = [f for m in matches for f in (_walk(m) if os.path.isdir(m) else [m])]
        if not files:
            where = "" if os.path.isabs(expanded) else f" (relative to {os.getcwd()})"
            raise NoFilesError(f"config key '{key}': '{pattern}' matches no file{where}")
        found.update(os.path.abspath(f) for f in files)
    return [Path(p) for p in sorted(found)]


def _walk(directory: str) -> list[str]:
    """The files under directory; a `datasets` save_to_disk directory (state.json) counts as one file."""
    if is_dataset_dir(Path(directory)):
        return [directory]
    out = []
    for root, dirs, files in os.walk(directory):
        datasets = [d for d in dirs if is_dataset_dir(Path(root, d))]
        out.extend(os.path.join(root, d) for d in datasets)
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in datasets]
        out.extend(os.path.join(root, f) for f in files if not f.startswith("."))
    return out


def detect_format(path: Path, override: str | None) -> str:
    """The source's `format` if given, else the format of the file's extension."""
    if override is not None:
        if override.lower() not in _FORMAT_NAMES:
            raise ValueError(f"unknown format {override!r}: choose one of {', '.join(_FORMAT_NAMES)}")
        return override.lower()
    if is_dataset_dir(path):
        return "arrow"
    ext = inner_suffix(path)
    if ext not in FORMATS:
        what = f"unknown extension '{ext}'" if ext else "no file extension"
        if compression(path):
            what += f" under the {compression(path)} suffix"
        raise FileError(path, f"{what}: set the source's `format` ({', '.join(_FORMAT_NAMES)}) or rename the file "
                              f"(known extensions: {' '.join(sorted(FORMATS))})")
    return FORMATS[ext]


def convert_file(path: Path, fmt: str, cfg: ConvertConfig, on_record_error: OnRecordError) -> Iterator[dict]:
    """Stream the documents of one file as {"text": str, **metadata} (metadata JSON-serializable)."""
    readers = {"text": _read_text, "csv": _read_csv, "tsv": _read_csv, "json": _read_json, "jsonl": _read_jsonl,
               "pdf": _read_pdf, **{name: _without_format(reader) for name, reader in
                                    (("parquet", read_parquet), ("arrow", read_arrow), ("html", read_html),
                                     ("docx", read_docx), ("warc", read_warc))}}
    if fmt not in readers:
        raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(_FORMAT_NAMES)}")
    if compression(path) and fmt not in STREAMABLE:
        raise FileError(path, f"a {compression(path)}-compressed {fmt} file cannot be read as a stream: decompress "
                              f"it first (only {', '.join(sorted(STREAMABLE))} files are read compressed)")
    read, last = 0, None
    try:
        if path.is_file() and path.stat().st_size == 0:
            raise EmptyFileError(path, "empty file: remove it or fill it")
        for record in readers[fmt](path, fmt, cfg, on_record_error):
            if SKIP not in record:  # a record a reader passed over is counted, not a document
                read, last = read + 1, record
            yield record
    except OSError as e:
        raise FileError(path, f"cannot read: {e.strerror or e}") from e
    except CorruptDataError as e:
        raise FileError(path, f"{e}; {_kept(read, last)}: test it with `{check_command(path)}`, download or "
                              "compress it again") from None


def _without_format(reader: Callable[[Path, ConvertConfig, OnRecordError], Iterator[dict]]):
    """A reader of another module (path, cfg, on_record_error) called as the readers here are."""
    return lambda path, fmt, cfg, on_record_error: reader(path, cfg, on_record_error)


def _kept(read: int, last: dict | None) -> str:
    """What a reader that broke midway had read: documents are kept, and where it stopped is said."""
    if not read:
        return "nothing was read before it"
    where = next((f"{k} {last[k]}" for k in ("line", "row", "record") if k in last), None)
    return (f"the {read} document(s) read before it are kept" + (f" (through {where})" if where else "") +
            ", the rest of the file is lost")


# ---------------------------------------------------------------------------------------------- text

def _decode(path: Path, data: bytes) -> str:
    """UTF-8 (a leading BOM dropped) or FileError naming the first bad byte."""
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        offset = bom + e.start
        line = data.count(b"\n", 0, offset) + 1
        raise FileError(path, f"invalid UTF-8 at byte offset {offset} (line {line}, byte 0x{data[offset]:02x}): "
                              f"{_ICONV}") from None


def _read_text(path: Path, fmt: str, cfg: ConvertConfig, on_record_error: OnRecordError) -> Iterator[dict]:
    with open_binary(path) as f:
        data = f.read(8192)
        if b"\x00" in data:  # checked before reading the rest: a big binary file is not loaded
            named = f"named {path.suffix}" if path.suffix else "without extension"
            raise FileError(path, f"binary file {named}? (NUL bytes in the first 8 KiB): remove it from the "
                                  "source's paths, or set the source's `format` if it is a known format")
        data += f.read()
    text = _decode(path, data).replace("\r\n", "\n")
    meta: dict[str, Any] = {}
    opening = re.match(r"---[ \t]*\n", text) if cfg.strip_front_matter else None
    if opening:
        try:
            front, text = _front_matter(text[opening.end():])
            meta["front_matter"] = front
        except _RecordError as e:
            on_record_error(1, f"{e}; the whole file is kept as text (set data.convert.strip_front_matter=false "
                               "if '---' is not front matter)")
    if not text.strip():
        raise EmptyFileError(path, "no text besides the front matter: nothing to train on" if meta else
                                   "empty file (only whitespace): remove it or fill it")
    yield {"text": text, **meta}


def _front_matter(text: str) -> tuple[dict, str]:
    """(metadata, the text after it) of what follows an opening '---' line, or _RecordError."""
    end = re.search(r"^---[ \t]*$\n?", text, re.MULTILINE)
    if end is None:
        raise _RecordError("front matter: a first line '---' without a closing '---' line")
    block, rest = text[: end.start()], text[end.end():].lstrip("\n")
    try:
        front = yaml.load(block, Loader=_YAML_LOADER)  # yaml.safe_load, in C where built
    except yaml.YAMLError as e:  # its message has the line and column
        raise _RecordError(f"malformed YAML front matter: {' '.join(str(e).split())}") from None
    if front is None:
        front = {}
    if not isinstance(front, dict):
        raise _RecordError(f"front matter is a YAML {type(front).__name__}, not a mapping")
    return _jsonable(front), rest


def _jsonable(value: Any) -> Any:
    """Metadata as JSON: mappings, lists and scalars kept; anything else (dates, bytes...) as str."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


# ---------------------------------------------------------------------------------------------- csv / tsv

def _read_csv(path: Path, fmt: str, cfg: ConvertConfig, on_record_error: OnRecordError) -> Iterator[dict]:
    columns = list(cfg.csv_text_columns)
    if not columns:
        raise FileError(path, "data.convert.csv_text_columns is empty: name the column(s) that hold the text")
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long text cells; the default limit is 128 KiB
    with io.TextIOWrapper(open_binary(path), encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t" if fmt == "tsv" else ",")
        try:
            header = reader.fieldnames
            if header is None:
                raise EmptyFileError(path, "empty file (no header row)")
            missing = [c for c in columns if c not in header]
            if missing:
                raise FileError(path, f"text column(s) {missing} not in the header; the columns are {list(header)}: "
                                      "set data.convert.csv_text_columns")
            row_no = 0
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as e:  # the reader goes on with the next line
                    on_record_error(reader.line_num, f"malformed {fmt.upper()}: {e}")
                    continue
                row_no += 1
                if None in row or None in row.values():
                    got = len(header) + len(row.get(None, [])) - list(row.values()).count(None)
                    on_record_error(reader.line_num, f"row {row_no} has {got} fields, the header {len(header)}")
                    continue
                text = "\n\n".join(row[c] for c in columns if row[c].strip())
                fields = {k: v for k, v in row.items() if k not in columns}
                yield {"text": text, "row": row_no, "fields": fields}
        except UnicodeDecodeError as e:
            raise FileError(path, f"invalid UTF-8 near line {reader.line_num + 1} (byte 0x{e.object[e.start]:02x}): "
                                  f"{_ICONV}") from None


# ---------------------------------------------------------------------------------------------- json / jsonl

def _lookup(obj: Any, dotted: str) -> Any:
    """obj[a][b]... for the dotted path 'a.b...'; KeyError when a step is missing."""
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            raise KeyError(part)
        obj = obj[part]
    return obj


def _record_doc(record: Any, cfg: ConvertConfig) -> tuple[str, dict]:
    """(text, scalar fields) of one JSON record, or _RecordError."""
    if isinstance(record, str):
        return record, {}
    if not isinstance(record, dict):
        raise _RecordError(f"the record is a JSON {type(record).__name__}, not an object or a string")
    key = cfg.json_text_field
    try:
        text = _lookup(record, key)
    except KeyError:
        raise _RecordError(f"no field '{key}' (data.convert.json_text_field); the record's keys: "
                           f"{list(record)[:30]}") from None
    if not isinstance(text, str):
        raise _RecordError(f"field '{key}' (data.convert.json_text_field) is a JSON {type(text).__name__}, not a "
                           f"string; the record's keys: {list(record)[:30]}")
    fields = {k: v for k, v in record.items()
              if k != key and (v is None or isinstance(v, (str, int, float, bool)))}
    return text, fields


def _json_msg(e: json.JSONDecodeError) -> str:
    """json's message without its trailing "at" ("Unterminated string starting at"): we name the position."""
    return e.msg.removesuffix(" at")


def _read_json(path: Path, fmt: str, cfg: ConvertConfig, on_record_error: OnRecordError) -> Iterator[dict]:
    try:
        with open_binary(path) as f:
            data = json.loads(_decode(path, f.read()))
    except json.JSONDecodeError as e:
        raise FileError(path, f"invalid JSON at line {e.lineno}, column {e.colno}: {_json_msg(e)} (one record per "
                              "line? name the file .jsonl or set the source's `format: jsonl`)") from None
    if cfg.json_records:
        try:
            records = _lookup(data, cfg.json_records)
        except KeyError:
            top = list(data)[:30] if isinstance(data, dict) else f"none (the top level is a {type(data).__name__})"
            raise FileError(path, f"no '{cfg.json_records}' (data.convert.json_records) in the file; its top-level "
                                  f"keys: {top}") from None
        if not isinstance(records, list):
            raise FileError(path, f"'{cfg.json_records}' (data.convert.json_records) is a JSON "
                                  f"{type(records).__name__}, not a list of records")
    else:
        records = data if isinstance(data, list) else [data]
    for i, record in enumerate(records, 1):
        try:
            text, fields = _record_doc(record, cfg)
        except _RecordError as e:
            on_record_error(i, f"record {i}: {e}")
            continue
        yield {"text": text, "record": i, "fields": fields}


def _read_jsonl(path: Path, fmt: str, cfg: ConvertConfig, on_record_error: OnRecordError) -> Iterator[dict]:
    with open_binary(path) as f:
        for line_no, raw in enumerate(f, 1):
            if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
                text, fields = _record_doc(record, cfg)
            except UnicodeDecodeError as e:
                on_record_error(line_no, f"invalid UTF-8 at byte {e.start} of the line: {_ICONV}")
            except json.JSONDecodeError as e:
                on_record_error(line_no, f"invalid JSON at column {e.colno}: {_json_msg(e)}")
            except _RecordError as e:
                on_record_error(line_no, str(e))
            else:
                yield {"text": text, "line": line_no, "fields": fields}


# ---------------------------------------------------------------------------------------------- pdf (cpt.data.pdf: big
# PDFs are also read in page ranges, by cpt.data.file_stage)

def _read_pdf(path: Path, fmt: str, cfg: ConvertConfig, on_record_error: OnRecordError) -> Iterator[dict]:
    yield read_pdf(path, cfg, on_record_error)

