"""`cpt.prepare` past one machine (data.executor=slurm): the per-file stage as a Slurm job array, the rest as one job.

    python -m cpt.prepare data=legal data.executor=slurm data.slurm.shards=64 data.slurm.partition=cpu data.num_proc=8

This process plans the units of work (files, page ranges of big PDFs) and writes the plan to a work directory beside
the prepared data; array task k converts every shards-th unit with data.num_proc processes (cpt.data.file_stage) and
publishes shard-k.jsonl atomically; one more job then reads the shards back in unit order and runs the rest of
prepare (dedup and split decisions, tokenizing) exactly as a local run does, so the output is the same. A shard that
failed is named with its log; running the same command again submits only the shards that are missing. Timed-out
or preempted jobs are requeued by submitit and redo their shard. The work directory goes once the data is
published."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from cpt.common import faults
from cpt.config.schema import RunConfig
from cpt.data.file_stage import Doc, FileResult, FileTask, assemble, plan_units, results
from cpt.data.prepare_report import PrepareError
from cpt.data.publish import make_plan, publish

log = logging.getLogger("cpt.prepare")
PLAN = "plan.json"


def prepare_on_slurm(cfg: RunConfig, tasks: list[FileTask], work: Path) -> Path:
    """Submit the shards still missing, then the job that finishes prepare; wait for both."""
    import submitit

    d = cfg.data
    work.mkdir(parents=True, exist_ok=True)
    plan = _load_or_write_plan(tasks, work, min(d.slurm.shards, max(1, len(tasks))))
    shards = plan["shards"]
    if shards != min(d.slurm.shards, max(1, len(tasks))):
        log.warning("data.slurm.shards=%d ignored: this unfinished prepare was cut into %d shards (%s)",
                    d.slurm.shards, shards, work / PLAN)
    missing = [k for k in range(shards) if not _shard_path(work, k).is_file()]
    executor = submitit.AutoExecutor(folder=work / "slurm" / "%j", cluster="slurm")
    executor.update_parameters(slurm_partition=d.slurm.partition, cpus_per_task=d.num_proc, mem_gb=d.slurm.mem_gb,
                               timeout_min=d.slurm.timeout_min, slurm_array_parallelism=d.slurm.array_parallelism,
                               slurm_setup=list(d.slurm.setup), slurm_additional_parameters=dict(
                                   d.slurm.additional_parameters), name=f"prepare-{d.name}", nodes=1,
                               tasks_per_node=1)
    log.info("prepare on Slurm: %d units of work in %d shards, %d already done (%s)", len(plan["units"]), shards,
             shards - len(missing), work)
    if missing:
        jobs = executor.map_array(ConvertShard(), [tasks] * len(missing), [work] * len(missing), missing,
                                  [shards] * len(missing), [d.num_proc] * len(missing))
        log.info("submitted array %s: shards %s", jobs[0].job_id.split("_")[0], _ranges(missing))
        failed = []
        for k, job in zip(missing, jobs):
            try:
                job.result()
            except Exception as e:  # submitit's FailedJobError / UncompletedJobError carry the job's stderr tail
                failed.append(k)
                log.error("shard %d (job %s) failed: %s", k, job.job_id, _cause(e))
        if failed:
            raise PrepareError(f"{len(failed)} of {shards} shards failed ({_ranges(failed)}); their logs are under "
                               f"{work / 'slurm'}. Run the same command again: the {shards - len(failed)} finished "
                               "shards are kept and only the failed ones are redone")
    executor.update_parameters(name=f"prepare-{d.name}-finish")
    job = executor.submit(_finish, cfg, work)
    log.info("submitted job %s: dedup, split and tokenize", job.job_id)
    try:
        out = job.result()
    except Exception as e:
        raise PrepareError(f"the final prepare job {job.job_id} failed: {_cause(e)}. Its log is under "
                           f"{work / 'slurm'}; once fixed, run the same command again: every shard is kept") from None
    shutil.rmtree(work, ignore_errors=True)
    return out


class ConvertShard:
    """One array task: units k, k + shards, ... of the plan, converted by num_proc local processes, into
    shard-k.jsonl (written to a temporary name, then renamed: a shard file is always whole). A requeued task
    (timeout, preemption) starts its shard again."""

    def __call__(self, tasks: list[FileTask], work: Path, shard: int, shards: int, num_proc: int) -> int:
        faults.maybe_fail_shard(shard)
        units = _units(tasks, work)[shard::shards]
        out = _shard_path(work, shard)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            for _, _, result in results(units, num_proc):
                f.write(json.dumps(_encode(result), ensure_ascii=False) + "\n")
        tmp.replace(out)
        return len(units)

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def read_shards(tasks: list[FileTask], work: Path) -> Iterator[tuple[FileTask, FileResult]]:
    """Every file's result, in file order, streamed from the shards (unit i is line i // shards of shard i % shards:
    one line of each file open at a time, whatever the corpus size)."""
    units, shards = _units(tasks, work), json.loads((work / PLAN).read_text())["shards"]
    files = [open(_shard_path(work, k), encoding="utf-8") for k in range(shards)]
    try:
        def per_unit():
            for i, (task, _, n_parts) in enumerate(units):
                line = files[i % shards].readline()
                if not line:
                    raise PrepareError(f"{_shard_path(work, i % shards)} ends before unit {i}: remove it and run "
                                       "prepare again")
                yield task, n_parts, _decode(json.loads(line))

        yield from assemble(per_unit())
    finally:
        for f in files:
            f.close()


def _finish(cfg: RunConfig, work: Path) -> Path:
    """The last job: every shard read back in unit order, then the rest of prepare as a local run does it."""
    plan = make_plan(cfg)
    if plan.up_to_date:
        return plan.out
    return publish(plan, read_shards(plan.tasks, work))


def _load_or_write_plan(tasks: list[FileTask], work: Path, shards: int) -> dict:
    """{"shards": n, "units": [(task index, page range or None, parts of its file, row-group range or None)]}: made
    once (PDF page counts and Parquet row-group counts read here), reused by every job and by a rerun, so that all
    agree on which unit is in which shard."""
    path = work / PLAN
    if path.is_file():
        return json.loads(path.read_text())
    index = {id(task): i for i, task in enumerate(tasks)}
    plan = {"shards": shards,
            "units": [(index[id(task)], part.pages, n_parts, part.row_groups)
                      for task, part, n_parts in plan_units(tasks)]}
    tmp = path.with_name(f".{PLAN}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(plan))
    tmp.replace(path)
    return plan


def _units(tasks: list[FileTask], work: Path) -> list[tuple[FileTask, FileTask, int]]:
    plan = json.loads((work / PLAN).read_text())
    return [(tasks[i], replace(tasks[i], pages=tuple(pages) if pages else None,
                               row_groups=tuple(groups[0]) if groups and groups[0] else None), n)
            for i, pages, n, *groups in plan["units"]]  # plans written before row groups have no 4th item


def _shard_path(work: Path, k: int) -> Path:
    return work / f"shard-{k:05d}.jsonl"


def _cause(e: Exception) -> str:
    """The exception a failed job raised, from submitit's error (which carries the job's stderr tail)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", line)]
    return raised[-1] if raised else (lines[0] if lines else type(e).__name__)


def _ranges(ks: list[int]) -> str:
    return ", ".join(str(k) for k in ks[:20]) + (f" ... ({len(ks)} in all)" if len(ks) > 20 else "")


def _encode(r: FileResult) -> dict:
    docs = [{"id": d.id, "text": d.text, "meta": d.meta, "dropped": d.dropped, "split": d.split,
             "key": d.signature[0],
             "minhash": d.signature[1].tolist() if d.signature[1] is not None else None} for d in r.docs]
    return {"format": r.format, "docs": docs, "record_errors": r.record_errors, "error": r.error, "empty": r.empty,
            "pages": r.pages, "skipped": r.skipped}


def _decode(o: dict) -> FileResult:
    docs = [Doc(d["id"], d["text"], d["meta"], d["dropped"],
                (d["key"],
                 np.array(d["minhash"], dtype=np.uint32) if d["minhash"] is not None else None), d["split"])
            for d in o["docs"]]
    return FileResult(o["format"], docs, [tuple(e) for e in o["record_errors"]], o["error"], o["empty"], o["pages"],
                      o.get("skipped", {}))  # shards written before skipped counts were kept have none
