"""The per-file stage of prepare, run in `data.num_proc` worker processes: convert one file, cut long documents into
chunks, clean, filter by length, and compute each document's split and dedup signature. What depends on other
documents — the dedup decisions and the writing — stays with the parent, which takes the results in file order, so
the output is the same for any number of processes.

A worker that dies on a file (a crash inside a reader, out of memory) costs that file only: the files that were in
flight are retried one by one in a fresh process, the one that kills it again is reported as failed, and the rest
goes on.

A PDF with more than `data.convert.pdf_pages_per_task` pages is read in page ranges, one task each (several workers
on one big manual); its document is put together and finished once every range is in, exactly as if it had been
read whole. Likewise a Parquet file with more than `data.convert.parquet_row_groups_per_task` row groups is read in
ranges of row groups; its rows are numbered as in the whole file, and the parts go on in order (up to the first part
that fails, as a whole read stops there), each decided as it comes: the same result as one read of the whole file."""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from cpt.common import faults
from cpt.config.schema import CleanConfig, ConvertConfig, DedupConfig, RowFilter
from cpt.data.chunk import split_document
from cpt.data.clean import clean_text, length_problem
from cpt.data.columnar import parquet_row_groups, read_parquet
from cpt.data.convert import convert_file, detect_format
from cpt.data.dedup import Signature, signature
from cpt.data.hf_source import read_remote
from cpt.data.pdf import Pages, close, page_count, read_pages, to_record
from cpt.data.read_errors import SKIP, EmptyFileError, FileError
from cpt.data.split import split_of


@dataclass(frozen=True)
class FileTask:
    source: str
    path: Path
    format: Optional[str]  # the source's override; None = by extension
    convert: ConvertConfig
    clean: CleanConfig
    dedup: DedupConfig
    chunk_chars: Optional[int]
    val_fraction: float
    pages: Optional[tuple[int, int]] = None  # one range of a big PDF: pages first..last (1-based, inclusive)
    row_groups: Optional[tuple[int, int]] = None  # one range of a big Parquet file: first..last (0-based, inclusive)
    url: Optional[str] = None  # a Hugging Face source's file on the hub (streamed by datasets); path = its name
    where: Optional[RowFilter] = None  # the source's row filter


@dataclass
class Doc:
    id: str
    text: str
    meta: dict  # what the reader and the chunker know: line, record, fields, pages, chunk, page_range, ...
    dropped: Optional[str]  # "too_short" / "too_long", or None
    signature: Signature = (None, None)
    split: str = "train"


@dataclass
class FileResult:
    format: Optional[str] = None
    docs: list[Doc] = field(default_factory=list)
    record_errors: list[tuple[int, str]] = field(default_factory=list)  # (line or record number, message)
    error: Optional[str] = None  # the whole file (or its rest) could not be converted
    empty: bool = False  # readable, but no trainable text
    pages: Optional[Pages] = None  # a page range's lines, before its PDF is put together (finish_pdf)
    skipped: dict[str, int] = field(default_factory=dict)  # records left out, per reason: the row filter's
    # "filtered_out", a reader's own (a WARC archive's "not_html" / "not_200" responses)
    more: bool = False  # a part of a row-grouped Parquet file: more parts of the same file follow


def process_file(task: FileTask) -> FileResult:
    faults.maybe_crash_on_file(task.path)
    result = FileResult()
    try:
        result.format = detect_format(task.path, task.format)
        on_error = lambda line, message: result.record_errors.append((line, message))  # noqa: E731
        if task.pages:
            result.pages = read_pages(task.path, task.convert, on_error, *task.pages)
        elif task.url:
            add_documents(task, read_remote(task.url, result.format, task.convert.json_text_field, on_error), result)
        elif task.row_groups:
            add_documents(task, read_parquet(task.path, task.convert, on_error, task.row_groups), result)
        else:
            add_documents(task, convert_file(task.path, result.format, task.convert, on_error), result)
    except FileError as e:
        result.error, result.empty = str(e), isinstance(e, EmptyFileError)
    return result


def finish_pdf(task: FileTask, parts: list[FileResult]) -> FileResult:
    """A PDF read in page ranges, put together: the result process_file gives for the whole file."""
    close()  # read here (num_proc 1): done with it
    result = FileResult(format="pdf", record_errors=[e for part in parts for e in part.record_errors])
    failed = next((part for part in parts if part.error), None)
    if failed:
        result.error = failed.error
        return result
    try:
        add_documents(task, [to_record(task.path, [page for part in parts for page in part.pages])], result)
    except FileError as e:
        result.error = str(e)
    return result


def row_matches(record: dict, where: RowFilter) -> bool:
    """Whether a record's column (among its fields) passes the source's row filter; no such column: it does not."""
    value = (record.get("fields") or {}).get(where.column)
    if value is None:
        return False
    if where.equals is not None and str(value).lower() != where.equals.lower():
        return False
    if where.min is not None or where.max is not None:
        try:
            number = float(value)
        except (TypeError, ValueError):
            return False
        return (where.min is None or number >= where.min) and (where.max is None or number <= where.max)
    return True


ROW_NUMBERED = {"parquet", "arrow"}  # their documents are numbered by row: a range of row groups numbers alike


def add_documents(task: FileTask, records: Iterable[dict], result: FileResult) -> None:
    """Chunk, clean, length-filter, split and sign each record's text into result.docs."""
    by_row = result.format in ROW_NUMBERED
    for n, record in enumerate(records):
        n = record["row"] - 1 if by_row else n
        if SKIP in record or (task.where is not None and not row_matches(record, task.where)):
            reason = record.get(SKIP, "filtered_out")
            result.skipped[reason] = result.skipped.get(reason, 0) + 1
            continue
        for piece, where in split_document(record.pop("text"), task.chunk_chars):
            text = clean_text(piece, task.clean)
            doc_id = f"{task.source}:{task.path.name}#{n}" + (f"/{where['chunk']}" if where else "")
            doc = Doc(doc_id, text, {**record, **where}, length_problem(text, task.clean))
            if doc.dropped is None:
                doc.signature, doc.split = signature(text, task.dedup), split_of(text, task.val_fraction)
            result.docs.append(doc)


def page_ranges(task: FileTask) -> list[FileTask]:
    """The tasks of one file: itself, or one per page range for a PDF longer than data.convert.pdf_pages_per_task
    (the page count comes from the catalog: cheap, nothing is extracted here), or one per range of row groups for a
    Parquet file with more than data.convert.parquet_row_groups_per_task (the count comes from the footer)."""
    try:
        fmt = detect_format(task.path, task.format)
    except FileError:
        return [task]
    if fmt == "pdf" and task.convert.pdf_pages_per_task:
        per_task, count = task.convert.pdf_pages_per_task, page_count(task.path)
        if count and count > per_task:
            return [replace(task, pages=(first, min(first + per_task - 1, count)))
                    for first in range(1, count + 1, per_task)]
    if fmt == "parquet" and task.convert.parquet_row_groups_per_task and task.path.is_file():
        per_task, count = task.convert.parquet_row_groups_per_task, parquet_row_groups(task.path)
        if count and count > per_task:
            return [replace(task, row_groups=(first, min(first + per_task, count) - 1))
                    for first in range(0, count, per_task)]
    return [task]


Unit = tuple[FileTask, FileTask, int]  # (the file's task, this part's task, the file's number of parts)


def plan_units(tasks: Iterable[FileTask]) -> Iterator[Unit]:
    """The units of work, in order: a file, or each page range of a big PDF, or each range of row groups of a big
    Parquet file."""
    for task in tasks:
        parts = page_ranges(task)
        for part in parts:
            yield task, part, len(parts)


def run_in_order(tasks: Iterable[FileTask], num_proc: int) -> Iterator[tuple[FileTask, FileResult]]:
    """(task, result) in the order of `tasks`, by num_proc local processes."""
    return assemble(results(plan_units(tasks), num_proc))


def assemble(part_results: Iterable[tuple[FileTask, int, FileResult]]) -> Iterator[tuple[FileTask, FileResult]]:
    """Per-unit results (in unit order) -> per-file results: a PDF read in page ranges put together; a Parquet
    file read in ranges of row groups passed on part by part (`more` set on all but its last), so the parent never
    holds a whole big file — up to and with its first failed part (a read of the whole file stops there too)."""
    pdf_parts: list[FileResult] = []  # a PDF's page ranges until the last is in
    seen, failed, pdf = 0, False, False  # parts of the current file so far; whether one failed; whether it is a PDF
    for task, n_parts, result in part_results:
        if n_parts == 1:
            yield task, result
            continue
        seen += 1
        last = seen == n_parts
        if seen == 1:  # by the file, not the part: a part whose worker died has no format
            pdf = detect_format(task.path, task.format) == "pdf"
        if pdf:
            pdf_parts.append(result)
            if last:
                yield task, finish_pdf(task, pdf_parts)
        elif not failed:  # a row-grouped Parquet part: passed on, not kept
            result.more = not (last or result.error)
            failed = bool(result.error)
            yield task, result
        if last:
            pdf_parts, seen, failed = [], 0, False


BATCH_UNITS, BATCH_BYTES = 64, 8 << 20  # small files travel to a worker together: one round trip for many


def results(units: Iterable[Unit], num_proc: int) -> Iterator[tuple[FileTask, int, FileResult]]:
    """(file task, its number of parts, the part's result) in the order of `units`. num_proc > 1: that many
    spawned workers, fed batches of small files (or one big file, or one page range or range of row groups), at most
    2 * num_proc batches in flight (memory stays bounded whatever the corpus size)."""
    if num_proc <= 1:
        for task, part, n_parts in units:
            yield task, n_parts, process_file(part)
        return
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(num_proc, mp_context=context)
    window: deque = deque()
    try:
        for batch in _batches(units):
            window.append((batch, _submit(pool, [part for _, part, _ in batch])))
            while len(window) >= 2 * num_proc:
                pool = yield from _next(window, pool, num_proc, context)
        while window:
            pool = yield from _next(window, pool, num_proc, context)
    except BaseException:  # an error downstream, or the consumer stopped early: no waiting for the workers
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()  # all done: the workers exit (and their CPU time counts as this process's children's)


def process_batch(parts: list[FileTask]) -> list[FileResult]:
    return [process_file(part) for part in parts]


def _batches(units: Iterable[Unit]) -> Iterator[list[Unit]]:
    batch: list[Unit] = []
    size = 0
    for unit in units:
        part = unit[1]
        try:
            unit_size = BATCH_BYTES if part.pages or part.row_groups or part.url else part.path.stat().st_size
        except OSError:
            unit_size = 0  # the worker reports why it cannot be read
        if batch and (len(batch) >= BATCH_UNITS or size + unit_size > BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(unit)
        size += unit_size
    if batch:
        yield batch


def _submit(pool: ProcessPoolExecutor, parts: list[FileTask]) -> Future:
    try:
        return pool.submit(process_batch, parts)
    except BrokenProcessPool as e:  # a worker died since the last look: this batch is retried with the others
        failed: Future = Future()
        failed.set_exception(e)
        return failed


def _next(window: deque, pool: ProcessPoolExecutor, num_proc: int, context):
    batch, future = window[0]
    try:
        outcomes = future.result()
    except BrokenProcessPool:  # some worker died: find the part that kills it, keep the others' results
        pool.shutdown(wait=False, cancel_futures=True)
        _check_workers_start(context)
        for batch, done in list(window):
            if done.done() and not done.cancelled() and done.exception() is None:
                outcomes = done.result()  # finished before the crash
            else:
                outcomes = [_alone(part, context) for _, part, _ in batch]
            window.popleft()
            for (task, _, n_parts), outcome in zip(batch, outcomes):
                yield task, n_parts, outcome
        return ProcessPoolExecutor(num_proc, mp_context=context)
    window.popleft()
    for (task, _, n_parts), outcome in zip(batch, outcomes):
        yield task, n_parts, outcome
    return pool


def _check_workers_start(context) -> None:
    """After a crash: a worker that dies with no file to convert means that none can start (not a bad file), and
    retrying every file alone would only repeat that."""
    with ProcessPoolExecutor(1, mp_context=context) as probe:
        try:
            probe.submit(process_batch, []).result()
        except BrokenProcessPool:
            raise RuntimeError("prepare's worker processes die as they start, before converting any file. Calling "
                               "prepare from a script? Guard its code with `if __name__ == \"__main__\":` (the "
                               "workers are spawned and import the main module). Or set data.num_proc=1") from None


def _alone(part: FileTask, context) -> FileResult:
    """One part in a process of its own: its result, or the error of the part that kills its worker."""
    with ProcessPoolExecutor(1, mp_context=context) as alone:
        try:
            return alone.submit(process_file, part).result()
        except BrokenProcessPool:
            return FileResult(error=f"{part.path}: the worker process died while converting this file (a crash in "
                                    "its reader, or out of memory): file skipped")
