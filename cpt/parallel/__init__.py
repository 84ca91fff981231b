"""parallel: processes and devices — the process group, rank environment and device choice (`distributed`), how
ranks are started locally, by submitit or by torchrun (`launch`), the checks before a sweep is queued
(`sweep_checks`), and how a plain model becomes FSDP2 / HSDP / DDP with mixed precision, activation checkpointing
and compile (`parallelize`). May import cpt.common, cpt.assets, cpt.config, cpt.model and cpt.data."""
