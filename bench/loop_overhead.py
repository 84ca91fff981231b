"""Benchmark (not a test): cpt's training loop vs a bare PyTorch fwd/bwd/step loop on the same model and batches,
and per-rank parameter+optimizer memory of full_shard vs no_shard with 2 ranks.

    python bench/loop_overhead.py [--reps 3] [--steps 30]

Each measurement runs in its own process (peak RSS is per process); the two sides alternate, `--reps` times,
and the medians and ratios are printed as a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# a ~3.4M-parameter Qwen2-architecture model over bytes: big enough that the step, not Python, dominates
MODEL = ["model=tiny", "model.arch.hidden_size=256", "model.arch.intermediate_size=1024",
         "model.arch.num_hidden_layers=4", "model.arch.num_attention_heads=8"]
DATA_ROOT = Path(tempfile.gettempdir()) / "cpt-bench-data"
BATCH = [f"data.root={DATA_ROOT}", "trainer.seq_len=128", "trainer.micro_batch_size=4", "trainer.num_threads=1", "optim.lr=1e-3"]


def cpt_side(steps: int, warmup: int, run_dir: Path) -> dict:
    """cpt's own loop (cpt.train.train), 1 rank, exactly as `python -m cpt.run` runs it."""
    from cpt.config import to_run_config
    from cpt.train import train
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", [*MODEL, *BATCH, f"trainer.steps={steps}", f"trainer.log_interval={warmup}",
                                 "trainer.eval_interval=0", "trainer.eval_batches=1", "trainer.progress_bar=false"])
    train(to_run_config(cfg), run_dir)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # the first log window holds the warm-up steps; later windows are steady state
    steady = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][1:]
    return {"tokens_per_s": statistics.mean(steady)}


def bare_side(steps: int, warmup: int) -> dict:
    """The loop a user would write by hand: same model, same batches, plain AdamW, clip, no FSDP, no metrics."""
    import torch
    import torch.nn.functional as F
    from hydra import compose, initialize_config_dir

    from cpt.config import to_run_config
    from cpt.data.loader import MixtureLoader
    from cpt.data.manifest import load_manifest, open_streams
    from cpt.model import build_model
    from cpt.tokenizer import build_tokenizer

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = to_run_config(compose("config", [*MODEL, *BATCH]))
    torch.set_num_threads(1)
    torch.manual_seed(cfg.trainer.seed)
    model = build_model(cfg.model)
    streams = open_streams(cfg.data, load_manifest(cfg.data, build_tokenizer(cfg.model)), "train")
    loader = MixtureLoader(streams, {"sample": 1.0}, cfg.trainer.seq_len, cfg.trainer.micro_batch_size, 1, 0, 1,
                           cfg.trainer.seed, torch.device("cpu"))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=(0.9, 0.95), weight_decay=0.1, foreach=True)
    start = None
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
    return {"tokens_per_s": (steps - warmup) * loader.global_batch * cfg.trainer.seq_len / elapsed}


def child(side: str, steps: int, warmup: int) -> dict:
    import resource

    with tempfile.TemporaryDirectory() as tmp:
        result = cpt_side(steps, warmup, Path(tmp)) if side == "cpt" else bare_side(steps, warmup)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def run_child(side: str, steps: int, warmup: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, __file__, "--child", side, "--steps", str(steps), "--warmup", str(warmup)],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode:
        sys.exit(f"{side} side failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fsdp_state(strategy: str, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "cpt.run", *MODEL, *BATCH, f"fsdp={strategy}", "trainer.nproc_per_node=2",
               "trainer.micro_batch_size=2", f"trainer.steps={steps}", f"trainer.log_interval={steps // 2}",
               "trainer.eval_interval=0", "trainer.eval_batches=1", "trainer.progress_bar=false",
               f"hydra.run.dir={tmp}/run"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=tmp)
        if proc.returncode:
            sys.exit(f"fsdp={strategy} failed:\n{proc.stderr[-4000:]}")
        records = [json.loads(line) for line in Path(tmp, "run", "metrics.jsonl").read_text().splitlines()]
    logs = [r for r in records if "tokens_per_s" in r]
    return {"state_mib": logs[-1]["state_mib"], "tokens_per_s": logs[-1]["tokens_per_s"],
            "peak_rss_mib": logs[-1]["peak_mem_mib"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--child", choices=["cpt", "bare"])
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.warmup)))
        return

    subprocess.run([sys.executable, "-m", "cpt.prepare", "data=sample", f"data.root={DATA_ROOT}"], cwd=ROOT,
                   check=True, capture_output=True)
    results = {"cpt": [], "bare": []}
    for rep in range(args.reps):
        for side in ("cpt", "bare") if rep % 2 == 0 else ("bare", "cpt"):
            results[side].append(run_child(side, args.steps, args.warmup))
            print(f"rep {rep} {side}: {results[side][-1]}", file=sys.stderr)
    med = {s: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for s, rs in results.items()}
    fsdp = {s: fsdp_state(s, args.steps) for s in ("full_shard", "no_shard")}

    print(f"# loop overhead, {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, 1 thread per rank; median of {args.reps} alternating runs, "
          f"{args.steps} steps ({args.warmup} warm-up excluded)\n")
    print("| side | tokens/s | peak RSS MiB |\n|---|---|---|")
    for side in ("cpt", "bare"):
        print(f"| {side} | {med[side]['tokens_per_s']:,.0f} | {med[side]['peak_rss_mib']:,.0f} |")
    print(f"\ncpt / bare tokens/s = {med['cpt']['tokens_per_s'] / med['bare']['tokens_per_s']:.3f}\n")
    print("| fsdp (2 ranks) | params+optimizer MiB per rank | tokens/s | peak RSS MiB per rank |\n|---|---|---|---|")
    for s, r in fsdp.items():
        print(f"| {s} | {r['state_mib']:.2f} | {r['tokens_per_s']:,.0f} | {r['peak_rss_mib']:,.0f} |")
    print(f"\nfull_shard / no_shard params+optimizer memory = "
          f"{fsdp['full_shard']['state_mib'] / fsdp['no_shard']['state_mib']:.3f}")


if __name__ == "__main__":
    main()
