"""What document-boundary masking costs: training tokens/s with `trainer.doc_masking` on and off, same model, same
windows, on a corpus of short documents (so that most windows hold one or more document boundaries: the worst case).

    python bench/doc_masking.py [--size small] [--seq 512] [--words 60] [--reps 3]

On CPU, sdpa then gets a materialized block-diagonal mask (batch x seq x seq) instead of its causal fast path; on
GPU, flash-attention-2 takes its variable-length path instead. The masked logits' independence from the previous
document is tested (tests/model/test_doc_masking.py); this measures the price.
"""

from __future__ import annotations

import sys

import numpy as np

from common import DATA_ROOT, alternate, arg_parser, cpt_run, data_overrides, header, prepare_data, run_overrides, table


def boundaries_per_window(data_root, seq: int) -> float:
    """Mean number of EOS tokens among the inputs of a training window of the prepared corpus."""
    shards = sorted((data_root / "bench" / "bench" / "train").glob("tokens-*.bin"))
    tokens = np.concatenate([np.fromfile(s, dtype=np.uint16) for s in shards])
    return float((tokens == 256).sum()) / (len(tokens) / seq)  # the byte tokenizer's EOS is 256


def main() -> None:
    ap = arg_parser(__doc__, reps=3, steps=30, warmup=10)
    ap.add_argument("--seq", type=int, default=512, help="trainer.seq_len")
    ap.add_argument("--words", type=int, default=60, help="words per document (~6.5 bytes each)")
    args = ap.parse_args()
    root = DATA_ROOT.parent / f"{DATA_ROOT.name}-short{args.words}"
    prepare_data(root, docs=max(400, 3_000_000 // (7 * args.words)), words=args.words)
    base = [*[o for o in run_overrides(args.size) if not o.startswith(("trainer.doc_masking", "data"))],
            *data_overrides(root), f"trainer.seq_len={args.seq}"]
    med = alternate({"masking on": lambda: cpt_run([*base, "trainer.doc_masking=true"], args.steps, args.warmup),
                     "masking off": lambda: cpt_run([*base, "trainer.doc_masking=false"], args.steps, args.warmup)},
                    args.reps)
    print(header(f"Document masking cost ({args.size} model, seq {args.seq}, {args.words}-word documents)",
                 sys.argv, args.reps))
    print(f"Document boundaries per training window: {boundaries_per_window(root, args.seq):.1f}\n")
    print(table(med, {"tokens_per_s": "tokens/s", "peak_mem_mib": "peak memory MiB"}))
    ratio = med["masking on"]["tokens_per_s"] / med["masking off"]["tokens_per_s"]
    print(f"\nmasking on / off tokens/s = **{ratio:.3f}** (cost {100 * (1 - ratio):.1f}%)")


if __name__ == "__main__":
    main()
