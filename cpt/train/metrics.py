"""Throughput, MFU and memory, and where metrics go: the console log, `metrics.jsonl` in the run directory, a
progress bar with ETA, and W&B when configured (cpt.train.tracking). Only global rank 0 writes; other ranks get a sink
that drops everything."""

from __future__ import annotations

import json
import logging
import math
import resource
import sys
import time
from pathlib import Path
from typing import Optional

import torch
from torch import nn

log = logging.getLogger(__name__)

# Dense peak FLOP/s per GPU (no sparsity) by compute dtype, from the vendors' data sheets. fp32 runs on tensor
# cores as TF32 where the device has them. Keys are matched against torch.cuda.get_device_name().
PEAK_FLOPS = {
    "GH200": {"bf16": 989e12, "fp32": 494e12},
    "H200": {"bf16": 989e12, "fp32": 494e12},
    "H100 NVL": {"bf16": 835e12, "fp32": 418e12},
    "H100 PCIe": {"bf16": 756e12, "fp32": 378e12},
    "H100": {"bf16": 989e12, "fp32": 494e12},  # SXM
    "B200": {"bf16": 2250e12, "fp32": 1100e12},
    "A100": {"bf16": 312e12, "fp32": 156e12},
    "A800": {"bf16": 312e12, "fp32": 156e12},
    "L40S": {"bf16": 362e12, "fp32": 183e12},
    "L40": {"bf16": 181e12, "fp32": 90.5e12},
    "L4": {"bf16": 121e12, "fp32": 60e12},
    "A10G": {"bf16": 70e12, "fp32": 35e12},
    "A10": {"bf16": 125e12, "fp32": 62.5e12},
    "RTX 4090": {"bf16": 165e12, "fp32": 82.6e12},
    "V100": {"bf16": 0.0, "fp32": 15.7e12},  # no bf16 tensor cores
}


def matmul_params(model: nn.Module) -> int:
    """Parameters that take part in a matmul: every unique parameter, less the input embedding (a lookup), plus the
    output projection. Tied embeddings: the unique count itself (the lm_head is the embedding); untied: all but the
    input embedding."""
    unique = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    embedding = model.get_input_embeddings().weight.numel()
    tied = getattr(model.config, "tie_word_embeddings", False)
    return unique - embedding + (model.get_output_embeddings().weight.numel() if tied else 0)


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Training FLOPs per token: 6 * matmul_params (forward 2, backward 4: 2 for the inputs' gradient, 2 for the
    weights') plus the attention score and value matmuls, 12 * layers * heads * head_dim * seq_len. Frozen weights
    (LoRA's base) get no weight gradient: 4 per parameter instead of 6."""
    cfg = model.config
    params = matmul_params(model)
    embedding = model.get_input_embeddings().weight
    tied = getattr(cfg, "tie_word_embeddings", False)
    frozen = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()
                 if not p.requires_grad and (tied or p is not embedding))
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return 6 * params - 2 * frozen + 12 * cfg.num_hidden_layers * heads * head_dim * seq_len


def peak_flops(device: torch.device, dtype: torch.dtype, configured: Optional[float]) -> Optional[float]:
    """Peak FLOP/s of one device, or None when unknown (MFU is then reported as unavailable)."""
    if configured:
        return configured
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    key = "bf16" if dtype == torch.bfloat16 else "fp32"
    for model_name, peaks in PEAK_FLOPS.items():  # ordered: specific names before their prefixes
        if model_name in name:
            return peaks[key] or None
    return None


def memory_report(device: torch.device) -> dict:
    """This rank's memory. GPU: the allocator's peak since the last report (the counter is reset after reading), the
    memory it holds reserved, and how often it had to free its cache and retry (fragmentation: a sign to lower the
    micro-batch or set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True). CPU: the process peak RSS so far."""
    if device.type != "cuda":
        return {"peak_mem_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux reports KiB
    stats = torch.cuda.memory_stats(device)
    torch.cuda.reset_peak_memory_stats(device)
    return {"peak_mem_mib": stats.get("allocated_bytes.all.peak", 0) / 2**20,
            "reserved_mib": stats.get("reserved_bytes.all.current", 0) / 2**20,
            "alloc_retries": stats.get("num_alloc_retries", 0)}


def _local_bytes(t: torch.Tensor) -> int:
    t = t.to_local() if hasattr(t, "to_local") else t
    return t.numel() * t.element_size()


def optimizer_state_mib(optimizer: torch.optim.Optimizer) -> float:
    """This rank's share of the optimizer state (AdamW: two moments per trainable parameter), in MiB."""
    return sum(_local_bytes(v) for state in optimizer.state.values() for v in state.values()
               if torch.is_tensor(v) and v.ndim > 0) / 2**20


def local_state_mib(model: nn.Module, optimizer: torch.optim.Optimizer) -> float:
    """This rank's share of parameters + optimizer state (the part FSDP shards), in MiB."""
    return sum(_local_bytes(p) for p in model.parameters()) / 2**20 + optimizer_state_mib(optimizer)


class Throughput:
    """Tokens/s and MFU over the training time since the last report (validation time excluded). Read at log
    steps only, so it adds no per-step host sync."""

    def __init__(self, flops_per_token: float, peak: Optional[float], world_size: int,
                 device: torch.device = torch.device("cpu")):
        self.flops_per_token, self.peak, self.world, self.device = flops_per_token, peak, world_size, device
        self.tokens, self.elapsed, self.start = 0, 0.0, time.perf_counter()

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def pause(self) -> None:
        """End a timed stretch: waits for the device's queued work, so the time is the work's, not its launch's."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.elapsed += time.perf_counter() - self.start

    def resume(self) -> None:
        self.start = time.perf_counter()

    def report(self) -> dict:
        self.pause()
        tps = self.tokens / max(self.elapsed, 1e-9)  # global tokens/s
        mfu = tps * self.flops_per_token / (self.peak * self.world) if self.peak else None
        self.tokens, self.elapsed = 0, 0.0
        self.resume()
        return {"tokens_per_s": tps, "mfu": mfu}


class MetricsSink:
    """Rank 0: console log line, one JSON object per line in metrics.jsonl, tqdm progress bar."""

    def __init__(self, run_dir: Path, total_steps: int, start_step: int, progress_bar: bool, enabled: bool,
                 tracker=None):
        self.enabled, self.tracker, self.run_dir = enabled, tracker, run_dir
        self.file = open(run_dir / "metrics.jsonl", "a") if enabled else None
        self.bar = None
        if enabled and progress_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                            dynamic_ncols=True, file=sys.stderr, mininterval=1.0)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tracker is not None:
            self.tracker.log({k: v for k, v in record.items() if k != "step" and v is not None}, step=record["step"])
        log.info(" | ".join(_fmt(k, v) for k, v in record.items()))
        if self.bar is not None and "loss" in record:
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def summarize(self, summary: dict) -> None:
        """The run's comparison numbers (cpt.eval.run_summary): <run dir>/summary.json and the W&B run's summary."""
        if not self.enabled:
            return
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
        if self.tracker is not None:
            self.tracker.summary.update(summary)

    def rewind(self, step: int) -> None:
        """The run went back to `step` (a spike's rollback)."""
        if self.bar is not None:
            self.bar.n = step
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.file is not None:
            self.file.close()
        if self.tracker is not None:
            self.tracker.finish()


def _fmt(key: str, value) -> str:
    if value is None:
        return f"{key} n/a"
    if isinstance(value, float):
        if key in ("lr",) or (value != 0 and abs(value) < 1e-3) or math.isinf(value):
            return f"{key} {value:.3e}"
        return f"{key} {value:.4f}" if abs(value) < 100 else f"{key} {value:,.0f}"
    return f"{key} {value}"
