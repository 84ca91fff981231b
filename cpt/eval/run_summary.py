"""What one run's W&B summary (and <run dir>/summary.json) holds: the numbers a sweep is compared by.

Computed from the run's metrics.jsonl — every start of the run, so a resumed or requeued run gets the same numbers
as an uninterrupted one — with the code cpt.report uses (cpt.eval.pareto.gain_and_forgetting): base (step-0) and
final validation loss, perplexity and bits per byte, overall and per source, the domain gain and the forgetting,
median tokens/s and MFU over the log windows, the peak memory, plus what the caller adds (trainable parameters,
the data's fingerprint)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Optional

from cpt.eval.pareto import gain_and_forgetting
from cpt.eval.perplexity import perplexity


def step_records(metrics: Path) -> tuple[dict[int, dict], dict[int, dict]]:
    """A run's metrics.jsonl as ({step: training record}, {step: validation record}); a step logged twice (after a
    resume or a rollback) keeps its last record; no file (a run that failed before its first step): empty."""
    lines = metrics.read_text().splitlines() if metrics.is_file() else []
    records = [json.loads(line) for line in lines if line.strip()]
    return ({r["step"]: r for r in records if "loss" in r}, {r["step"]: r for r in records if "val_loss" in r})


def run_summary(metrics: Path, domain: Optional[str], extra: dict) -> dict:
    train, val = step_records(metrics)
    out = dict(extra)
    for name, step in (("base", 0), ("final", max(val) if val else None)):
        record = val.get(step) if step is not None else None
        if record is None:
            continue
        out[f"{name}/step"] = step
        for key, value in record.items():
            if key.startswith(("val_loss", "val_bpb")):
                out[f"{name}/{key}"] = value
                if key.startswith("val_loss"):
                    out[f"{name}/{key.replace('val_loss', 'val_ppl', 1)}"] = perplexity(value)
    tradeoff = gain_and_forgetting(val, domain) if domain else None
    if tradeoff is not None:
        out["domain_gain"] = tradeoff["domain_gain"]
        out["forgetting"] = tradeoff["forgetting"]
        out.update({f"forgetting/{s}": v for s, v in tradeoff["forgetting_by_source"].items()})
    for key in ("tokens_per_s", "mfu"):  # named apart from the history's keys, whose last value W&B also keeps
        values = [r[key] for r in train.values() if r.get(key) is not None]
        if values:
            out[f"median_{key}"] = statistics.median(values)
    peaks = [r["peak_mem_mib"] for r in train.values() if r.get("peak_mem_mib") is not None]
    if peaks:
        out["max_peak_mem_mib"] = max(peaks)
    if train:
        out["steps"] = max(train)
        out["final/loss"] = train[max(train)]["loss"]
    return out
