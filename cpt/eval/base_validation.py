"""The base model's step-0 validation, computed once per sweep and reused by the sweep's other jobs.

Every job of an LR or replay sweep starts from the same base model on the same data, so its step-0 validation (about
40 s per job on SmolLM2 here) is the same numbers each time. The first job to compute it stores its record in
<sweep dir>/.base_validation/<key>.json (atomically); a job whose key matches reads it instead. The key holds
everything the numbers depend on: the model settings (source, architecture, LoRA, vocabulary, attention) and the
identity of the weight files (name, size, modification time), the FSDP settings, the data's fingerprint and the
validated sources, seq_len, eval windows (eval_batches x micro-batch x ranks), document masking, loss,
precision, compile, seed and the device type. A job outside a sweep, or with no matching entry, computes it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Optional

from cpt.config.schema import RunConfig

log = logging.getLogger(__name__)

SWEEP_DIR_ENV = "CPT_SWEEP_DIR"  # set by cpt.run in every job of a -m sweep


def base_key(cfg: RunConfig, world_size: int, fingerprint: str, device_type: str) -> str:
    t = cfg.trainer
    weights = []
    source = Path(cfg.model.name_or_path).expanduser() if cfg.model.name_or_path else None
    if not cfg.model.random_init and source is not None and source.exists():
        files = sorted(source.rglob("*")) if source.is_dir() else [source]
        weights = [(str(f.relative_to(source) if source.is_dir() else f.name), f.stat().st_size, f.stat().st_mtime_ns)
                   for f in files if f.is_file()]
    identity = {
        "model": dataclasses.asdict(cfg.model), "weights": weights, "fsdp": dataclasses.asdict(cfg.fsdp),
        "data": fingerprint, "sources": [s.name for s in cfg.data.sources], "world": world_size,
        "trainer": {k: getattr(t, k) for k in ("seq_len", "eval_batches", "micro_batch_size", "doc_masking", "loss",
                                               "precision", "compile", "seed")},
        "device": device_type,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cache_path(key: str) -> Optional[Path]:
    sweep = os.environ.get(SWEEP_DIR_ENV)
    return Path(sweep) / ".base_validation" / f"{key}.json" if sweep else None


def load(key: str) -> Optional[dict]:
    path = cache_path(key)
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text())


def store(key: str, record: dict) -> None:
    path = cache_path(key)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)  # atomic: another job reads all of it or nothing
