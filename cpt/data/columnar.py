"""Parquet and Arrow -> one document per row: the text from the column data.convert.json_text_field (a dotted path
reaches into struct columns), the other scalar columns (strings, numbers, booleans) as metadata "fields", the row
number (1-based, over the whole file or dataset) as "row". A row whose text is null or not a string is reported
through on_record_error under its row number; a file that cannot be opened or read raises FileError.

  parquet  read row group by row group (pyarrow), so memory holds one batch of rows; a big file is also read in
           ranges of row groups by several workers (`read_parquet(..., row_groups=...)`, cpt.data.file_stage)
  arrow    an Arrow IPC file (random-access "file" format or "stream" format, e.g. `.arrow`, `.feather`), memory-mapped;
           or a directory written by `datasets`' `save_to_disk` (state.json + data-*.arrow): its arrow files in
           state.json's order, read as one source

`records_from_batches` turns any iterator of pyarrow RecordBatches into records, for other sources of Arrow data."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq

from cpt.config.schema import ConvertConfig
from cpt.data.read_errors import FileError, OnRecordError

BATCH_ROWS = 1024  # rows converted to Python at a time
DATASET_STATE = "state.json"  # what marks a `save_to_disk` directory
_KEY = "data.convert.json_text_field"


# ---------------------------------------------------------------------------------------------- any Arrow data

def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _is_scalar(t: pa.DataType) -> bool:
    return _is_text(t) or pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def text_column_problem(schema: pa.Schema, text_field: str) -> Optional[str]:
    """Why rows of this schema have no text at `text_field` (a column name, or a dotted path into struct columns),
    or None."""
    if text_field in schema.names:
        t = schema.field(text_field).type
        return None if _is_text(t) else f"column '{text_field}' ({_KEY}) holds {t}, not strings"
    top = text_field.split(".")[0]
    if "." in text_field and top in schema.names and pa.types.is_struct(schema.field(top).type):
        return None  # checked row by row
    return f"no column '{text_field}' ({_KEY}); the columns: {schema.names[:30]}"


def _columns(schema: pa.Schema, text_field: str) -> list[str]:
    """The columns worth reading: the text's and the scalar ones (kept as fields)."""
    top = text_field if text_field in schema.names else text_field.split(".")[0]
    return [f.name for f in schema if f.name == top or _is_scalar(f.type)]


def records_from_batches(batches: Iterable[pa.RecordBatch], text_field: str, on_record_error: OnRecordError,
                         first_row: int = 1) -> Iterator[dict]:
    """{"text", "row", "fields"} for each row of the batches (row numbers from first_row on); a row without string
    text goes to on_record_error(row, message). The batches' schema should pass text_column_problem."""
    row = first_row
    for batch in batches:
        scalar = [f.name for f in batch.schema if _is_scalar(f.type) and f.name != text_field]
        for values in batch.to_pylist():
            text = _lookup(values, text_field)
            if isinstance(text, str):
                yield {"text": text, "row": row, "fields": {k: values[k] for k in scalar}}
            else:
                what = "null" if text is None else f"a {type(text).__name__}, not a string"
                on_record_error(row, f"row {row}: the text ('{text_field}', {_KEY}) is {what}")
            row += 1


def _lookup(values: dict, text_field: str):
    if text_field in values:
        return values[text_field]
    for part in text_field.split("."):
        values = values.get(part) if isinstance(values, dict) else None
    return values


# ---------------------------------------------------------------------------------------------- parquet

def _open_parquet(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise FileError(path, f"not a readable Parquet file ({' '.join(str(e).split())}): it is truncated or "
                              "damaged, or not Parquet; export or download it again") from None


def parquet_row_groups(path: Path) -> Optional[int]:
    """The number of row groups (from the footer: nothing else is read); None when the file cannot tell (reading it
    then reports why)."""
    try:
        return pq.ParquetFile(path).num_row_groups
    except (pa.ArrowException, OSError):
        return None


def read_parquet(path: Path, cfg: ConvertConfig, on_record_error: OnRecordError,
                 row_groups: Optional[tuple[int, int]] = None) -> Iterator[dict]:
    """The rows of row groups first..last (0-based, inclusive; None: all), numbered as in the whole file."""
    pf = _open_parquet(path)
    schema = pf.schema_arrow
    problem = text_column_problem(schema, cfg.json_text_field)
    if problem:
        raise FileError(path, f"{problem}: set {_KEY}")
    first, last = row_groups if row_groups else (0, pf.num_row_groups - 1)
    row = 1 + sum(pf.metadata.row_group(i).num_rows for i in range(first))
    columns = _columns(schema, cfg.json_text_field)
    for group in range(first, last + 1):
        rows = pf.metadata.row_group(group).num_rows
        try:
            batches = pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[group], columns=columns)
            yield from records_from_batches(batches, cfg.json_text_field, on_record_error, row)
        except (pa.ArrowException, OSError) as e:
            raise FileError(path, f"row group {group} (rows {row}-{row + rows - 1}) cannot be read "
                                  f"({' '.join(str(e).split())}): the file is damaged; the rows before it are kept, "
                                  "the rest is lost: export or download it again") from None
        row += rows


# ---------------------------------------------------------------------------------------------- arrow

def is_dataset_dir(path: Path) -> bool:
    """A directory written by `datasets`' save_to_disk (one split)."""
    return path.is_dir() and (path / DATASET_STATE).is_file()


def dataset_files(path: Path) -> list[Path]:
    """The arrow files of a save_to_disk directory, in the dataset's order (state.json's _data_files)."""
    try:
        state = json.loads((path / DATASET_STATE).read_text(encoding="utf-8"))
        files = [path / entry["filename"] for entry in state["_data_files"]]
    except (ValueError, KeyError, TypeError) as e:
        raise FileError(path, f"{DATASET_STATE} does not list the data files (_data_files: {e}): not a complete "
                              "`save_to_disk` directory; save the dataset again") from None
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise FileError(path, f"data files listed in {DATASET_STATE} are missing: {missing[:5]}: copy the whole "
                              "directory, or save the dataset again")
    return files


def _ipc_batches(path: Path, shown: Path, text_field: str) -> Iterator[pa.RecordBatch]:
    """The record batches of one Arrow IPC file, file format or stream format, memory-mapped."""
    source = pa.memory_map(str(path), "r")
    try:
        try:
            reader = pa.ipc.open_file(source)
            schema, batches = reader.schema, (reader.get_batch(i) for i in range(reader.num_record_batches))
        except pa.ArrowInvalid:
            source.seek(0)
            reader = pa.ipc.open_stream(source)
            schema, batches = reader.schema, iter(reader)
        problem = text_column_problem(schema, text_field)
        if problem:
            raise FileError(shown, f"{path.name}: {problem}: set {_KEY}")
        yield from batches
    finally:
        source.close()


def read_arrow(path: Path, cfg: ConvertConfig, on_record_error: OnRecordError) -> Iterator[dict]:
    files = dataset_files(path) if path.is_dir() else [path]
    read = 0

    def counted(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        nonlocal read
        for batch in batches:
            yield batch
            read += batch.num_rows

    batches = itertools.chain.from_iterable(_ipc_batches(f, path, cfg.json_text_field) for f in files)
    try:
        yield from records_from_batches(counted(batches), cfg.json_text_field, on_record_error)
    except (pa.ArrowException, OSError) as e:
        raise FileError(path, f"not a readable Arrow IPC file or stream ({' '.join(str(e).split())}) after row "
                              f"{read}: it is truncated or damaged, or not Arrow; the rows before are kept, the rest "
                              "is lost: write it again") from None
