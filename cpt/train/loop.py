"""The training loop of one rank, readable in one sitting:
build tokenizer + model -> parallelize -> optimizer + schedule -> loop (micro-batches, accumulation, clip, step,
schedule) with metrics at log steps and validation at eval steps."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.distributed.tensor import DTensor

from cpt.common import faults
from cpt.common.errors import UserError
from cpt.common.logs import setup_logging
from cpt.config.schema import LossImpl, RunConfig, TrainerConfig
from cpt.data.loader import MixtureLoader, TokenStream
from cpt.data.manifest import data_dir, load_manifest, open_streams
from cpt.data.mixture import training_mixture
from cpt.data.provenance import DocumentIndex
from cpt.data.repetition import check_repetition, planned_epochs
from cpt.eval import base_validation
from cpt.eval.bits_per_byte import bits_per_byte, token_bytes
from cpt.eval.heldout import rank_windows, summed_loss
from cpt.eval.perplexity import perplexity
from cpt.eval.run_summary import run_summary
from cpt.model.build import check_vocab, check_weights_loaded
from cpt.model.loss import lm_loss
from cpt.model.params import count_params, trainable_params
from cpt.model.tokenizer import build_tokenizer
from cpt.parallel import distributed
from cpt.parallel.parallelize import autocast, build_parallel_model, compute_dtype, gradient_sync, log_graph_breaks
from cpt.train import tracking
from cpt.train.checkpoint import Checkpointer, read_plan, resolve_resume
from cpt.train.export import PendingExport, gather_export
from cpt.train.metrics import (
    MetricsSink,
    Throughput,
    flops_per_token,
    local_state_mib,
    memory_report,
    optimizer_state_mib,
    peak_flops,
)
from cpt.train.optim import build_optimizer, build_scheduler
from cpt.train.preemption import Preemption
from cpt.train.resume_plan import check_resume, replan, run_plan
from cpt.train.spikes import SpikeGuard, respond
from cpt.train.state import NonFiniteGuard, TrainState

log = logging.getLogger(__name__)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable, grad_accum: int,
               grad_clip: Optional[float], amp=nullcontext(), inject_nan: bool = False,
               sync: Callable[[bool], None] = lambda last: None, loss_impl: LossImpl = LossImpl.chunked,
               eos_id: Optional[int] = None, spikes: Optional[SpikeGuard] = None,
               loss_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimizer step over `grad_accum` micro-batches; `sync(is_last)` says before each backward what that
    micro-step reduces (cpt.parallel.parallelize.gradient_sync); `eos_id`: the documents of a window are masked from
    each other (cpt.model.doc_masking); `spikes`: the spike guard, whose flag can drop the update too.
    Returns this rank's mean loss, the global gradient norm (before clipping) and a device flag, 1.0 when that norm
    was not finite (NaN/inf loss on any rank): the fused optimizer then skips the update on the device, leaving
    weights and moments untouched, without the host waiting for the step to finish."""
    loss_sum = None
    for i, (inputs, targets) in enumerate(batches):
        sync(i == grad_accum - 1)
        with amp:
            loss = lm_loss(model, inputs, targets, impl=loss_impl, eos_id=eos_id) / grad_accum
        if inject_nan:
            loss = loss * float("nan")
        if loss_scale != 1.0:  # a fault: a spike that comes with this batch
            loss = loss * loss_scale
        loss.backward()
        loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
    params = [p for p in model.parameters() if p.grad is not None]
    if grad_clip is not None:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip, foreach=True)
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
    grad_norm = grad_norm.to_local() if isinstance(grad_norm, DTensor) else grad_norm  # replicated: same on all ranks
    nonfinite = (~torch.isfinite(grad_norm)).float()
    drop = nonfinite if spikes is None or not spikes.enabled else torch.maximum(
        nonfinite, spikes.flag(loss_sum, grad_norm, nonfinite))
    optimizer.found_inf = drop  # read by the fused AdamW kernel: 1.0 leaves weights and moments untouched
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, grad_norm, nonfinite


def validation_losses(model: nn.Module, streams: dict[str, TokenStream], t: TrainerConfig, env: distributed.DistEnv,
                      amp=nullcontext(), eos_id: Optional[int] = None,
                      byte_table: Optional[torch.Tensor] = None) -> dict[str, tuple[float, float]]:
    """(mean token loss, bits per byte) on each source's validation windows, summed over all ranks, and over all of
    them ("all")."""
    totals = torch.stack([
        summed_loss(model, stream, rank_windows(stream, t.seq_len, env.rank, env.world_size,
                                                t.eval_batches * t.micro_batch_size),
                    t.seq_len, t.micro_batch_size, env.device, amp, t.loss, eos_id, byte_table)
        for stream in streams.values()])
    dist.all_reduce(totals)
    rows = {name: totals[i] for i, name in enumerate(streams) if totals[i, 1] > 0}
    rows["all"] = totals.sum(0)
    return {name: ((row[0] / row[1]).item(), bits_per_byte(row[0].item(), row[2].item())) for name, row in rows.items()}


def global_mean(value: torch.Tensor) -> float:
    value = value.detach().clone().float()
    dist.all_reduce(value)
    return value.item() / dist.get_world_size()


def train(cfg: RunConfig, run_dir: Path) -> float:
    """Run as one rank of the job (rank/world from the environment); returns the final validation loss."""
    env = distributed.setup(cfg.trainer.device, cfg.trainer.num_threads)
    setup_logging(run_dir, env.rank)
    preemption = Preemption()  # SIGUSR2 from here on: save, stop, requeue
    try:
        final_val, export = _train(cfg, run_dir, env, preemption)
    except Exception as e:  # in train.log too: cpt.report shows a failed job's error line
        log.error("run failed: %s: %s", type(e).__name__, " ".join(str(e).split()))
        raise
    finally:
        preemption.restore()
    distributed.teardown()
    if preemption.stopped:
        preemption.hand_over(env.is_main)
    if export is not None:  # rank 0, once no other rank waits for it
        export.write()
    return final_val


def _train(cfg: RunConfig, run_dir: Path, env: distributed.DistEnv,
           preemption: Preemption) -> tuple[float, Optional[PendingExport]]:
    t = cfg.trainer
    torch.manual_seed(t.seed)
    tokenizer = build_tokenizer(cfg.model)
    manifest = load_manifest(cfg.data, tokenizer)
    model = build_parallel_model(cfg, env, tokenizer)
    check_vocab(model, tokenizer)
    vocab_size = model.get_input_embeddings().num_embeddings
    fpt = flops_per_token(model, t.seq_len)
    log.info("%s: %s parameters (%s trainable), %.3g training FLOPs/token", type(model).__name__,
             f"{count_params(model):,}", f"{trainable_params(model):,}", fpt)
    amp = autocast(model, t.precision, env.device)
    eos_id = tokenizer.eos_token_id if t.doc_masking else None  # documents of a window attend only to themselves
    byte_table = torch.from_numpy(token_bytes(tokenizer)).to(env.device)  # bits per byte of validation text
    sync = gradient_sync(model, cfg.fsdp, t.accum_reduce)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, t.steps)
    mixture = training_mixture(cfg.data, t.steps)
    if env.is_main:
        log.info("training mixture: %s", mixture.describe())
        for name in sorted({s.name for s in cfg.data.sources} - mixture.drawn()):
            log.info("source %s has weight 0: prepared and validated, not trained on", name)
    train_loader = MixtureLoader(open_streams(cfg.data, manifest, "train"), mixture, t.seq_len, t.micro_batch_size,
                                 t.grad_accum, env.rank, env.world_size, t.seed, env.device)
    epochs = planned_epochs(mixture, t.steps, train_loader.global_batch, train_loader.windows)
    check_repetition(cfg.data, epochs, train_loader.windows, t.seq_len, env.is_main)
    val_streams = validation_streams(cfg, manifest, env)
    tokens_per_step = train_loader.global_batch * t.seq_len
    peak = peak_flops(env.device, compute_dtype(t.precision, env.device), t.peak_flops)
    if peak is None:
        log.info("MFU unavailable: no peak FLOP/s known for %s (set trainer.peak_flops)", env.device)
    log.info("%d ranks, global batch %d x %d tokens = %d tokens/step, %d steps",
             env.world_size, train_loader.global_batch, t.seq_len, tokens_per_step, t.steps)

    state = TrainState()
    guard = NonFiniteGuard(t.on_nonfinite, env.device, run_dir / cfg.checkpoint.dir)
    spikes = SpikeGuard(t.on_spike, t.spike, env.device, env.world_size)
    plan = run_plan(cfg, env.world_size, manifest["fingerprint"])
    ckpt = Checkpointer(cfg.checkpoint, run_dir, env, model, optimizer,
                        states={"train": state, "nonfinite": guard, "scheduler": scheduler, "loader": train_loader,
                                "spikes": spikes},
                        trainable_only=cfg.model.lora.enabled, plan=plan)
    resume_from = resolve_resume(cfg.resume, ckpt.root)
    if resume_from is not None:
        changes = check_resume(read_plan(resume_from), plan, cfg.resume_allow, resume_from)
        ckpt.load(resume_from)
        replan(changes, cfg, optimizer, scheduler, state.step)
    train_loader.skip |= set(t.skip_batches)  # with those the checkpoint's position already holds
    train_loader.keep_recent = t.log_interval  # a spike's batch is named at the next check: log steps at the latest
    documents = DocumentIndex(data_dir(cfg.data) / "docs", train_loader.streams, tokenizer.eos_token_id)
    tracker = None
    if env.is_main and cfg.logger.wandb:
        tracker = tracking.start(cfg.logger, run_dir, yaml.safe_load((run_dir / "config.yaml").read_text()))
    sink = MetricsSink(run_dir, t.steps, state.step, t.progress_bar, env.is_main, tracker)
    if resume_from is not None:  # in the metrics too: where each start of the run began (tests and gpu_check read it)
        sink.write({"step": state.step, "resumed_from": str(resume_from)})
    sink.write({"step": state.step, **{f"planned_epochs/{name}": value for name, value in epochs.items()}})

    def validation_record(step: int) -> dict:
        losses = validation_losses(model, val_streams, t, env, amp, eos_id, byte_table)
        loss, bpb = losses["all"]
        record = {"step": step, "val_loss": loss, "val_ppl": perplexity(loss), "val_bpb": bpb}
        if len(val_streams) > 1:
            record.update({f"val_loss/{name}": losses[name][0] for name in val_streams})
            record.update({f"val_bpb/{name}": losses[name][1] for name in val_streams})
        return record

    def validate_and_log(step: int) -> float:
        record = validation_record(step)
        sink.write(record)
        return record["val_loss"]

    val_loss = float("nan")
    if state.step == 0:  # the base model's validation: once per sweep (cpt.eval.base_validation)
        key = base_validation.base_key(cfg, env.world_size, manifest["fingerprint"], env.device.type)
        found = [base_validation.load(key) if env.is_main and t.reuse_base_validation else None]
        dist.broadcast_object_list(found, src=0)  # every rank takes rank 0's decision
        record = found[0] or validation_record(0)
        if found[0] is not None:
            log.info("step-0 validation of this base model on this data taken from %s", base_validation.cache_path(key))
        elif env.is_main and t.reuse_base_validation:
            base_validation.store(key, record)
        sink.write(record)
        val_loss = record["val_loss"]
        check_weights_loaded(val_loss, vocab_size, cfg.model)
    throughput = Throughput(fpt, peak, env.world_size, env.device)
    while state.step < t.steps:
        batches = train_loader.next_batches()
        loss, grad_norm, bad = train_step(model, optimizer, batches, t.grad_accum, cfg.optim.grad_clip, amp,
                                          faults.nan_at(state.step + 1), sync, t.loss, eos_id, spikes,
                                          faults.spike_scale(train_loader.step))
        state.step += 1
        done = state.step
        spikes.record(done, train_loader.step)
        if t.compile and done == 1:
            log_graph_breaks()
        guard.record(bad, done)
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        throughput.add(tokens_per_step)
        sink.advance()
        log_step = done % t.log_interval == 0 or done == t.steps
        stop = False
        if log_step:
            stop = done < t.steps and preemption.agreed(env.device)
            skipped = guard.check(done)
            record = {"step": done, "loss": global_mean(loss), "lr": lr, "grad_norm": grad_norm.item(),
                      "tokens": done * tokens_per_step, **throughput.report(),
                      **memory_report(env.device)}
            if skipped:
                record["skipped_steps"] = skipped
            record.update({f"epochs/{name}": train_loader.consumed[name] / count  # passes over each source so far
                           for name, count in train_loader.windows.items() if count})
            if done == t.log_interval or done == t.steps:
                record["state_mib"] = local_state_mib(model, optimizer)  # this rank's params + optimizer state
                record["optim_mib"] = optimizer_state_mib(optimizer)
            sink.write(record)
        if (log_step or ckpt.due(done, t.steps)) and respond(
                spikes.check(), spikes, ckpt, train_loader, sink, documents, t.seq_len, run_dir / "spikes",
                env.is_main):
            sink.rewind(state.step)
            continue  # rolled back: the loop goes on from the checkpoint's step
        if (t.eval_interval and done % t.eval_interval == 0) or done == t.steps:
            throughput.pause()
            val_loss = validate_and_log(done)
            throughput.resume()
        ckpt.poll()  # an asynchronous save is published as soon as it is written
        if ckpt.due(done, t.steps) or stop:
            throughput.pause()
            guard.check(done)  # under on_nonfinite=stop a skipped update stops the run before it is saved
            ckpt.save(done)
            throughput.resume()
        if stop:
            preemption.stopped = True
            log.warning("step %d: stopping on SIGUSR2 (a time limit or preemption is near) with a checkpoint of "
                        "this step", done)
            ckpt.close()
            sink.write({"step": done, "stopped": "SIGUSR2"})
            sink.close()
            return val_loss, None
        faults.maybe_kill(done, env.rank)
        faults.maybe_raise(done, env.rank)
        faults.maybe_signal(done, env.rank)
        faults.maybe_stall(done, env.rank)
        faults.maybe_slow()
    ckpt.close()
    if env.is_main:  # the numbers a sweep compares runs by, from every start of this run
        sink.summarize(run_summary(run_dir / "metrics.jsonl", cfg.data.sources[0].name if cfg.data.sources else None,
                                   {"trainable_params": trainable_params(model), "params": count_params(model),
                                    "data_fingerprint": manifest["fingerprint"]}))
    sink.close()
    export = gather_export(model, tokenizer, run_dir / cfg.export.dir, cfg) if cfg.export.enabled else None
    return val_loss, export


def validation_streams(cfg: RunConfig, manifest: dict, env: distributed.DistEnv) -> dict[str, TokenStream]:
    """The validation stream of each source with at least one window per rank; rank 0 names the others once."""
    t = cfg.trainer
    streams = {name: stream for name, stream in open_streams(cfg.data, manifest, "val").items()
               if len(rank_windows(stream, t.seq_len, 0, env.world_size, 1)) > 0}
    if env.is_main:
        for name in sorted(set(manifest["sources"]) & {s.name for s in cfg.data.sources} - set(streams)):
            log.warning("source %s: too little validation text for one window of trainer.seq_len=%d per rank: "
                        "not validated", name, t.seq_len)
    if not streams:
        raise UserError(
            f"prepared data '{cfg.data.name}' has too little validation text for one window of trainer.seq_len="
            f"{t.seq_len} per rank on {env.world_size} ranks: raise data.val_fraction or shorten trainer.seq_len"
        )
    return streams
