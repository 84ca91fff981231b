"""FSDP2 strategies side by side at 2 ranks: tokens/s, per-rank parameter+optimizer memory and peak memory.

    python bench/fsdp_strategies.py [--size small] [--reps 3] [--steps 30] [--warmup 10]

Every strategy is `python -m cpt.run fsdp=<strategy> trainer.nproc_per_node=2` on the same model and data, in its
own process group, the strategies rotating over the repetitions. "state MiB" is this rank's local shards of
parameters and AdamW state (cpt.train.metrics.local_state_mib), the part sharding divides. Goal: full_shard <= 0.55x
no_shard.
"""

from __future__ import annotations

import sys

from common import alternate, arg_parser, cpt_run, header, prepare_data, run_overrides, table

STRATEGIES = ("full_shard", "shard_grad_op", "no_shard")


def main() -> None:
    ap = arg_parser(__doc__, reps=3, steps=30)
    args = ap.parse_args()
    prepare_data()

    def side(strategy: str):
        overrides = [*run_overrides(args.size), f"fsdp={strategy}"]
        return lambda: cpt_run(overrides, args.steps, args.warmup, nproc=2)

    med = alternate({s: side(s) for s in STRATEGIES}, args.reps)
    print(header(f"FSDP2 strategies ({args.size} model, 2 ranks)", sys.argv, args.reps))
    print(table(med, {"tokens_per_s": "tokens/s", "state_mib": "params+optimizer MiB per rank",
                      "peak_mem_mib": "peak memory MiB (rank 0)"}))
    full, no = med["full_shard"], med["no_shard"]
    print(f"\nfull_shard / no_shard params+optimizer memory per rank = **{full['state_mib'] / no['state_mib']:.3f}**"
          f" (goal <= 0.55); tokens/s = {full['tokens_per_s'] / no['tokens_per_s']:.3f}; shard_grad_op / no_shard "
          f"tokens/s = {med['shard_grad_op']['tokens_per_s'] / no['tokens_per_s']:.3f}")


if __name__ == "__main__":
    main()
