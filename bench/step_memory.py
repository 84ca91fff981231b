"""Where a training step's memory goes, counted tensor by tensor (torch's MemTracker: the peak of live tensor bytes,
exact and the same on CPU and GPU, unlike a process's RSS):

1. the chunked loss alone (cpt/model/loss.py) at Qwen2.5-0.5B's output layer (vocabulary 151,936 x hidden 896),
   2,048 tokens, fp32 and bf16 weights: what forward + backward hold beyond their inputs;
2. one optimizer step with grad_accum=4 on 2 FSDP2 ranks (full_shard, gloo on CPU) of a 30.7M-parameter body under
   trainer.accum_reduce=last and =every: each rank's peak, and what lives between micro-steps.

    python bench/step_memory.py [--tokens 2048] [--grad-accum 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch.distributed._tools.mem_tracker import MemTracker

from common import ROOT, SIZES, child_env, header

MIB = 2**20


def peak_mib(tracker: MemTracker) -> float:
    return sum(v["Total"] for v in tracker.get_tracker_snapshot("peak").values()) / MIB


def loss_memory(vocab: int, hidden: int, tokens: int, dtype: torch.dtype) -> dict:
    """Peak bytes of one forward + backward of the chunked loss beyond its inputs (weight, hidden states, targets)
    and the weight's gradient that backward hands to autograd."""
    from cpt.model.loss import ChunkedLinearCrossEntropy, chunk_rows

    torch.manual_seed(0)
    weight = torch.randn(vocab, hidden, dtype=dtype, requires_grad=True)
    states = torch.randn(tokens, hidden, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, vocab, (tokens,))
    inputs = (weight.numel() + states.numel()) * weight.element_size() + targets.numel() * 8
    tracker = MemTracker()
    with tracker:
        loss = ChunkedLinearCrossEntropy.apply(states, weight, targets, chunk_rows(vocab)) / tokens
        loss.backward()
    grads = (weight.grad.numel() + states.grad.numel()) * weight.element_size()
    return {"peak beyond inputs MiB": peak_mib(tracker) - inputs / MIB,
            "gradients MiB": grads / MIB, "weight MiB": weight.numel() * weight.element_size() / MIB}


def accum_memory(reduce: str, grad_accum: int) -> dict:
    """Run the 2-rank probe (tests/helpers/accum_memory_probe.py) under torchrun; rank 0's numbers."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               str(ROOT / "bench" / "accum_memory_probe.py"), reduce, str(grad_accum), tmp],
                              cwd=ROOT, env=child_env(), capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"accum probe ({reduce}) failed:\n{proc.stderr[-4000:]}")
        return json.loads(Path(tmp, "rank0.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--grad-accum", type=int, default=4)
    args = ap.parse_args()
    print(header("Memory of the chunked loss and of gradient accumulation, counted per tensor", sys.argv, None))
    print(f"\n1. chunked loss, vocabulary 151,936 x hidden 896, {args.tokens} tokens\n")
    print("| weights | weight MiB | gradients MiB | peak beyond inputs MiB |\n|---|---|---|---|")
    for dtype in (torch.float32, torch.bfloat16):
        r = loss_memory(151_936, 896, args.tokens, dtype)
        print(f"| {str(dtype).removeprefix('torch.')} | {r['weight MiB']:,.0f} | {r['gradients MiB']:,.0f} | "
              f"{r['peak beyond inputs MiB']:,.0f} |")
    s = SIZES["medium"]
    print(f"\n2. one step, grad_accum={args.grad_accum}, 2 ranks full_shard, {s['layers']} layers x hidden "
          f"{s['hidden']} (30.7M parameters), seq {s['seq']}, micro-batch {s['batch']}, fp32\n")
    print("| accum_reduce | rank 0 peak MiB | gradients between micro-steps MiB | collectives |\n|---|---|---|---|")
    for reduce in ("last", "every"):
        r = accum_memory(reduce, args.grad_accum)
        print(f"| {reduce} | {r['peak_mib']:,.0f} | {r['grads_between_mib']:,.0f} | {r['reduce_scatters']} "
              "reduce-scatters |")


if __name__ == "__main__":
    main()
