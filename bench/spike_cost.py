"""What spike detection costs: training tokens/s with `trainer.on_spike=skip` (the default: a scalar all-reduce of
the loss and a few device ops per step, no host sync) and `=off`, same model, windows and ranks.

    python bench/spike_cost.py [--size small] [--nproc 2] [--reps 3] [--steps 60] [--warmup 10]

Goal: detection on >= 0.98x the tokens/s of detection off. That detection decides and acts as documented is tested
(tests/train/test_spikes.py); this measures the price.
"""

from __future__ import annotations

import sys

from common import alternate, arg_parser, cpt_run, header, prepare_data, run_overrides, table


def main() -> None:
    ap = arg_parser(__doc__, reps=3, steps=60, warmup=10)
    ap.add_argument("--nproc", type=int, default=2, help="local ranks (the all-reduce is what a rank adds)")
    args = ap.parse_args()
    prepare_data()
    base = [*run_overrides(args.size), "trainer.micro_batch_size=2"]
    med = alternate({side: lambda side=side: cpt_run([*base, f"trainer.on_spike={side}"], args.steps, args.warmup,
                                                     nproc=args.nproc)
                     for side in ("skip", "off")}, args.reps)
    print(header(f"Spike detection cost ({args.size} model, {args.nproc} ranks)", sys.argv, args.reps))
    print(table(med, {"tokens_per_s": "tokens/s"}))
    ratio = med["skip"]["tokens_per_s"] / med["off"]["tokens_per_s"]
    print(f"\ndetection on / off tokens/s = **{ratio:.3f}** (goal >= 0.98)")


if __name__ == "__main__":
    main()
