"""`python -m cpt.report <multirun dir>`: compare the jobs of a sweep without W&B.

Reads every job directory (one holding metrics.jsonl) under the sweep: its overrides (.hydra/overrides.yaml),
its resolved config and its metrics. Writes into the sweep directory:
  report.md, report.csv   one row per job: overrides, status, steps, final train loss, best validation loss and
                          perplexity (and at which step), median tokens/s, and for runs with several sources the
                          domain gain and the forgetting (cpt/eval/pareto.py); sorted by best validation loss
  train_loss.png, val_loss.png   the curves of every job, the best job drawn thick and marked in the legend
  pareto.png              forgetting against domain gain, one labelled point per completed job, the Pareto front
                          and the best trade-off (largest gain with forgetting <= --max-forgetting); report.md
                          gets the same as a table
Status: completed (reached trainer.steps), failed (a .submitit result says so, or the log ends in a traceback
without reaching the end), or incomplete (stopped early: killed, still running, or waiting to be requeued).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cpt.eval.sweep_report import DEFAULT_MAX_FORGETTING, report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m cpt.report", description=__doc__.split("\n")[0])
    p.add_argument("sweep", type=Path, help="a multirun directory (e.g. multirun/2026-11-23/10-00-00)")
    p.add_argument("--domain", help="the domain source (default: each job's first data source)")
    p.add_argument("--max-forgetting", type=float, default=DEFAULT_MAX_FORGETTING,
                   help="the forgetting the best trade-off may have, as a fraction (default %(default)s = 5%%)")
    args = p.parse_args(argv)
    try:
        jobs = report(args.sweep, args.domain, args.max_forgetting)
    except FileNotFoundError as e:
        sys.exit(str(e))
    print((args.sweep / "report.md").read_text())
    pngs = "train_loss.png, val_loss.png" + (", pareto.png" if (args.sweep / "pareto.png").is_file() else "")
    print(f"{len(jobs)} jobs; report.md, report.csv, {pngs} in {args.sweep}")


if __name__ == "__main__":
    main()
