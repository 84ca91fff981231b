"""`python -m cpt.report <multirun dir>`: compare the jobs of a sweep without W&B.

Reads every job directory (one holding metrics.jsonl) under the sweep: its overrides (.hydra/overrides.yaml),
its resolved config and its metrics. Writes into the sweep directory:
  report.md, report.csv   one row per job: overrides, status, steps, final train loss, the lowest validation loss
                          and its perplexity (and at which step), median tokens/s, and for runs with several sources
                          the domain gain and the forgetting (cpt/eval/pareto.py); sorted by lowest validation loss
  train_loss.png, val_loss.png   the curves of every job, the one with the lowest validation loss drawn thick
One word, one meaning: "best" is only ever the best trade-off of gain against forgetting (one job at most); the
job with the lowest validation loss is called that, in the tables, the CSV and the plots.
  pareto.png              forgetting against domain gain, one labelled point per completed job, the Pareto front
                          and the best trade-off (largest gain with forgetting <= --max-forgetting); report.md
                          gets the same as a table
Status: completed (reached trainer.steps), failed (a .submitit result says so, or the log ends in a traceback
without reaching the end), or incomplete (stopped early: killed, still running, or waiting to be requeued).
"""

from __future__ import annotations

import csv
import statistics
from pathlib import Path
from typing import Optional

import yaml

from cpt.eval.pareto import best_tradeoff, gain_and_forgetting, pareto_front, plot_pareto
from cpt.eval.perplexity import perplexity
from cpt.eval.run_summary import step_records

DEFAULT_MAX_FORGETTING = 0.05  # 5% higher perplexity on the replayed/general sources


def read_yaml(path: Path, default):
    """A job's YAML file (.hydra/overrides.yaml, config.yaml), or `default` when it is missing or empty."""
    return (yaml.safe_load(path.read_text()) if path.is_file() else None) or default


def read_job(job_dir: Path, domain: Optional[str] = None) -> dict:
    """One job's row; `domain` names the domain source (default: the first source of the job's data config)."""
    train, val_records = step_records(job_dir / "metrics.jsonl")
    val = {step: r["val_loss"] for step, r in val_records.items()}
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = read_yaml(overrides_file, [])
    config = read_yaml(job_dir / "config.yaml", {})
    steps = (config.get("trainer") or {}).get("steps")
    last = max(train) if train else 0
    min_step = min(val, key=val.get) if val else None
    tps = [r["tokens_per_s"] for r in train.values() if r.get("tokens_per_s")]
    sources = (config.get("data") or {}).get("sources") or [{}]
    tradeoff = gain_and_forgetting(val_records, domain or sources[0].get("name", ""))
    tail = (job_dir / "train.log").read_text()[-4000:] if (job_dir / "train.log").is_file() else ""
    errors = [line.split("][ERROR] ", 1)[1] for line in tail.splitlines() if "][ERROR] " in line]
    if steps is not None and last >= steps:
        status = "completed"
    else:
        status = "failed" if "Traceback" in tail or errors else "incomplete"
    return {
        "job": job_dir.name,
        "overrides": overrides,
        "status": status,
        "error": errors[-1] if status == "failed" and errors else None,
        "steps": last,
        "final_loss": train[last]["loss"] if train else None,
        "min_val_loss": val[min_step] if val else None,
        "min_val_ppl": perplexity(val[min_step]) if val else None,
        "min_val_step": min_step,
        "tokens_per_s": statistics.median(tps) if tps else None,
        "domain_gain": tradeoff["domain_gain"] if tradeoff else None,
        "forgetting": tradeoff["forgetting"] if tradeoff else None,
        "tradeoff": tradeoff,
        "pareto": None,  # set by tradeoff_section for the jobs it scores
        "train_curve": sorted((s, r["loss"]) for s, r in train.items()),
        "val_curve": sorted(val.items()),
    }


def find_jobs(sweep: Path) -> list[Path]:
    """Job directories: those with metrics, and those of the sweep's jobs that failed before writing any."""
    found = {p.parent for p in sweep.rglob("metrics.jsonl")} | {p.parent.parent for p in
                                                                 sweep.rglob(".hydra/overrides.yaml")}
    found.discard(sweep)  # a single run's own .hydra
    return sorted(found, key=lambda p: (len(p.parts), str(p)))


BEST = "best trade-off"  # the only thing a report calls best (cpt/eval/pareto.py's best_tradeoff)

COLUMNS = ["job", "overrides", "status", "steps", "final_loss", "min_val_loss", "min_val_ppl", "min_val_step",
           "tokens_per_s", "domain_gain", "forgetting", "pareto", "error"]


# how report.md shows numbers (report.csv keeps full precision)
_FORMATS = {"final_loss": "{:.4f}", "min_val_loss": "{:.4f}", "min_val_ppl": "{:,.2f}", "tokens_per_s": "{:,.0f}",
            "domain_gain": "{:+.1%}", "forgetting": "{:+.1%}"}


def _fmt(column: str, v) -> str:
    if v is None:
        return "—"
    return _FORMATS[column].format(v) if column in _FORMATS else str(v)


def write_tables(jobs: list[dict], out: Path, tradeoffs: str) -> None:
    by_source = sorted({s for j in jobs if j["tradeoff"] for s in j["tradeoff"]["forgetting_by_source"]})
    with open(out / "report.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS + [f"forgetting/{s}" for s in by_source], extrasaction="ignore")
        writer.writeheader()
        for job in jobs:
            per_source = job["tradeoff"]["forgetting_by_source"] if job["tradeoff"] else {}
            writer.writerow({**job, **{f"forgetting/{s}": v for s, v in per_source.items()}})
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for i, job in enumerate(jobs):
        cells = [_fmt(c, job[c]) for c in COLUMNS]
        if i == 0 and job["min_val_loss"] is not None:
            cells[0] = f"**{cells[0]}** (lowest val loss)"
        lines.append("| " + " | ".join(cells) + " |")
    (out / "report.md").write_text(f"# Sweep report: {out}\n\n" + "\n".join(lines) + "\n" + tradeoffs)


def short_label(job: dict) -> str:
    """'optim.lr=1e-4 data.replay=0.05' -> 'lr=1e-4 replay=0.05' (the job's name when nothing varies)."""
    parts = [o.split("=", 1) for o in job["overrides"].split()]
    return " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in parts if v is not None) or job["job"]


def tradeoff_section(jobs: list[dict], out: Path, max_forgetting: float) -> str:
    """The Pareto analysis of the completed jobs that have a domain gain and a forgetting: sets each job's `pareto`
    (best / front / dominated), draws pareto.png and returns report.md's section ('' when no job qualifies)."""
    (out / "pareto.png").unlink(missing_ok=True)  # from an earlier report of this sweep
    scored = [j for j in jobs if j["status"] == "completed" and j["forgetting"] is not None]
    if not scored:
        return ""
    points = [(j["forgetting"], j["domain_gain"]) for j in scored]
    front = pareto_front(points)
    best = best_tradeoff(points, front, max_forgetting)
    for i, job in enumerate(scored):
        job["pareto"] = BEST if i == best else "front" if i in front else "dominated"
    domain = scored[0]["tradeoff"]["domain"]
    plot_pareto([j["job"] for j in scored], [short_label(j) for j in scored], points, front, best, max_forgetting,
                domain, out / "pareto.png")
    others = ", ".join(sorted(scored[0]["tradeoff"]["forgetting_by_source"]))
    lines = [f"\n## Domain gain vs forgetting ({len(scored)} completed jobs; pareto.png)\n",
             f"Domain gain: perplexity drop on '{domain}' from step 0 (the base model) to the last validation. "
             f"Forgetting: mean perplexity rise on the other sources ({others}). The Pareto front holds the jobs "
             "that no other job beats on both; the best trade-off is the front job with the largest gain whose "
             f"forgetting is at most {max_forgetting:.1%} (--max-forgetting).\n",
             "| job | overrides | domain gain | forgetting | Pareto |", "|---|---|---|---|---|"]
    for job in sorted(scored, key=lambda j: -j["domain_gain"]):
        mark = f"**{BEST}**" if job["pareto"] == BEST else job["pareto"]
        lines.append(f"| {job['job']} | {job['overrides']} | {_fmt('domain_gain', job['domain_gain'])} | "
                     f"{_fmt('forgetting', job['forgetting'])} | {mark} |")
    if best is None:
        lines.append(f"\nNo job on the front forgets at most {max_forgetting:.1%}: no best trade-off (raise "
                     "--max-forgetting, add replay or lower the learning rate).")
    return "\n".join(lines) + "\n"


def plot(jobs: list[dict], key: str, ylabel: str, path: Path, lowest: Optional[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for job in jobs:
        curve = job[key]
        if not curve:
            continue
        is_lowest = job["job"] == lowest
        label = f"{job['job']}: {job['overrides'] or '(defaults)'}" + ("  ★ lowest val loss" if is_lowest else "")
        ax.plot([s for s, _ in curve], [v for _, v in curve], marker="o" if len(curve) < 30 else None,
                linewidth=3 if is_lowest else 1.2, label=label[:90])
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(sweep: Path, domain: Optional[str] = None, max_forgetting: float = DEFAULT_MAX_FORGETTING) -> list[dict]:
    job_dirs = find_jobs(sweep)
    if not job_dirs:
        raise FileNotFoundError(f"{sweep}: no job directory with metrics.jsonl below it; is it a cpt multirun dir?")
    jobs = [read_job(d, domain) for d in job_dirs]
    common = set.intersection(*(set(j["overrides"]) for j in jobs))  # show what the sweep varies
    for job in jobs:
        job["overrides"] = " ".join(o for o in job["overrides"] if o not in common or len(jobs) == 1)
    jobs.sort(key=lambda j: (j["min_val_loss"] is None, j["min_val_loss"] or 0.0))
    lowest = jobs[0]["job"] if jobs[0]["min_val_loss"] is not None else None
    tradeoffs = tradeoff_section(jobs, sweep, max_forgetting)
    write_tables(jobs, sweep, tradeoffs)
    plot(jobs, "train_curve", "train loss", sweep / "train_loss.png", lowest)
    plot(jobs, "val_curve", "validation loss", sweep / "val_loss.png", lowest)
    return jobs
