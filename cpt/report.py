"""`python -m cpt.report <multirun dir> [--wandb]`: compare the jobs of a sweep.

Writes report.md, report.csv, train_loss.png, val_loss.png and (for runs with several sources) pareto.png into the
sweep directory; cpt.eval.sweep_report says what each holds and how a job's status is decided. With --wandb (jobs
that ran with logger=wandb) also the sweep's W&B dashboard (cpt.eval.dashboard): its specification in
wandb_dashboard.json, a "report" run in the sweep's W&B group carrying pareto.png, and — with an API key — the
W&B report itself, whose URL is printed; offline, the commands that publish it later. A sweep run with
report.wandb=true does all of this when its last job ends (SweepReport, a Hydra callback in conf/config.yaml).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cpt.common.errors import UserError, user_errors
from cpt.config.schema import ReportConfig, WandbMode
from cpt.eval.dashboard import PARETO_MEDIA, REPORT_JOB_TYPE, SPEC_FILE, build_spec, to_report
from cpt.eval.sweep_report import find_jobs, read_yaml, report
from cpt.train.tracking import resolve_mode, run_id


def wandb_settings(job_dirs: list[Path]) -> dict:
    """The jobs' logger settings; a sweep whose jobs did not log to W&B has no runs to show."""
    for job_dir in job_dirs:
        logger = read_yaml(job_dir / "config.yaml", {}).get("logger") or {}
        if logger.get("wandb"):
            return logger
    raise UserError(f"{job_dirs[0].parent}: no job of this sweep logged to W&B (logger.wandb=false), so a dashboard "
                    "would show no runs. Run the sweep with logger=wandb (and report.wandb=true to build the "
                    "dashboard at its end)")


def log_report_run(sweep: Path, settings: dict, mode: str) -> None:
    """The sweep's report run (job type "report", the jobs' group): carries pareto.png into W&B for the dashboard."""
    import wandb  # lazy: only dashboards start a W&B run here

    run = wandb.init(project=settings.get("project"), entity=settings.get("entity"), group=settings.get("group"),
                     name="sweep report", job_type=REPORT_JOB_TYPE, id=run_id(sweep), resume="allow", dir=str(sweep),
                     mode=mode, config={"sweep": str(sweep)},
                     settings=wandb.Settings(console="off", silent=True))  # keeps this process's stdout as it was
    if (sweep / "pareto.png").is_file():
        run.log({PARETO_MEDIA: wandb.Image(str(sweep / "pareto.png"))})
    run.finish()


def dashboard(sweep: Path) -> str:
    """Builds the sweep's dashboard (report.md must exist: `report` first); returns what to tell the user."""
    job_dirs = find_jobs(sweep)
    settings = wandb_settings(job_dirs)
    spec = build_spec(sweep, job_dirs, (sweep / "report.md").read_text(), (sweep / "pareto.png").is_file())
    (sweep / SPEC_FILE).write_text(json.dumps(spec, indent=1))
    mode = resolve_mode(WandbMode(settings.get("mode") or "auto"))
    log_report_run(sweep, settings, mode)
    if mode == "offline":
        return (f"W&B is offline (no API key): the dashboard's specification is {sweep / SPEC_FILE}. To publish the "
                "runs and the dashboard:\n"
                "  wandb login\n"
                f"  wandb sync {sweep}/*/wandb/offline-run-* {sweep}/wandb/offline-run-*\n"
                f"  python -m cpt.report {sweep} --wandb")
    import wandb  # lazy: online only

    entity = spec["entity"] or wandb.Api().default_entity
    built = to_report(spec, entity)
    built.save()
    return f"W&B dashboard: {built.url}"


def run_report(sweep: Path, domain: Optional[str], max_forgetting: float, with_wandb: bool) -> str:
    jobs = report(sweep, domain, max_forgetting)
    pngs = "train_loss.png, val_loss.png" + (", pareto.png" if (sweep / "pareto.png").is_file() else "")
    said = f"{len(jobs)} jobs; report.md, report.csv, {pngs} in {sweep}"
    return said + ("\n" + dashboard(sweep) if with_wandb else "")


class SweepReport(Callback):
    """Hydra callback (conf/config.yaml): with report.wandb=true, the end of a -m sweep writes its report and
    dashboard, so that one command gives the runs and the dashboard."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        settings: ReportConfig = ReportConfig(**config.report)
        if not settings.wandb:
            return
        sweep = Path(config.hydra.sweep.dir)
        try:  # printed: Hydra's logging points at the last job's log by now
            print(run_report(sweep, settings.domain, settings.max_forgetting, with_wandb=True), flush=True)
        except (UserError, FileNotFoundError) as e:  # the jobs' results stay; say why there is no dashboard
            print(f"error: no sweep report: {e} (once fixed: python -m cpt.report {sweep} --wandb)", file=sys.stderr,
                  flush=True)


@user_errors
def main(argv: list[str] | None = None) -> None:
    defaults: ReportConfig = ReportConfig()
    p = argparse.ArgumentParser(prog="python -m cpt.report", description=__doc__.split("\n")[0])
    p.add_argument("sweep", type=Path, help="a multirun directory (e.g. multirun/2026-11-23/10-00-00)")
    p.add_argument("--domain", default=defaults.domain,
                   help="the domain source (default: each job's first data source)")
    p.add_argument("--max-forgetting", type=float, default=defaults.max_forgetting,
                   help="the forgetting the best trade-off may have, as a fraction (default %(default)s = 5%%)")
    p.add_argument("--wandb", action="store_true", help="also build the sweep's W&B dashboard (jobs with "
                   "logger=wandb): online it is saved and its URL printed, offline its specification is written")
    args = p.parse_args(argv)
    try:
        said = run_report(args.sweep, args.domain, args.max_forgetting, args.wandb)
    except FileNotFoundError as e:
        sys.exit(str(e))
    print((args.sweep / "report.md").read_text())
    print(said)


if __name__ == "__main__":
    main()
