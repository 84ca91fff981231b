"""The part of prepare that decides and writes: what would be prepared (`make_plan`: tokenizer, fingerprint, the
files as units of work; nothing to do when the data is up to date) and, given every file's converted result in file
order (cpt.data.file_stage locally, or read back from a Slurm array's shards), the dedup and split decisions,
docs/<source>.<split>.jsonl, the token shards (tokenized by cpt.data.pack while results arrive), report.json and the
manifest, written into a temporary directory and swapped in (`publish`): a crash leaves the previous version intact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import resource
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from cpt.config.schema import DataConfig, RunConfig
from cpt.config.validate import validate_data
from cpt.data.budget import Budgets
from cpt.data.convert import expand_paths
from cpt.data.dedup import SHINGLE_HASH, Deduplicator
from cpt.data.file_stage import FileResult, FileTask
from cpt.data.hf_source import DatasetFiles, is_remote, resolve
from cpt.data.manifest import MANIFEST, SPLITS, data_dir
from cpt.data.pack import Packer, token_dtype
from cpt.data.prepare_report import PrepareError, PrepareReport
from cpt.model.tokenizer import Tokenizer, build_tokenizer, identity
from cpt.model.vocab import fertility_change

log = logging.getLogger("cpt.prepare")


def fingerprint(cfg: DataConfig, tok_identity: dict, files: dict[str, list[Path]],
                datasets: Optional[dict[str, DatasetFiles]] = None) -> str:
    """Changes when anything that shapes the output changes: options, tokenizer, input files (size, mtime).
    Source weights, the replay share, stages and repetition limits are training-time choices and are left out, and
    so is how the work is spread."""
    options = {k: v for k, v in vars(cfg).items()
               if k not in ("sources", "replay", "stages", "warn_epochs", "root", "name", "num_proc", "strict",
                            "executor", "slurm")}
    options["convert"] = {k: v for k, v in vars(cfg.convert).items()
                          if k not in ("pdf_pages_per_task", "parquet_row_groups_per_task")}
    listing = {name: [(str(p), *_size_and_mtime(p)) for p in paths] for name, paths in files.items()}
    listing.update({name: resolved.identity for name, resolved in (datasets or {}).items()})
    formats = {s.name: (s.format, repr(s.dedup), s.text_field, repr(s.where), s.max_docs, s.max_tokens,
                        repr(s.hf)) for s in cfg.sources}
    ids = {k: v for k, v in tok_identity.items() if k != "name"}  # a hub id and its local copy tokenize alike
    blob = json.dumps([repr(options), ids, listing, formats, SHINGLE_HASH], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _size_and_mtime(path: Path) -> tuple[int, int]:
    """A file's size and mtime; a directory read as one source (a `datasets` save_to_disk): its files' total size and
    latest mtime."""
    if path.is_dir():
        stats = [p.stat() for p in path.rglob("*") if p.is_file()]
        return sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def file_tasks(cfg: DataConfig, files: dict[str, list[Path]],
               datasets: Optional[dict[str, DatasetFiles]] = None) -> list[FileTask]:
    """The files of every source in order; a Hugging Face source's files as `datasets` resolved them (remote ones
    streamed by url)."""
    tasks = []
    for source in cfg.sources:
        convert = replace(cfg.convert, json_text_field=source.text_field) if source.text_field else cfg.convert
        base = FileTask(source.name, Path(), source.format, convert, cfg.clean, source.dedup or cfg.dedup,
                        cfg.chunk_chars, cfg.val_fraction, where=source.where)
        if source.hf is None:
            tasks += [replace(base, path=path) for path in files[source.name]]
            continue
        resolved = datasets[source.name]
        for file in resolved.files:
            remote = is_remote(file)
            tasks.append(replace(base, path=Path(file.split("://", 1)[1] if remote else file),
                                 format=source.format or resolved.format, url=file if remote else None))
    return tasks


def convert_sources(cfg: DataConfig, results: Iterable[tuple[FileTask, FileResult]], total: int, docs_dir: Path,
                    report: PrepareReport, packer: Packer, budgets: Budgets) -> None:
    """Every file converted, chunked, cleaned and signed (cpt.data.file_stage, in `data.num_proc` workers or a
    Slurm array); here, in file order, the dedup decisions, the report, docs/<source>.<split>.jsonl, and each kept
    document handed to the packer (tokenized by its workers meanwhile), within its source's budget."""
    from tqdm import tqdm

    docs_dir.mkdir(parents=True)
    dedup = Deduplicator()
    outs = {(s.name, split): open(docs_dir / f"{s.name}.{split}.jsonl", "w", encoding="utf-8")
            for s in cfg.sources for split in SPLITS}
    try:
        with tqdm(total=total, desc="prepare", unit="file", mininterval=1.0) as bar:  # closed on errors too
            entry = None  # a row-grouped Parquet file's entry while its parts come in
            for task, result in results:
                entry = entry or report.file(task.source, task.path, result.format or task.format)
                for line, message in result.record_errors:
                    report.record_error(entry, line, message)
                for reason, count in result.skipped.items():
                    report.drop(entry, reason, count)
                for doc in result.docs:
                    reason = doc.dropped or ("over_budget" if not budgets.wants(task.source) else None)
                    reason = reason or dedup.check(doc.signature, task.dedup)
                    if not reason and not budgets.admit(task.source, doc.text):
                        reason = "over_budget"
                    if reason:
                        report.drop(entry, reason)
                        continue
                    record = {"id": doc.id, "text": doc.text, "source": task.source, "path": str(task.path), **doc.meta}
                    outs[task.source, doc.split].write(json.dumps(record, ensure_ascii=False) + "\n")
                    packer.add((task.source, doc.split), doc.text)
                    report.keep(entry, doc.split)
                if result.error and result.empty:
                    report.file_empty(entry, result.error)
                elif result.error:
                    report.file_failed(entry, result.error)
                if result.more:
                    continue
                entry = None
                bar.update(1)
                if bar.n % 256 == 0 or bar.n == total:  # formatting it for every file cost seconds on 20k files
                    bar.set_postfix(docs=sum(sum(c.values()) for c in report.kept.values()), refresh=False)
        log.info("dedup remembered the kept documents in %.1f MiB (exact keys and LSH bands, 8 bytes each)",
                 dedup.nbytes() / 2**20)
    finally:
        for out in outs.values():
            out.close()


@dataclass
class Plan:
    """What one prepare of cfg.data is: its tokenizer and fingerprint, the files as units of work, where it goes."""

    cfg: RunConfig
    tokenizer: Tokenizer
    identity: dict
    fingerprint: str
    tasks: list[FileTask]
    out: Path
    up_to_date: bool  # the prepared data at `out` has this fingerprint already: nothing to do


def make_plan(cfg: RunConfig) -> Plan:
    d = cfg.data
    validate_data(d)
    tokenizer = build_tokenizer(cfg.model)
    tok_identity = identity(tokenizer)
    files = {s.name: expand_paths(s.paths, f"data.sources[{i}].paths") for i, s in enumerate(d.sources)
             if s.hf is None}
    datasets = {s.name: resolve(s.hf, f"data.sources[{i}].hf") for i, s in enumerate(d.sources) if s.hf is not None}
    fp = fingerprint(d, tok_identity, files, datasets)
    out = data_dir(d)
    done = (out / MANIFEST).is_file() and json.loads((out / MANIFEST).read_text()).get("fingerprint") == fp
    return Plan(cfg, tokenizer, tok_identity, fp, file_tasks(d, files, datasets), out, done)


def publish(plan: Plan, results: Iterable[tuple[FileTask, FileResult]], budgets: Optional[Budgets] = None) -> Path:
    """Every file's result (in file order) -> the prepared data at plan.out, swapped in whole. `budgets`: the one
    the results' producer consults to stop reading full sources (None: a fresh one, every result comes)."""
    cfg, d, tokenizer, out = plan.cfg, plan.cfg.data, plan.tokenizer, plan.out
    start, cpu = time.perf_counter(), _cpu_seconds()
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        stage_seconds: dict[str, float] = {}
        budgets = budgets or Budgets(d.sources, tokenizer)
        dtype, sources = build(d, results, len(plan.tasks), tokenizer, tmp, stage_seconds, budgets)
        tokens = sum(e["tokens"] for s in sources.values() for e in s.values())
        manifest = {"name": d.name, "fingerprint": plan.fingerprint, "tokenizer": plan.identity, "dtype": dtype,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "tokens": tokens,
                    "seconds": round(time.perf_counter() - start, 2), "stage_seconds": stage_seconds,
                    "cpu_seconds": {k: round(v - cpu[k], 2) for k, v in _cpu_seconds().items()},
                    "sources": sources}
        if tokenizer.extension:  # model.extend_vocab: how much shorter the domain text got (cpt.model.vocab)
            manifest["fertility"] = fertility_change(build_tokenizer(cfg.model, extend=False), tokenizer,
                                                     tmp / "docs" / f"{d.sources[0].name}.train.jsonl")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    except BaseException:  # any failure (Ctrl-C too) leaves no temporary directory behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    swap_in(tmp, out)
    log.info("prepared %s: %d tokens in %.1f s (%.0f tokens/s; %s; CPU s: %s); report: %s", out, tokens,
             manifest["seconds"], tokens / max(manifest["seconds"], 1e-9),
             ", ".join(f"{stage} {s:.1f} s" for stage, s in manifest["stage_seconds"].items()),
             ", ".join(f"{who} {s:.1f}" for who, s in manifest["cpu_seconds"].items()), out / "report.json")
    return out


def _cpu_seconds() -> dict[str, float]:
    """CPU time (user + system) of this process and of its finished worker processes so far."""
    me, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"this process": me.ru_utime + me.ru_stime, "workers": workers.ru_utime + workers.ru_stime}


def build(d: DataConfig, results: Iterable[tuple[FileTask, FileResult]], total: int, tokenizer, tmp: Path,
          stage_seconds: dict[str, float], budgets: Budgets) -> tuple[str, dict]:
    """Documents, token shards and report.json into `tmp`: (token dtype, manifest entry per source and split);
    the wall time of each stage into stage_seconds: "convert" until the last file is decided (tokenizing overlaps
    it), "tokenize" for the batches still in flight then."""
    report = PrepareReport(d.strict)
    dtype = token_dtype(len(tokenizer))
    start = time.perf_counter()
    dirs = {(s.name, split): tmp / s.name / split for s in d.sources for split in SPLITS}
    with Packer(dirs, tokenizer, dtype, d.shard_tokens, d.num_proc, d.tokenize_batch) as packer:
        convert_sources(d, results, total, tmp / "docs", report, packer, budgets)
        stage_seconds["convert"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        entries = packer.close()
    stage_seconds["tokenize"] = round(time.perf_counter() - start, 2)
    for source in d.sources:
        said = budgets.summary(source.name)
        if said:
            report.note(source.name, said)
    report.log_summary()
    for source in d.sources:
        kept = report.kept.get(source.name)
        for split, role in (("train", "training"), ("val", "validation")):
            if kept and not kept[split]:
                effect = ("training on it fails unless its weight is 0" if split == "train"
                          else "its gain or forgetting cannot be measured")
                report.warn(f"source {source.name}: no {role} document (all {sum(kept.values())} went to the other "
                            f"split): {effect}; lower data.chunk_chars (now {d.chunk_chars}) to cut long documents, "
                            f"or change data.val_fraction (now {d.val_fraction})")
    if not report.kept:
        raise PrepareError("no document survived conversion and filtering: see the problems logged above")
    sources: dict = {s.name: {} for s in d.sources}
    for (name, split), entry in entries.items():
        sources[name][split] = entry
        log.info("source %s %s: %d documents, %d tokens, %d shards", name, split, entry["docs"], entry["tokens"],
                 len(entry["shards"]))
    report.save(tmp / "report.json")
    return dtype, sources


def work_dir(d: DataConfig, fp: str) -> Path:
    """Where a Slurm prepare keeps its shards until the data is published: beside it, one per fingerprint."""
    out = data_dir(d)
    return out.with_name(f".{out.name}.work-{fp}")


def swap_in(tmp: Path, out: Path) -> None:
    """Replace `out` by the finished `tmp` with renames, so readers never see a half-written directory."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
