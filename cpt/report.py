"""`python -m cpt.report <multirun dir>`: compare the jobs of a sweep without W&B.

Writes report.md, report.csv, train_loss.png, val_loss.png and (for runs with several sources) pareto.png into the
sweep directory; cpt.eval.sweep_report says what each holds and how a job's status is decided.
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
