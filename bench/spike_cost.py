"""What spike detection costs: training tokens/s with `trainer.on_spike=skip` (the default: a scalar all-reduce of
the loss and a few device ops per step, no host sync) and `=off`, same model, windows and ranks.

    python bench/spike_cost.py [--size small] [--nproc 2] [--reps 3] [--steps 60] [--warmup 10]

Goal: detection on >= 0.98x the tokens/s of detection off. That detection decides and acts as documented is tested
(tests/train/test_spikes.py); this measures the price.
"""

from __future__ import annotations

import subprocess
import sys

from common import ROOT, SIZES, alternate, arg_parser, child_env, cpt_run, header, prepare_data, run_overrides, table


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
    probe = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            f"--nproc_per_node={args.nproc}", str(ROOT / "bench" / "spike_flag_probe.py")],
                           capture_output=True, text=True, cwd=ROOT, env=child_env(), check=True)
    check_ms = float(probe.stdout.split()[-1])
    step_ms = 1000 * 2 * int(args.nproc) * SIZES[args.size]["seq"] / med["off"]["tokens_per_s"]
    print(f"\nOne check alone (the loss all-reduce and the window's device ops, {args.nproc} gloo ranks, 1,000 calls): "
          f"**{check_ms:.3f} ms**, against a step of {step_ms:.0f} ms here: {check_ms / step_ms:.2%} of it.")


if __name__ == "__main__":
    main()
