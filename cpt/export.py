"""`python -m cpt.export <checkpoint or run dir> [--out DIR] [--push-to-hub USER/NAME]`: a cpt checkpoint as a
transformers model directory (cpt.train.export), optionally uploaded to the hub."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cpt.common.errors import user_errors
from cpt.train.export import export_checkpoint, push


@user_errors
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m cpt.export",
                                description="Turn a cpt checkpoint into a transformers model directory.")
    p.add_argument("checkpoint", type=Path, help="a checkpoints/step-* directory, or a run directory (its latest)")
    p.add_argument("--out", type=Path, help="output directory (default: <run dir>/hf-<checkpoint name>)")
    p.add_argument("--push-to-hub", metavar="USER/NAME", help="also upload it to this hub repo")
    p.add_argument("--public", action="store_true", help="create the hub repo public (default private)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = export_checkpoint(args.checkpoint, args.out)
    if args.push_to_hub:
        push(out, args.push_to_hub, private=not args.public)
    print(out)


if __name__ == "__main__":
    main()
