"""Where a cpt training step spends its time on CPU, sampled by py-spy from `python -m cpt.run` as users run it, and
the optimizer implementations side by side (why cpt's AdamW is the fused one).

    python bench/profile_step.py [--size small] [--steps 60] [--rate 250] [--reps 5]

Part 1 samples the whole run with py-spy (`py-spy record --format raw`), keeps the samples taken inside the training
loop (the setup before it and validation are excluded) and assigns each to the first phase its Python stack enters:
data (MixtureLoader.next_batches), forward (lm_loss), backward, gradient norm + clip, optimizer step, zero_grad,
metrics and logging (log steps, the non-finite counter, progress bar), and the loop's own Python. Compute is
forward + backward + clip + optimizer; everything else is what the framework adds around it.
Part 2 times one AdamW step over the same model's parameters for torch's fused, foreach and for-loop kernels
(median of --reps x 20 steps, in this process).
"""

from __future__ import annotations

import argparse
import ast
import collections
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, child_env, header, prepare_data, run_overrides

# (phase, marker): a sample belongs to the first phase whose marker appears in its stack, read from the outside in
PHASES = [
    ("validation (excluded)", "validate_and_log (cpt/train/loop.py"),
    ("checkpoint (excluded)", "save (cpt/train/checkpoint.py"),
    ("data", "next_batches (cpt/data/loader.py"),
    ("forward + loss", "lm_loss (cpt/model/loss.py"),
    ("backward", "backward (torch/_tensor.py"),
    ("grad norm + clip", "clip_grad_norm_ ("),
    ("optimizer step", "step (torch/optim/"),
    ("zero_grad", "zero_grad (torch/optim/"),
    ("metrics + logging", "write (cpt/train/metrics.py"),
    ("metrics + logging", "report (cpt/train/metrics.py"),
    ("metrics + logging", "global_mean (cpt/train/loop.py"),
    ("metrics + logging", "check (cpt/train/state.py"),
    ("metrics + logging", "record (cpt/train/state.py"),
    ("metrics + logging", "advance (cpt/train/metrics.py"),
]
COMPUTE = {"forward + loss", "backward", "grad norm + clip", "optimizer step"}
OWN = "loop's own Python"


def loop_lines() -> range:
    """The source lines of the `while state.step < ...` loop of cpt.train.loop._train: samples whose _train frame is
    elsewhere are setup (model, data, process group) or teardown (export) and are not counted."""
    tree = ast.parse((ROOT / "cpt" / "train" / "loop.py").read_text())
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_train")
    loop = next(n for n in ast.walk(fn) if isinstance(n, ast.While))
    return range(loop.lineno, loop.end_lineno + 1)


def phase_of(stack: list[str], lines: range) -> tuple[str, int] | None:
    """The phase of one sampled stack (outermost frame first) and the line of cpt/train/loop.py's loop it was on,
    or None when the sample is not inside the training loop."""
    at = next((i for i, f in enumerate(stack) if f.startswith("_train (cpt/train/loop.py:")), None)
    line = int(stack[at].rpartition(":")[2].rstrip(")")) if at is not None else None
    if line not in lines:
        return None
    for frame in stack[at + 1:]:
        for phase, marker in PHASES:
            if marker in frame:
                return phase, line
    return OWN, line


def profile(size: str, steps: int, rate: int) -> tuple[collections.Counter, collections.Counter]:
    """py-spy over `python -m cpt.run`: samples per phase, and the loop's own samples per line of cpt/train/loop.py."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "profile.txt"
        spy = Path(sys.executable).parent / "py-spy"
        cmd = [str(spy) if spy.exists() else "py-spy", "record", "--format", "raw", "--rate", str(rate),
               "--output", str(raw), "--", sys.executable, "-m", "cpt.run", *run_overrides(size),
               f"trainer.steps={steps}", "trainer.log_interval=10", "trainer.eval_interval=0", "trainer.eval_batches=1",
               "checkpoint.at_end=false", "export.enabled=false", f"hydra.run.dir={tmp}/run"]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=child_env())
        if proc.returncode:
            sys.exit(f"py-spy failed (pip install py-spy; it needs ptrace rights):\n{proc.stderr[-3000:]}")
        phases: collections.Counter = collections.Counter()
        own: collections.Counter = collections.Counter()
        lines = loop_lines()
        for line in raw.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            found = phase_of(stack.split(";"), lines)
            if found is None:
                continue
            phase, at = found
            phases[phase] += int(n)
            if phase == OWN:
                own[at] += int(n)
    return phases, own


def optimizer_steps(size: str, reps: int) -> dict[str, float]:
    """Median milliseconds of one AdamW step (fused / foreach / for-loop) over the bench model's parameters."""
    import torch
    from hydra import compose, initialize_config_dir

    from cpt.config.schema import to_run_config
    from cpt.model.build import build_model
    from cpt.train.optim import param_groups

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = to_run_config(compose("config", run_overrides(size)))
    torch.set_num_threads(1)
    model = build_model(cfg.model)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    kinds = {"fused": dict(fused=True), "foreach": dict(foreach=True), "for-loop": dict(foreach=False)}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    optims = {k: torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4, **kw) for k, kw in kinds.items()}
    for _ in range(reps):
        for kind, opt in optims.items():
            opt.step()  # state allocated / warm
            start = time.perf_counter()
            for _ in range(20):
                opt.step()
            times[kind].append((time.perf_counter() - start) / 20 * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="small", choices=["tiny", "small", "medium"])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--reps", type=int, default=5, help="repetitions of the optimizer timing")
    args = ap.parse_args()
    prepare_data()
    counts, own = profile(args.size, args.steps, args.rate)
    steps = args.steps
    timed = {k: v for k, v in counts.items() if "excluded" not in k}
    total = sum(timed.values())
    print(header(f"Where a cpt step spends its time ({args.size} model, 1 rank, CPU)", sys.argv, None))
    print(f"py-spy at {args.rate} samples/s over {steps} steps: {total:,} samples inside the training loop "
          f"(validation and checkpoints excluded: {sum(counts.values()) - total:,}).\n")
    print("| phase | share of loop time | ms per step |\n|---|---|---|")
    ms_per_sample = 1e3 / args.rate
    for phase in dict.fromkeys([p for p, _ in PHASES] + [OWN]):
        if phase in timed:
            print(f"| {phase} | {timed[phase] / total:.1%} | {timed[phase] * ms_per_sample / steps:.2f} |")
    framework = sum(v for k, v in timed.items() if k not in COMPUTE)
    print(f"\nframework share of the loop (everything but forward, backward, clip and optimizer) = "
          f"**{framework / total:.3f}**")
    source = (ROOT / "cpt" / "train" / "loop.py").read_text().splitlines()
    print(f"\n{OWN}, costliest lines of cpt/train/loop.py: " + "; ".join(
        f"{n}: `{source[n - 1].strip()[:60]}` {v * ms_per_sample / steps:.2f} ms" for n, v in own.most_common(4)))
    opt = optimizer_steps(args.size, args.reps)
    print("\n| AdamW implementation | ms per step |\n|---|---|")
    for kind, ms in opt.items():
        print(f"| {kind} | {ms:.2f} |")
    print(f"\nforeach / fused step time = **{opt['foreach'] / opt['fused']:.2f}**; "
          f"for-loop / fused = {opt['for-loop'] / opt['fused']:.2f}")


if __name__ == "__main__":
    main()
