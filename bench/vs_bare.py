"""cpt's training loop vs the loop a user writes by hand (framework overhead), same model, batches and optimizer.

    python bench/vs_bare.py [--size small] [--reps 5] [--steps 40] [--warmup 10]

"cpt" is `python -m cpt.run` on 1 rank, as users run it (metrics, NaN guard, logging; validation excluded from
timing). "bare" is a fwd / bwd / clip / fused AdamW loop over the same MixtureLoader batches, no framework. Both run
in their own process, alternating; medians and the ratio are printed as markdown. Goal: cpt >= 0.95x bare.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

from common import ROOT, alternate, arg_parser, cpt_run, header, prepare_data, run_child, run_overrides, table


def bare(size: str, steps: int, warmup: int) -> dict:
    import torch
    import torch.nn.functional as F
    from hydra import compose, initialize_config_dir

    from cpt.config.schema import to_run_config
    from cpt.data.loader import MixtureLoader
    from cpt.data.manifest import load_manifest, open_streams
    from cpt.model.build import build_model
    from cpt.model.tokenizer import build_tokenizer

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = to_run_config(compose("config", run_overrides(size)))
    t = cfg.trainer
    torch.set_num_threads(1)
    torch.manual_seed(t.seed)
    model = build_model(cfg.model)
    streams = open_streams(cfg.data, load_manifest(cfg.data, build_tokenizer(cfg.model)), "train")
    loader = MixtureLoader(streams, {s.name: s.weight for s in cfg.data.sources}, t.seq_len, t.micro_batch_size, 1,
                           0, 1, t.seed, torch.device("cpu"))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    for step in range(steps):
        if step == warmup:
            start = time.perf_counter()
        for x, y in loader.next_batches():
            loss = F.cross_entropy(model(input_ids=x, use_cache=False).logits.flatten(0, 1).float(), y.flatten())
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    elapsed = time.perf_counter() - start
    return {"tokens_per_s": (steps - warmup) * loader.global_batch * t.seq_len / elapsed,
            "peak_mem_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = arg_parser(__doc__, reps=5)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(bare(args.size, args.steps, args.warmup)))
        return
    prepare_data()
    child = [sys.executable, __file__, "--child", "--size", args.size, "--steps", str(args.steps),
             "--warmup", str(args.warmup)]
    med = alternate({"cpt": lambda: cpt_run(run_overrides(args.size), args.steps, args.warmup),
                     "bare": lambda: run_child(child)}, args.reps)
    print(header(f"cpt vs a bare loop ({args.size} model, 1 rank)", sys.argv, args.reps))
    print(table(med, {"tokens_per_s": "tokens/s", "peak_mem_mib": "peak RSS MiB"}))
    print(f"\ncpt / bare tokens/s = **{med['cpt']['tokens_per_s'] / med['bare']['tokens_per_s']:.3f}** (goal >= 0.95)")


if __name__ == "__main__":
    main()
