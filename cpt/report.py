"""`python -m cpt.report <multirun dir>`: compare the jobs of a sweep without W&B.

Reads every job directory (one holding metrics.jsonl) under the sweep: its overrides (.hydra/overrides.yaml),
its resolved config and its metrics. Writes into the sweep directory:
  report.md, report.csv   one row per job: overrides, status, steps, final train loss, best validation loss and
                          perplexity (and at which step), median tokens/s; sorted by best validation loss
  train_loss.png, val_loss.png   the curves of every job, the best job drawn thick and marked in the legend
Status: completed (reached trainer.steps), failed (a .submitit result says so, or the log ends in a traceback
without reaching the end), or incomplete (stopped early: killed, still running, or waiting to be requeued).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Optional

import yaml


def read_job(job_dir: Path) -> dict:
    records = [json.loads(line) for line in (job_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = {r["step"]: r for r in records if "loss" in r}  # a resumed job logs some steps twice: the last wins
    val = {r["step"]: r["val_loss"] for r in records if "val_loss" in r}
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    config = yaml.safe_load((job_dir / "config.yaml").read_text()) if (job_dir / "config.yaml").is_file() else {}
    steps = (config.get("trainer") or {}).get("steps")
    last = max(train) if train else 0
    best_step = min(val, key=val.get) if val else None
    tps = [r["tokens_per_s"] for r in train.values() if r.get("tokens_per_s")]
    if steps is not None and last >= steps:
        status = "completed"
    else:
        tail = (job_dir / "train.log").read_text()[-4000:] if (job_dir / "train.log").is_file() else ""
        status = "failed" if "Traceback" in tail or "][ERROR]" in tail else "incomplete"
    return {
        "job": job_dir.name,
        "overrides": overrides,
        "status": status,
        "steps": last,
        "final_loss": train[last]["loss"] if train else None,
        "best_val_loss": val[best_step] if val else None,
        "best_val_ppl": math.exp(min(val[best_step], 50.0)) if val else None,
        "best_val_step": best_step,
        "tokens_per_s": statistics.median(tps) if tps else None,
        "train_curve": sorted((s, r["loss"]) for s, r in train.items()),
        "val_curve": sorted(val.items()),
    }


def find_jobs(sweep: Path) -> list[Path]:
    return sorted((p.parent for p in sweep.rglob("metrics.jsonl")), key=lambda p: (len(p.parts), str(p)))


COLUMNS = ["job", "overrides", "status", "steps", "final_loss", "best_val_loss", "best_val_ppl", "best_val_step",
           "tokens_per_s"]


# how report.md shows numbers (report.csv keeps full precision)
_FORMATS = {"final_loss": "{:.4f}", "best_val_loss": "{:.4f}", "best_val_ppl": "{:,.2f}", "tokens_per_s": "{:,.0f}"}


def _fmt(column: str, v) -> str:
    if v is None:
        return "—"
    return _FORMATS[column].format(v) if column in _FORMATS else str(v)


def write_tables(jobs: list[dict], out: Path) -> None:
    with open(out / "report.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(jobs)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for i, job in enumerate(jobs):
        cells = [_fmt(c, job[c]) for c in COLUMNS]
        if i == 0 and job["best_val_loss"] is not None:
            cells[0] = f"**{cells[0]}** (best)"
        lines.append("| " + " | ".join(cells) + " |")
    (out / "report.md").write_text(f"# Sweep report: {out}\n\n" + "\n".join(lines) + "\n")


def plot(jobs: list[dict], key: str, ylabel: str, path: Path, best: Optional[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for job in jobs:
        curve = job[key]
        if not curve:
            continue
        is_best = job["job"] == best
        label = f"{job['job']}: {job['overrides'] or '(defaults)'}" + ("  ★ best" if is_best else "")
        ax.plot([s for s, _ in curve], [v for _, v in curve], marker="o" if len(curve) < 30 else None,
                linewidth=3 if is_best else 1.2, label=label[:90])
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(sweep: Path) -> list[dict]:
    job_dirs = find_jobs(sweep)
    if not job_dirs:
        raise FileNotFoundError(f"{sweep}: no job directory with metrics.jsonl below it; is it a cpt multirun dir?")
    jobs = [read_job(d) for d in job_dirs]
    common = set.intersection(*(set(j["overrides"]) for j in jobs))  # show what the sweep varies
    for job in jobs:
        job["overrides"] = " ".join(o for o in job["overrides"] if o not in common or len(jobs) == 1)
    jobs.sort(key=lambda j: (j["best_val_loss"] is None, j["best_val_loss"] or 0.0))
    best = jobs[0]["job"] if jobs[0]["best_val_loss"] is not None else None
    write_tables(jobs, sweep)
    plot(jobs, "train_curve", "train loss", sweep / "train_loss.png", best)
    plot(jobs, "val_curve", "validation loss", sweep / "val_loss.png", best)
    return jobs


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m cpt.report", description=__doc__.split("\n")[0])
    p.add_argument("sweep", type=Path, help="a multirun directory (e.g. multirun/2026-11-23/10-00-00)")
    args = p.parse_args(argv)
    try:
        jobs = report(args.sweep)
    except FileNotFoundError as e:
        sys.exit(str(e))
    print((args.sweep / "report.md").read_text())
    print(f"{len(jobs)} jobs; report.md, report.csv, train_loss.png, val_loss.png in {args.sweep}")


if __name__ == "__main__":
    main()
