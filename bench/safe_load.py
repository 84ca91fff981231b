"""Reading a checkpoint through cpt's allow-listed reader (cpt.train.safe_load) vs torch's plain DCP reader: the
same checkpoint loaded both ways, alternating, into preallocated tensors (every tensor and value it holds).

    python bench/safe_load.py <checkpoint dir> [--reps 3]

Prints the median seconds of each and their ratio as markdown. Goal: the safe reader costs nothing measurable."""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from cpt.train.safe_load import SafeReader, load_dcp


def target(path: Path) -> dict:
    """A flat state dict with a buffer for every entry of the checkpoint."""
    meta = SafeReader(str(path)).read_metadata()
    return {fqn: torch.empty(m.size, dtype=m.properties.dtype) if isinstance(m, TensorStorageMetadata) else None
            for fqn, m in meta.state_dict_metadata.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    times: dict[str, list[float]] = {"torch dcp.load": [], "cpt load_dcp": []}
    for _ in range(args.reps):
        for name in times:
            state = target(args.checkpoint)
            start = time.perf_counter()
            if name == "torch dcp.load":
                dcp.load(state, checkpoint_id=str(args.checkpoint))
            else:
                load_dcp(state, args.checkpoint)
            times[name].append(time.perf_counter() - start)
    size = sum(f.stat().st_size for f in args.checkpoint.iterdir()) / 2**20
    print(f"| reader | median s ({args.reps} reps) |\n|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.3f} |")
    ratio = statistics.median(times["cpt load_dcp"]) / statistics.median(times["torch dcp.load"])
    print(f"\ncheckpoint {args.checkpoint} ({size:,.0f} MiB): cpt / torch load time = **{ratio:.3f}**")


if __name__ == "__main__":
    main()
