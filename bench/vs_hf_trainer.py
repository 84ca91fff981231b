"""cpt vs Hugging Face `Trainer` on the same job: model and its initial weights, packed windows of the same prepared
data, micro-batch, sequence length, precision, optimizer (fused AdamW), steps and number of ranks.

    python bench/vs_hf_trainer.py [--size small] [--nproc 1] [--fsdp full_shard] [--compile] [--reps 5]

HF runs at its best settings for this job: pre-packed fixed-length windows (no padding, no collator work), fused
AdamW, no logging, saving or evaluation during the timed steps, `torch_compile` when cpt compiles, bf16 on GPU.
With --nproc 2 HF runs under torchrun with accelerate's FSDP2 (--fsdp full_shard / shard_grad_op) or DDP
(--fsdp no_shard, the same replicated layout as cpt's no_shard). Each side in its own process, alternating;
tokens/s is timed after --warmup steps on both sides. Goal: cpt >= 1.0x HF (aim 1.2x).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

from common import ROOT, alternate, arg_parser, cpt_run, header, prepare_data, run_child, run_overrides, table


def hf_trainer(size: str, steps: int, warmup: int, fsdp: str, compile: bool) -> dict:
    import torch
    import torch.distributed as dist
    from hydra import compose, initialize_config_dir
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from cpt.config.schema import to_run_config
    from cpt.data.loader import MixtureLoader
    from cpt.data.manifest import load_manifest, open_streams
    from cpt.model.build import build_model
    from cpt.model.tokenizer import build_tokenizer

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = to_run_config(compose("config", run_overrides(size)))
    t, o = cfg.trainer, cfg.optim
    torch.set_num_threads(1)
    torch.manual_seed(t.seed)
    world = int(__import__("os").environ.get("WORLD_SIZE", 1))
    model = build_model(cfg.model)
    # the packed windows cpt's loader would draw, global batch by global batch; HF's sampler deals them to ranks
    streams = open_streams(cfg.data, load_manifest(cfg.data, build_tokenizer(cfg.model)), "train")
    loader = MixtureLoader(streams, {s.name: s.weight for s in cfg.data.sources}, t.seq_len,
                           t.micro_batch_size * world, 1, 0, 1, t.seed, torch.device("cpu"))
    windows = []
    for _ in range(steps):
        (x, y), = loader.next_batches()
        # labels are unused by the loss when shift_labels is given: the targets are exactly cpt's
        windows += [{"input_ids": a, "labels": b, "shift_labels": b} for a, b in zip(x, y)]

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                self.start = time.perf_counter()
            if state.global_step == steps:
                self.elapsed = time.perf_counter() - self.start

    cuda = torch.cuda.is_available()
    sharded = world > 1 and fsdp != "no_shard"
    args = TrainingArguments(
        output_dir=f"/tmp/cpt-bench-hf-{__import__('os').getpid()}", max_steps=steps,
        per_device_train_batch_size=t.micro_batch_size, gradient_accumulation_steps=1,
        learning_rate=o.lr, weight_decay=o.weight_decay, adam_beta1=o.betas[0], adam_beta2=o.betas[1],
        adam_epsilon=o.eps, warmup_steps=o.warmup_steps, lr_scheduler_type="cosine", max_grad_norm=o.grad_clip,
        optim="adamw_torch_fused", bf16=cuda, use_cpu=not cuda, torch_compile=compile, seed=t.seed,
        logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
        dataloader_num_workers=0, dataloader_pin_memory=cuda, dataloader_drop_last=True,
        remove_unused_columns=False, average_tokens_across_devices=False,
        fsdp=fsdp if sharded else "", fsdp_config={"version": 2} if sharded else None,
        ddp_find_unused_parameters=False if world > 1 and not sharded else None,
    )
    clock = Clock()
    trainer = Trainer(model=model, args=args, train_dataset=windows, callbacks=[clock])
    if world > 1 and sharded and not trainer.is_fsdp_enabled:
        sys.exit(f"HF Trainer did not enable FSDP on {'GPU' if cuda else 'CPU'} (accelerate runs it on GPUs only): "
                 "compare with --fsdp no_shard, which HF runs as DDP")
    trainer.train()
    tokens = (steps - warmup) * t.micro_batch_size * world * t.seq_len
    result = {"tokens_per_s": tokens / clock.elapsed,
              "peak_mem_mib": (torch.cuda.max_memory_allocated() / 2**20 if cuda
                               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(json.dumps(result))
    return result


def main() -> None:
    ap = arg_parser(__doc__, reps=5)
    ap.add_argument("--nproc", type=int, default=1)
    ap.add_argument("--fsdp", default="full_shard", choices=["full_shard", "shard_grad_op", "no_shard"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        hf_trainer(args.size, args.steps, args.warmup, args.fsdp, args.compile)
        return
    prepare_data()
    launch = [sys.executable] if args.nproc == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                        "--nproc_per_node", str(args.nproc)]
    child = [*launch, __file__, "--child", "--size", args.size, "--steps", str(args.steps), "--warmup",
             str(args.warmup), "--fsdp", args.fsdp, *(["--compile"] if args.compile else [])]
    cpt_overrides = [*run_overrides(args.size), f"fsdp={args.fsdp}", f"trainer.compile={args.compile}"]
    med = alternate({"cpt": lambda: cpt_run(cpt_overrides, args.steps, args.warmup, args.nproc),
                     "hf_trainer": lambda: run_child(child)}, args.reps)
    layout = f"{args.nproc} rank{'s' if args.nproc > 1 else ''}" + (f", {args.fsdp}" if args.nproc > 1 else "")
    print(header(f"cpt vs HF Trainer ({args.size} model, {layout}, compile {args.compile})", sys.argv, args.reps))
    print(table(med, {"tokens_per_s": "tokens/s", "peak_mem_mib": "peak memory MiB (rank 0)"}))
    ratio = med["cpt"]["tokens_per_s"] / med["hf_trainer"]["tokens_per_s"]
    print(f"\ncpt / HF Trainer tokens/s = **{ratio:.3f}** (goal >= 1.0, aim 1.2)")


if __name__ == "__main__":
    main()
