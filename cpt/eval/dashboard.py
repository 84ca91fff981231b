"""A sweep's W&B dashboard: what it shows, as a plain specification (wandb_dashboard.json), and the W&B report built
from it with wandb-workspaces (reports API v2).

The specification names every key it uses with its kind — history:<key> (logged at steps), summary:<key> (a run's
summary: cpt.eval.run_summary), config:<key> (a swept config key, a W&B config column) and media:<key> (an image the
sweep's report run logged) — and holds only keys the sweep's jobs really wrote: panels are chosen from the keys in
the jobs' metrics.jsonl and summary.json files and the overrides that differ between jobs, never from a list of
names that could be misspelled or absent. The dashboard, top to bottom:
  validation loss per source against step (one panel per source), training loss and learning rate
  domain gain against forgetting (scatter), parallel coordinates from the swept keys to gain and forgetting,
  a run comparer
  the report's tables (report.md) and its Pareto figure (pareto.png, logged by the sweep's report run)
Runs are coloured by the swept keys: the first swept key picks the colour family, the second the shade, so jobs that
share a learning rate share a hue.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from matplotlib import colormaps
from matplotlib.colors import to_hex

from cpt.eval.run_summary import step_records
from cpt.eval.sweep_report import read_yaml

SPEC_FILE = "wandb_dashboard.json"
REPORT_JOB_TYPE = "report"  # the sweep's report run; training runs are "train" (cpt.train.tracking)
PARETO_MEDIA = "pareto"  # the report run's image of pareto.png
_FAMILIES = ("Blues", "Oranges", "Greens", "Purples", "Reds", "Greys", "YlOrBr", "PuRd")


def _config_value(config: dict, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _overrides(job_dir: Path) -> dict[str, str]:
    pairs = [item.split("=", 1) for item in read_yaml(job_dir / ".hydra" / "overrides.yaml", []) if "=" in item]
    return {key.lstrip("+~"): value for key, value in pairs if not key.lstrip("+~").startswith("hydra.")}


def swept_keys(job_dirs: list[Path]) -> tuple[list[str], list[str]]:
    """(config columns, other swept overrides): the override keys whose value differs between jobs; a key naming a
    config group (model=..., data=...) is no config column (its config is a tree), so it goes to the second list."""
    overrides = [_overrides(d) for d in job_dirs]
    keys = sorted({k for o in overrides for k in o})
    varying = [k for k in keys if len({o.get(k) for o in overrides}) > 1]
    configs = [read_yaml(d / "config.yaml", {}) for d in job_dirs]
    columns = [k for k in varying if all(not isinstance(_config_value(c, k), (dict, list)) for c in configs)
               and any(_config_value(c, k) is not None for c in configs)]
    return columns, [k for k in varying if k not in columns]


def wandb_run_id(job_dir: Path) -> Optional[str]:
    """The job's W&B run id, from the run directories wandb wrote (…/wandb/[offline-]run-<time>-<id>)."""
    runs = sorted(p for p in (job_dir / "wandb").glob("*run-*-*") if p.is_dir())
    return runs[-1].name.rsplit("-", 1)[1] if runs else None


def _sort_key(value: Optional[str]):
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def run_colors(job_dirs: list[Path], swept: list[str]) -> dict[str, str]:
    """W&B run id -> colour: the first swept key's value picks the family, the second's the shade."""
    overrides = [_overrides(d) for d in job_dirs]
    first = sorted({o.get(swept[0]) for o in overrides}, key=_sort_key) if swept else [None]
    second = sorted({o.get(swept[1]) for o in overrides}, key=_sort_key) if len(swept) > 1 else [None]
    colors = {}
    for job_dir, o in zip(job_dirs, overrides):
        run = wandb_run_id(job_dir)
        if run is None:
            continue
        family = colormaps[_FAMILIES[first.index(o.get(swept[0]) if swept else None) % len(_FAMILIES)]]
        j = second.index(o.get(swept[1])) if len(swept) > 1 else 0
        colors[run] = to_hex(family(0.85 - 0.45 * j / max(len(second) - 1, 1)))
    return colors


def logged_keys(job_dirs: list[Path]) -> tuple[set[str], set[str]]:
    """(history keys, summary keys) written by the jobs: their metrics.jsonl records and summary.json files."""
    history, summary = set(), set()
    for d in job_dirs:
        train, val = step_records(d / "metrics.jsonl")
        history |= {k for r in (*train.values(), *val.values()) for k in r if k != "step"}
        if (d / "summary.json").is_file():
            summary |= set(json.loads((d / "summary.json").read_text()))
    return history, summary


def build_spec(sweep: Path, job_dirs: list[Path], report_md: str, has_pareto: bool) -> dict:
    """The dashboard of a sweep whose jobs logged to W&B (see the module's docstring)."""
    configs = [read_yaml(d / "config.yaml", {}) for d in job_dirs]
    logger = next((c.get("logger") for c in configs if c.get("logger")), {}) or {}
    group = logger.get("group") or str(sweep)
    sources = [s["name"] for s in (configs[0].get("data") or {}).get("sources") or [] if "name" in s]
    swept, not_columns = swept_keys(job_dirs)
    history, summary = logged_keys(job_dirs)

    def line(title: str, key: str) -> Optional[dict]:
        return {"kind": "line", "title": title, "y": [f"history:{key}"]} if key in history else None

    val = [line(f"validation loss: {s}", f"val_loss/{s}") for s in sources] if len(sources) > 1 else []
    val = [p for p in val if p] or [p for p in [line("validation loss", "val_loss")] if p]
    training = [p for p in (line("training loss", "loss"), line("learning rate", "lr")) if p]
    gain = "domain_gain" in summary and "forgetting" in summary
    outcome = ["summary:domain_gain", "summary:forgetting"] if gain else [
        f"summary:{k}" for k in ("final/val_loss", "final/loss") if k in summary]
    comparison = []
    if gain:
        comparison.append({"kind": "scatter", "title": "domain gain vs forgetting (each point a job)",
                           "x": "summary:forgetting", "y": "summary:domain_gain"})
    if swept and outcome:
        comparison.append({"kind": "parallel", "title": "swept keys -> outcome",
                           "columns": [f"config:{k}" for k in swept] + outcome})
    comparison.append({"kind": "comparer", "title": "runs side by side (differences only)"})
    quoted = group.replace("\\", "\\\\").replace("'", "\\'")
    blocks: list[dict] = [
        {"kind": "text", "text": f"{len(job_dirs)} jobs of the sweep {sweep}; swept: "
                                 f"{', '.join(swept + not_columns) or 'nothing'}. Runs are coloured by "
                                 + (" (hue) and ".join(swept[:2]) + " (shade)." if len(swept) > 1 else
                                    f"{swept[0] if swept else 'job'}.")},
        {"kind": "heading", "text": "Validation loss per source"},
        {"kind": "panels", "runset": "jobs", "panels": val},
        {"kind": "heading", "text": "Training"},
        {"kind": "panels", "runset": "jobs", "panels": training},
        {"kind": "heading", "text": "Domain gain vs forgetting" if gain else "Comparison"},
        {"kind": "panels", "runset": "jobs", "panels": comparison},
        {"kind": "heading", "text": "Report (python -m cpt.report)"},
        {"kind": "markdown", "text": report_md.split("\n", 1)[1].strip() if report_md.startswith("# ") else report_md},
    ]
    if has_pareto:
        blocks.append({"kind": "panels", "runset": "report",
                       "panels": [{"kind": "media", "title": "pareto.png", "keys": [f"media:{PARETO_MEDIA}"]}]})
    return {
        "title": f"cpt sweep {Path(group).name or group}"[:128],
        "project": logger.get("project") or "cpt",
        "entity": logger.get("entity"),
        "group": group,
        "swept": swept,
        "swept_not_columns": not_columns,
        "runsets": {"jobs": f"Group = '{quoted}' and JobType = 'train'",
                    "report": f"Group = '{quoted}' and JobType = '{REPORT_JOB_TYPE}'"},
        "run_colors": run_colors(job_dirs, swept),
        "blocks": [b for b in blocks if b["kind"] != "panels" or b["panels"]],
    }


def references(spec: dict) -> list[str]:
    """Every key the dashboard uses, as kind:key."""
    refs = []
    for block in spec["blocks"]:
        for panel in block.get("panels", []):
            for field in ("x", "y", "columns", "keys"):
                value = panel.get(field, [])
                refs += [value] if isinstance(value, str) else value
    return refs


def to_report(spec: dict, entity: str):
    """The W&B report (wandb_workspaces.reports.v2.Report) of a specification; saving it needs the W&B API."""
    import wandb_workspaces.reports.v2 as wr  # lazy: 0.8 s to import, for dashboards only

    def metric(ref: str):
        kind, key = ref.split(":", 1)
        return {"history": wr.Metric, "summary": wr.SummaryMetric, "config": wr.Config}[kind](key)

    def panel(p: dict):
        if p["kind"] == "line":
            return wr.LinePlot(title=p["title"], x="Step", y=[metric(r) for r in p["y"]])
        if p["kind"] == "scatter":
            return wr.ScatterPlot(title=p["title"], x=metric(p["x"]), y=metric(p["y"]))
        if p["kind"] == "parallel":
            return wr.ParallelCoordinatesPlot(title=p["title"], columns=[
                wr.ParallelCoordinatesPlotColumn(metric=metric(r)) for r in p["columns"]])
        if p["kind"] == "comparer":
            return wr.RunComparer(diff_only="split")
        if p["kind"] == "media":
            return wr.MediaBrowser(title=p["title"], media_keys=[r.split(":", 1)[1] for r in p["keys"]])
        raise ValueError(f"unknown panel kind {p['kind']!r}")

    def runset(name: str):
        colors = {run: wr.RunSettings(color=c) for run, c in spec["run_colors"].items()} if name == "jobs" else {}
        return wr.Runset(entity=entity, project=spec["project"], name=name, filters=spec["runsets"][name],
                         run_settings=colors)

    blocks = []
    for b in spec["blocks"]:
        if b["kind"] == "text":
            blocks.append(wr.P(b["text"]))
        elif b["kind"] == "heading":
            blocks.append(wr.H2(b["text"]))
        elif b["kind"] == "markdown":
            blocks.append(wr.MarkdownBlock(text=b["text"]))
        else:
            blocks.append(wr.PanelGrid(runsets=[runset(b["runset"])], panels=[panel(p) for p in b["panels"]]))
    return wr.Report(project=spec["project"], entity=entity, title=spec["title"], blocks=blocks,
                     description=f"W&B group {spec['group']}", width="fluid")
