"""A sweep's W&B dashboard (cpt.eval.dashboard, `cpt.report --wandb`, report.wandb=true): built from the keys the jobs
really logged and the keys the sweep really varied; every run's W&B summary holds the report's gain and forgetting;
the W&B report objects (wandb-workspaces) are built from the specification as it says."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, TINY, compose_cfg, rank_env, read_wandb_offline
from cpt.common.errors import UserError
from cpt.config.schema import ConfigError, to_run_config
from cpt.config.validate import validate
from cpt.eval.dashboard import build_spec, references, swept_keys, to_report
from cpt.eval.sweep_report import find_jobs, report
from cpt.report import dashboard


def write_job(sweep, num, overrides, legal_end, wandb=True):
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["trainer.steps=4", *overrides]))
    config = {"trainer": {"steps": 4}, "optim": {"lr": 1e-3}, "data": {"replay": 0.0, "sources": [
        {"name": "legal"}, {"name": "shakes"}]}, "model": {"name": "tiny"},
        "logger": {"wandb": wandb, "project": "p", "group": str(sweep), "mode": "offline"}}
    for item in (o for o in overrides if "." in o.split("=")[0]):  # model=... picks a group: its config is a tree
        key, value = item.split("=")
        node = config
        for part in key.split(".")[:-1]:
            node = node.setdefault(part, {})
        node[key.split(".")[-1]] = yaml.safe_load(value)
    (job / "config.yaml").write_text(yaml.safe_dump(config))
    records = [{"step": 0, "val_loss": 3.0, "val_loss/legal": 3.0, "val_loss/shakes": 3.0}]
    records += [{"step": s, "loss": 3.0 - 0.1 * s, "lr": 1e-3} for s in range(1, 5)]
    records += [{"step": 4, "val_loss": 2.9, "val_loss/legal": legal_end, "val_loss/shakes": 3.05}]
    (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (job / "summary.json").write_text(json.dumps({"domain_gain": 0.1, "forgetting": 0.05, "final/val_loss": 2.9}))
    (job / "wandb" / f"offline-run-20261205_000000-run{num}").mkdir(parents=True)
    return job


def four_job_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    grid = [("optim.lr=1e-4", "data.replay=0"), ("optim.lr=1e-4", "data.replay=0.25"),
            ("optim.lr=1e-3", "data.replay=0"), ("optim.lr=1e-3", "data.replay=0.25")]
    for num, overrides in enumerate(grid):
        write_job(sweep, num, list(overrides), 2.5 + 0.1 * num)
    report(sweep)
    return sweep


def test_the_spec_uses_only_logged_and_swept_keys_and_colours_by_them(tmp_path):
    sweep = four_job_sweep(tmp_path)
    jobs = find_jobs(sweep)
    spec = build_spec(sweep, jobs, (sweep / "report.md").read_text(), (sweep / "pareto.png").is_file())
    assert spec["swept"] == ["data.replay", "optim.lr"] and spec["swept_not_columns"] == []
    refs = references(spec)
    logged = {k for j in jobs for line in (j / "metrics.jsonl").read_text().splitlines() for k in json.loads(line)}
    assert {r.split(":", 1)[1] for r in refs if r.startswith("history:")} == {"val_loss/legal", "val_loss/shakes",
                                                                              "loss", "lr"} <= logged
    assert {r for r in refs if r.startswith("config:")} == {"config:data.replay", "config:optim.lr"}
    assert {r for r in refs if r.startswith("summary:")} == {"summary:domain_gain", "summary:forgetting"}
    assert "media:pareto" in refs and f"Group = '{sweep}'" in spec["runsets"]["jobs"]
    assert "JobType = 'train'" in spec["runsets"]["jobs"] and "JobType = 'report'" in spec["runsets"]["report"]
    markdown = next(b["text"] for b in spec["blocks"] if b["kind"] == "markdown")
    assert "best trade-off" in markdown and "| job |" in markdown  # report.md's tables
    colors = spec["run_colors"]
    assert sorted(colors) == ["run0", "run1", "run2", "run3"] and len(set(colors.values())) == 4
    # data.replay (the first swept key) picks the family: jobs 0 and 2 (replay 0) are blue, 1 and 3 orange
    blue = {k: int(c[5:7], 16) > int(c[1:3], 16) for k, c in colors.items()}
    assert blue == {"run0": True, "run2": True, "run1": False, "run3": False}


def test_a_swept_config_group_is_named_but_is_no_config_column(tmp_path):
    sweep = tmp_path / "sweep"
    write_job(sweep, 0, ["model=tiny", "optim.lr=1e-4"], 2.5)
    write_job(sweep, 1, ["model=small", "optim.lr=1e-3"], 2.6)
    columns, others = swept_keys(find_jobs(sweep))
    assert columns == ["optim.lr"] and others == ["model"]


def test_the_wandb_report_is_built_from_the_spec(tmp_path):
    import wandb_workspaces.reports.v2 as wr

    sweep = four_job_sweep(tmp_path)
    spec = build_spec(sweep, find_jobs(sweep), (sweep / "report.md").read_text(), True)
    built = to_report(spec, entity="me")
    grids = [b for b in built.blocks if isinstance(b, wr.PanelGrid)]
    panels = [p for g in grids for p in g.panels]
    names = {p.title: [m.name for m in p.y] for p in panels if isinstance(p, wr.LinePlot)}
    assert names["validation loss: legal"] == ["val_loss/legal"] and names["learning rate"] == ["lr"]
    scatter = next(p for p in panels if isinstance(p, wr.ScatterPlot))
    assert isinstance(scatter.x, wr.SummaryMetric) and scatter.x.name == "forgetting"
    parallel = next(p for p in panels if isinstance(p, wr.ParallelCoordinatesPlot))
    assert [type(c.metric).__name__ + ":" + c.metric.name for c in parallel.columns] == [
        "Config:data.replay", "Config:optim.lr", "SummaryMetric:domain_gain", "SummaryMetric:forgetting"]
    assert any(isinstance(p, wr.RunComparer) for p in panels)
    assert next(p for p in panels if isinstance(p, wr.MediaBrowser)).media_keys == ["pareto"]
    jobs_runset = grids[0].runsets[0]
    assert jobs_runset.filters == spec["runsets"]["jobs"] and jobs_runset.run_settings["run2"].color
    assert any(isinstance(b, wr.MarkdownBlock) and "best trade-off" in b.text for b in built.blocks)


def test_a_sweep_without_wandb_runs_gets_no_dashboard(tmp_path):
    sweep = tmp_path / "sweep"
    write_job(sweep, 0, ["optim.lr=1e-4"], 2.5, wandb=False)
    report(sweep)
    with pytest.raises(UserError, match="logger=wandb"):
        dashboard(sweep)
    with pytest.raises(ConfigError, match=r"report.wandb.*logger=wandb"):  # refused before any job starts
        validate(to_run_config(compose_cfg([*TINY, "report.wandb=true"])), 1, 1)


@pytest.mark.full
def test_a_wandb_sweep_ends_with_its_dashboard(tmp_path):
    """2 jobs, two sources, logger=wandb offline, report.wandb=true: the summaries hold report.csv's numbers; the
    dashboard names only what the offline W&B runs hold (read back from their files) and what the sweep varied."""
    from cpt.config.schema import to_run_config
    from cpt.data.prepare import prepare

    rows = [json.loads(line) for line in (ROOT / "cpt" / "assets" / "sample.jsonl").read_text().splitlines()]
    (tmp_path / "domain.jsonl").write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in rows))
    reversed_words = [" ".join(reversed(r["text"].split())) for r in rows]
    (tmp_path / "general.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in reversed_words))
    data = ["data.name=two", f"data.root={tmp_path / 'data'}", "data.val_fraction=0.3", "data.replay=0.25",
            f"data.sources=[{{name: domain, paths: [{tmp_path / 'domain.jsonl'}]}}, "
            f"{{name: general, paths: [{tmp_path / 'general.jsonl'}]}}]"]
    prepare(to_run_config(compose_cfg(["model=tiny", "data=sample", *data])))
    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-m", "cpt.run", "-m", *TINY, *data, "trainer.eval_interval=3",
                           "optim.lr=1e-3,3e-3", "logger=wandb", "report.wandb=true", f"hydra.sweep.dir={sweep}"],
                          cwd=tmp_path, env=rank_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wandb sync {sweep}/*/wandb/offline-run-*" in proc.stderr + proc.stdout
    rows = {r["job"]: r for r in csv.DictReader(open(sweep / "report.csv"))}
    spec = json.loads((sweep / "wandb_dashboard.json").read_text())
    starts = {job: read_wandb_offline(sweep / job)[0] for job in ("0", "1")}
    for job, start in starts.items():
        assert start["job_type"] == "train"
        assert start["summary"]["domain_gain"] == float(rows[job]["domain_gain"]) != 0
        assert start["summary"]["forgetting"] == float(rows[job]["forgetting"])
    assert spec["swept"] == ["optim.lr"]
    for ref in references(spec):
        kind, key = ref.split(":", 1)
        for start in starts.values():
            if kind == "history":
                assert any(key in row for row in start["history"]), ref
            elif kind == "summary":
                assert key in start["summary"], ref
            elif kind == "config":
                assert key in spec["swept"] and isinstance(start["config"][key.split(".")[0]]["lr"], float), ref
    (report_run,) = read_wandb_offline(sweep)
    assert report_run["job_type"] == "report" and report_run["run"][0] == str(sweep)
    media = {r.split(":", 1)[1] for r in references(spec) if r.startswith("media:")}
    assert media == {"pareto"} and all(any(row.get(f"{k}/_type") == "image-file" for row in report_run["history"])
                                       for k in media)  # an image (its fields arrive flattened: pareto/_type ...)
    assert sorted(spec["run_colors"]) == sorted(s["run"][2] for s in starts.values())
