"""Cross-field checks of a composed config that types cannot express (ranges, combinations, the world size); each
raises ConfigError naming the key, before any model is built or any file is read."""

from __future__ import annotations

import os
from pathlib import Path

from cpt.config.schema import (
    ATTENTION,
    RESUME_PLAN_KEYS,
    ConfigError,
    DataConfig,
    EvalConfig,
    OnSpike,
    RunConfig,
    Strategy,
)


def validate(cfg: RunConfig, world_size: int, local_world_size: int) -> None:
    """Cross-field checks that types cannot express; raises ConfigError naming the key."""
    t, o, f, d = cfg.trainer, cfg.optim, cfg.fsdp, cfg.data
    positive = {
        "trainer.steps": t.steps,
        "trainer.micro_batch_size": t.micro_batch_size,
        "trainer.grad_accum": t.grad_accum,
        "trainer.seq_len": t.seq_len,
        "trainer.log_interval": t.log_interval,
        "trainer.eval_batches": t.eval_batches,
        "trainer.nproc_per_node": t.nproc_per_node,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(key, f"must be >= 1, got {value}")
    attn = cfg.model.attn_implementation
    if attn not in (None, *ATTENTION):
        raise ConfigError("model.attn_implementation", f"'{attn}' is not one of {list(ATTENTION)} (or null: the "
                          "default for the device)")
    if attn == "flash_attention_2" and t.doc_masking and t.micro_batch_size > 1:
        raise ConfigError("model.attn_implementation", "flash_attention_2 separates packed documents only at "
                          f"trainer.micro_batch_size=1 (it is {t.micro_batch_size}): larger micro-batches would "
                          "attend across documents. Use flex_attention (or null), micro_batch_size=1, or "
                          "trainer.doc_masking=false")
    unknown = sorted(set(cfg.resume_allow) - set(RESUME_PLAN_KEYS))
    if unknown:
        raise ConfigError("resume_allow", f"{unknown} are not settings a checkpoint records; choose among "
                          f"{list(RESUME_PLAN_KEYS)}")
    validate_spikes(cfg)
    if cfg.report.wandb and not cfg.logger.wandb:
        raise ConfigError("report.wandb", "builds the sweep's W&B dashboard from its jobs' W&B runs, and this run "
                          "logs none: add logger=wandb")
    if not 0 <= cfg.report.max_forgetting:
        raise ConfigError("report.max_forgetting", f"is a fraction >= 0 (0.05 = 5%), got {cfg.report.max_forgetting}")
    if d.warn_epochs <= 0 or any(s.max_epochs is not None and s.max_epochs <= 0 for s in d.sources):
        raise ConfigError("data.warn_epochs", "and every data.sources[].max_epochs must be > 0")
    if t.eval_interval < 0:
        raise ConfigError("trainer.eval_interval",
                          f"must be >= 0 (0 = validate only at the end), got {t.eval_interval}")
    if t.num_threads is not None and t.num_threads < 1:
        raise ConfigError("trainer.num_threads", f"must be >= 1 or null, got {t.num_threads}")
    if t.peak_flops is not None and t.peak_flops <= 0:
        raise ConfigError("trainer.peak_flops", f"must be > 0 or null, got {t.peak_flops}")
    if o.lr <= 0:
        raise ConfigError("optim.lr", f"must be > 0, got {o.lr}")
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        raise ConfigError("optim.betas", f"must be two numbers in [0, 1), got {o.betas}")
    if o.weight_decay < 0:
        raise ConfigError("optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
    if o.grad_clip is not None and o.grad_clip <= 0:
        raise ConfigError("optim.grad_clip", f"must be > 0, or null to disable clipping; got {o.grad_clip}")
    if not 0 <= o.min_lr_ratio <= 1:
        raise ConfigError("optim.min_lr_ratio", f"must be in [0, 1], got {o.min_lr_ratio}")
    if not 0 < o.decay_fraction <= 1:
        raise ConfigError("optim.decay_fraction", f"must be in (0, 1], got {o.decay_fraction}")
    if not 0 <= o.warmup_steps < t.steps:
        raise ConfigError("optim.warmup_steps", f"must be in [0, trainer.steps={t.steps}), got {o.warmup_steps}")
    validate_data(d)
    if cfg.model.name_or_path is None and not cfg.model.random_init:
        raise ConfigError("model.random_init",
                          "is false but model.name_or_path is null: give weights or set random_init=true")
    if cfg.model.tokenizer is None and cfg.model.name_or_path is None:
        raise ConfigError("model.tokenizer", "is null and so is model.name_or_path: name a tokenizer (or 'byte')")
    if cfg.model.arch.num_attention_heads < 1 or cfg.model.arch.hidden_size % cfg.model.arch.num_attention_heads:
        raise ConfigError("model.arch.num_attention_heads", "must be >= 1 and divide model.arch.hidden_size")
    lora = cfg.model.lora
    if lora.enabled and (lora.r < 1 or lora.alpha <= 0 or not 0 <= lora.dropout < 1):
        raise ConfigError("model.lora", f"needs r >= 1, alpha > 0 and dropout in [0, 1); got r={lora.r}, "
                          f"alpha={lora.alpha}, dropout={lora.dropout}")
    if cfg.export.lora_adapter and not lora.enabled:
        raise ConfigError("export.lora_adapter", "saves a LoRA adapter: it needs model.lora.enabled=true")
    if f.strategy == Strategy.hybrid_shard:
        shard = f.shard_size or local_world_size
        if shard < 1 or world_size % shard:
            raise ConfigError(
                "fsdp.shard_size",
                f"hybrid_shard needs a shard group size that divides the world size {world_size}, got {shard}",
            )
    elif f.shard_size is not None:
        raise ConfigError("fsdp.shard_size", f"only applies to fsdp.strategy=hybrid_shard, not {f.strategy.value}")
    if f.cpu_offload and f.strategy != Strategy.full_shard:
        raise ConfigError("fsdp.cpu_offload",
                          f"is supported with fsdp.strategy=full_shard only, not {f.strategy.value}")
    c = cfg.checkpoint
    if c.interval < 0 or c.keep_last < 1:
        raise ConfigError("checkpoint.interval",
                          f"interval must be >= 0 and keep_last >= 1, got {c.interval}, {c.keep_last}")
    if not c.dir or os.path.isabs(c.dir) or ".." in Path(c.dir).parts:
        raise ConfigError("checkpoint.dir", f"must be a path inside the run directory, got {c.dir!r}")
    if not cfg.export.dir or os.path.isabs(cfg.export.dir) or ".." in Path(cfg.export.dir).parts:
        raise ConfigError("export.dir", f"must be a path inside the run directory, got {cfg.export.dir!r}")
    if cfg.export.push_to_hub is not None and (not cfg.export.enabled or cfg.export.push_to_hub.count("/") != 1):
        raise ConfigError("export.push_to_hub", "needs export.enabled=true and a repo id of the form 'user/name', "
                          f"got {cfg.export.push_to_hub!r}")


def validate_eval(cfg: EvalConfig) -> None:
    validate_data(cfg.data)
    if not cfg.models:
        raise ConfigError("models", "is empty: name the models to compare, e.g. '+models.base=<dir>'")
    if cfg.baseline is not None and cfg.baseline not in cfg.models:
        raise ConfigError("baseline", f"'{cfg.baseline}' is not one of models: {sorted(cfg.models)}")
    if cfg.domain is not None and cfg.domain not in [s.name for s in cfg.data.sources]:
        raise ConfigError("domain", f"'{cfg.domain}' is not a source of data '{cfg.data.name}'")
    if cfg.split not in ("train", "val"):
        raise ConfigError("split", f"must be train or val, got {cfg.split!r}")
    for key, value in (("seq_len", cfg.seq_len), ("batch_size", cfg.batch_size), ("max_tokens", cfg.max_tokens or 1),
                       ("task_limit", cfg.task_limit or 1)):
        if value < 1:
            raise ConfigError(key, f"must be >= 1, got {value}")


def validate_data(cfg: DataConfig) -> None:
    if not cfg.sources:
        raise ConfigError("data.sources", "is empty: name at least one source with its paths")
    names = [s.name for s in cfg.sources]
    for i, source in enumerate(cfg.sources):
        if not source.name or "/" in source.name or names.count(source.name) > 1:
            raise ConfigError(f"data.sources[{i}].name", f"must be unique, non-empty, without '/': {source.name!r}")
        if source.weight < 0:
            raise ConfigError(f"data.sources[{i}].weight", f"must be >= 0, got {source.weight}")
        if bool(source.paths) == (source.hf is not None):
            raise ConfigError(f"data.sources[{i}]", f"source '{source.name}' needs exactly one of paths (files, "
                              "directories, globs) and hf (a Hugging Face dataset: {path: owner/name, split: train})")
        for key in ("max_docs", "max_tokens"):
            if getattr(source, key) is not None and getattr(source, key) < 1:
                raise ConfigError(f"data.sources[{i}].{key}", f"must be null or >= 1, got {getattr(source, key)}")
        if source.where is not None and (source.where.equals, source.where.min, source.where.max) == (None,) * 3:
            raise ConfigError(f"data.sources[{i}].where", "names a column but no condition: set equals, min or max")
    if not any(s.weight > 0 for s in cfg.sources):
        raise ConfigError("data.sources", "every weight is 0: give at least one source a positive weight")
    for key, replay in [("data.replay", cfg.replay)] + [(f"data.stages[{i}].replay", st.replay)
                                                         for i, st in enumerate(cfg.stages)]:
        if replay is not None and not (0 <= replay < 1 and len(cfg.sources) > 1):
            raise ConfigError(key, f"must be null or in [0, 1) with at least two sources (the first is the domain, "
                              f"the others are replayed), got {replay} with {len(cfg.sources)} source(s)")
    validate_stages(cfg, names)
    if not 0 < cfg.val_fraction < 1:
        raise ConfigError("data.val_fraction", f"must be in (0, 1), got {cfg.val_fraction}")
    if cfg.chunk_chars is not None and cfg.chunk_chars < max(1, cfg.clean.min_chars):
        raise ConfigError("data.chunk_chars", f"must be null or >= data.clean.min_chars ({cfg.clean.min_chars}), "
                          f"got {cfg.chunk_chars}")
    if cfg.slurm.shards < 1:
        raise ConfigError("data.slurm.shards", f"must be >= 1, got {cfg.slurm.shards}")
    for key in ("pdf_pages_per_task", "parquet_row_groups_per_task"):
        value = getattr(cfg.convert, key)
        if value is not None and value < 1:
            raise ConfigError(f"data.convert.{key}", f"must be null or >= 1, got {value}")
    if cfg.clean.min_chars < 0 or (cfg.clean.max_chars is not None and cfg.clean.max_chars < cfg.clean.min_chars):
        raise ConfigError("data.clean.max_chars", "must be null or >= data.clean.min_chars >= 0")
    dedups = [("data.dedup", cfg.dedup)] + [(f"data.sources[{i}].dedup", s.dedup) for i, s in enumerate(cfg.sources)]
    for key, dd in dedups:
        if dd is None:
            continue
        if not 0 < dd.threshold <= 1:
            raise ConfigError(f"{key}.threshold", f"must be in (0, 1], got {dd.threshold}")
        if dd.num_perm < 2 or dd.shingle_size < 1:
            raise ConfigError(f"{key}.num_perm", "num_perm must be >= 2 and shingle_size >= 1")
    for key, value in (("data.num_proc", cfg.num_proc), ("data.tokenize_batch", cfg.tokenize_batch),
                       ("data.shard_tokens", cfg.shard_tokens)):
        if value < 1:
            raise ConfigError(key, f"must be >= 1, got {value}")


def validate_stages(cfg: DataConfig, names: list[str]) -> None:
    """data.stages: increasing `until` fractions ending at 1.0, weights of known sources, something to draw."""
    previous = 0.0
    for i, stage in enumerate(cfg.stages):
        key = f"data.stages[{i}]"
        if not previous < stage.until <= 1:
            raise ConfigError(f"{key}.until",
                              f"must be in ({previous:g}, 1] (after the stage before), got {stage.until}")
        previous = stage.until
        unknown = sorted(set(stage.weights) - set(names))
        if unknown:
            raise ConfigError(f"{key}.weights", f"{unknown} are not sources of data '{cfg.name}' ({names})")
        weights = {s.name: s.weight for s in cfg.sources} | dict(stage.weights)
        if any(w < 0 for w in weights.values()) or (stage.replay is None and cfg.replay is None
                                                    and not any(w > 0 for w in weights.values())):
            raise ConfigError(f"{key}.weights", f"must be >= 0 with one of them positive, got {weights}")
    if cfg.stages and cfg.stages[-1].until != 1:
        raise ConfigError(f"data.stages[{len(cfg.stages) - 1}].until",
                          f"the last stage must run to the end of training (1.0), got {cfg.stages[-1].until}")


def validate_spikes(cfg: RunConfig) -> None:
    t, sp = cfg.trainer, cfg.trainer.spike
    if sp.window < 2 or not 2 <= sp.min_steps <= sp.window:
        raise ConfigError("trainer.spike", f"needs window >= 2 and 2 <= min_steps <= window; got window={sp.window}, "
                          f"min_steps={sp.min_steps}")
    if sp.sigma <= 0 or sp.min_rise < 0 or sp.max_rollbacks < 0:
        raise ConfigError("trainer.spike", f"needs sigma > 0, min_rise >= 0, max_rollbacks >= 0; got sigma={sp.sigma}, "
                          f"min_rise={sp.min_rise}, max_rollbacks={sp.max_rollbacks}")
    if t.on_spike == OnSpike.rollback and cfg.checkpoint.interval < 1:
        raise ConfigError("trainer.on_spike", "is rollback but checkpoint.interval=0: there would be no checkpoint "
                          "from before a spike to go back to. Set checkpoint.interval=<steps>, or on_spike=skip")
    bad = [b for b in t.skip_batches if b < 1]
    if bad:
        raise ConfigError("trainer.skip_batches", f"names global batches by the step that drew them (1, 2, ...); got "
                          f"{bad}")
