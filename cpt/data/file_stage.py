"""The per-file stage of prepare, run in `data.num_proc` worker processes: convert one file, cut long documents into
chunks, clean, filter by length, and compute each document's split and dedup signature. What depends on other
documents — the dedup decisions and the writing — stays with the parent, which takes the results in file order, so
the output is the same for any number of processes.

A worker that dies on a file (a crash inside a reader, out of memory) costs that file only: the files that were in
flight are retried one by one in a fresh process, the one that kills it again is reported as failed, and the rest
goes on."""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from cpt import faults
from cpt.config import CleanConfig, ConvertConfig, DedupConfig
from cpt.data.chunk import split_document
from cpt.data.clean import clean_text, length_problem
from cpt.data.convert import EmptyFileError, FileError, convert_file, detect_format
from cpt.data.dedup import Signature, signature
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


def process_file(task: FileTask) -> FileResult:
    faults.maybe_crash_on_file(task.path)
    result = FileResult()
    try:
        result.format = detect_format(task.path, task.format)
        records = convert_file(task.path, result.format, task.convert,
                               lambda line, message: result.record_errors.append((line, message)))
        for n, record in enumerate(records):
            for piece, where in split_document(record.pop("text"), task.chunk_chars):
                text = clean_text(piece, task.clean)
                doc_id = f"{task.source}:{task.path.name}#{n}" + (f"/{where['chunk']}" if where else "")
                doc = Doc(doc_id, text, {**record, **where}, length_problem(text, task.clean))
                if doc.dropped is None:
                    doc.signature, doc.split = signature(text, task.dedup), split_of(text, task.val_fraction)
                result.docs.append(doc)
    except FileError as e:
        result.error, result.empty = str(e), isinstance(e, EmptyFileError)
    return result


def run_in_order(tasks: Iterable[FileTask], num_proc: int) -> Iterator[tuple[FileTask, FileResult]]:
    """(task, result) in the order of `tasks`. num_proc > 1: that many spawned workers, at most 2 * num_proc files
    in flight (memory stays bounded whatever the corpus size)."""
    if num_proc <= 1:
        for task in tasks:
            yield task, process_file(task)
        return
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(num_proc, mp_context=context)
    window: deque = deque()
    try:
        for task in tasks:
            window.append((task, pool.submit(process_file, task)))
            while len(window) >= 2 * num_proc:
                pool = yield from _next(window, pool, num_proc, context)
        while window:
            pool = yield from _next(window, pool, num_proc, context)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _next(window: deque, pool: ProcessPoolExecutor, num_proc: int, context):
    task, future = window[0]
    try:
        result = future.result()
    except BrokenProcessPool:  # some worker died: find the file that kills it, keep the others' results
        pool.shutdown(wait=False, cancel_futures=True)
        for pending, done in list(window):
            if done.done() and not done.cancelled() and done.exception() is None:
                outcome = done.result()  # finished before the crash
            else:
                with ProcessPoolExecutor(1, mp_context=context) as alone:
                    try:
                        outcome = alone.submit(process_file, pending).result()
                    except BrokenProcessPool:
                        outcome = FileResult(error=f"{pending.path}: the worker process died while converting this "
                                                   "file (a crash in its reader, or out of memory): file skipped")
            window.popleft()
            yield pending, outcome
        return ProcessPoolExecutor(num_proc, mp_context=context)
    window.popleft()
    yield task, result
    return pool
