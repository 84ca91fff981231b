"""Held-out perplexity of several models, side by side (what `python -m cpt.evaluate` reports).

Every model (a transformers directory or hub id) is scored on the same windows of every source of the prepared data
(by default its validation split, the first `max_tokens` tokens of each source): mean token loss, perplexity and bits
per byte. The report compares each model with the baseline: on the domain source a lower perplexity is the gain of
continued pretraining; on every other source (general text) a higher one is forgetting. When a model's tokenizer is
not the data's (a vocabulary extension), every model scores the same documents in its own tokens and the comparison
is by bits per byte (cpt.eval.retokenize). With `tasks=[...]` every model is also scored on lm-evaluation-harness
tasks (cpt.eval.tasks) and the report adds their change against the baseline. Written as report.md and report.json;
the tables are also printed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cpt.common.errors import UserError
from cpt.config.schema import EvalConfig
from cpt.config.validate import validate_eval
from cpt.data.loader import num_windows
from cpt.data.manifest import data_dir, load_manifest_file, open_streams
from cpt.eval.bits_per_byte import bits_per_byte, token_bytes
from cpt.eval.heldout import summed_loss
from cpt.eval.perplexity import perplexity
from cpt.eval.retokenize import sets_per_model
from cpt.eval.tasks import compare_tasks, run_tasks, task_markdown
from cpt.model.tokenizer import HFTokenizer, identity, same_ids
from cpt.parallel.distributed import configure_cuda, resolve_device

log = logging.getLogger("cpt.evaluate")


def score(model: torch.nn.Module, stream, seq_len: int, batch_size: int, max_tokens: int | None,
          device: torch.device, eos_id: int | None = None, byte_table: torch.Tensor | None = None) -> dict:
    """Mean next-token loss and bits per byte over the first non-overlapping windows of the stream (cpt.eval.heldout,
    as validation in training); `eos_id`: documents masked from each other (cpt.model.doc_masking)."""
    windows = num_windows(stream, seq_len)
    if max_tokens is not None:
        windows = min(windows, max(1, max_tokens // seq_len))
    total, count, nbytes = summed_loss(model, stream, range(windows), seq_len, batch_size, device, eos_id=eos_id,
                                       byte_table=byte_table).tolist()
    return {"loss": total / count, "ppl": perplexity(total / count), "bpb": bits_per_byte(total, nbytes),
            "tokens": int(count), "bytes": int(nbytes)}


def compare(results: dict, baseline: str, domain: str, metric: str = "ppl") -> dict:
    """Per model and source: the relative change of `metric` (ppl, or bpb across tokenizers) against the baseline
    and what it means."""
    out = {}
    for name, sets in results.items():
        if name == baseline:
            continue
        out[name] = {}
        for source, r in sets.items():
            change = r[metric] / results[baseline][source][metric] - 1
            kind = ("gain" if change < 0 else "loss") if source == domain else ("forgetting" if change > 0 else "gain")
            out[name][source] = {f"{metric}_change": change, "kind": kind}
    return out


def markdown(results: dict, changes: dict, baseline: str, domain: str, metric: str) -> str:
    models = list(results)
    head = "| set | " + " | ".join(f"{m} ppl | {m} bpb" for m in models) + " | " + \
           " | ".join(f"{m} vs {baseline} ({metric})" for m in changes) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(models) + len(changes))]
    for source in results[baseline]:
        label = f"{source} (domain)" if source == domain else source
        scores = " | ".join(f"{results[m][source]['ppl']:.3f} | {results[m][source]['bpb']:.4f}" for m in models)
        delta = " | ".join(f"{100 * changes[m][source][f'{metric}_change']:+.1f}% ({changes[m][source]['kind']})"
                           for m in changes)
        lines.append(f"| {label} | {scores} | {delta} |")
    return "\n".join(lines) + "\n"


def evaluate(cfg: EvalConfig, out: Path, model_dir: Callable[[str, Path], str] = lambda path, scratch: path) -> dict:
    """Score cfg.models into out/report.{md,json}. `model_dir(path, scratch)` turns a model path that is not a
    transformers directory (a cpt checkpoint: the evaluate command exports it) into one, after the data is checked."""
    from transformers import AutoModelForCausalLM

    validate_eval(cfg)
    device = torch.device(resolve_device(cfg.device))
    if device.type == "cuda":
        configure_cuda()
    # one process: all cores unless told otherwise (OMP_NUM_THREADS=1, as the Makefile exports for its ranks, would
    # otherwise leave it on one thread)
    torch.set_num_threads(cfg.num_threads or os.cpu_count() or 1)
    manifest = load_manifest_file(cfg.data)
    streams, skipped = {}, {}
    for source, stream in open_streams(cfg.data, manifest, cfg.split).items():
        if num_windows(stream, cfg.seq_len) > 0:
            streams[source] = stream
        else:  # decided before any model is scored: the same sets for every model
            skipped[source] = f"{len(stream)} {cfg.split} tokens, fewer than one window of seq_len+1={cfg.seq_len + 1}"
            log.warning("set %s skipped: %s (lower seq_len or hold out more text)", source, skipped[source])
    if not streams:
        raise UserError(f"no set of data '{cfg.data.name}' has one window of seq_len+1={cfg.seq_len + 1} "
                         f"{cfg.split} tokens ({skipped}): lower seq_len")
    baseline = cfg.baseline or next(iter(cfg.models))
    domain = cfg.domain or cfg.data.sources[0].name
    results: dict = {}
    task_scores: dict = {}
    out.mkdir(parents=True, exist_ok=True)
    dirs = {name: model_dir(path, out / "exported") for name, path in cfg.models.items()}
    tokenizers = {name: HFTokenizer(path) for name, path in dirs.items()}
    others = [n for n, tok in tokenizers.items() if not same_ids(identity(tok), manifest["tokenizer"],
                                                                  keys=("vocab_size", "probe", "vocab_hash"))]
    own_tokens = {}
    if others:  # the same documents for every model, each in its own tokens: compare bits per byte
        log.info("models %s do not use the tokenizer the data was prepared with: every model scores the same %s "
                 "documents, tokenized by its own tokenizer, compared by bits per byte", others, cfg.split)
        own_tokens = sets_per_model(data_dir(cfg.data), manifest, cfg.split, list(streams), tokenizers, cfg.max_tokens)
        for source in list(streams):
            short = [n for n, sets in own_tokens.items() if num_windows(sets[source], cfg.seq_len) == 0]
            if short:
                skipped[source] = (f"its first {cfg.split} documents are fewer than one window of seq_len+1="
                                   f"{cfg.seq_len + 1} tokens for {short}")
                log.warning("set %s skipped: %s (lower seq_len or raise max_tokens)", source, skipped[source])
                del streams[source]
        if not streams:
            raise UserError(f"no set of data '{cfg.data.name}' has one window of seq_len+1={cfg.seq_len + 1} "
                            f"tokens for every model ({skipped}): lower seq_len")
    for name, path in dirs.items():
        start = time.perf_counter()
        tok = tokenizers[name]
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
        byte_table = torch.from_numpy(token_bytes(tok)).to(device)
        if own_tokens:
            sets = {source: own_tokens[name][source] for source in streams}
            eos_id, max_tokens = tok.eos_token_id, None
        else:
            sets, eos_id, max_tokens = streams, manifest["tokenizer"]["eos_token_id"], cfg.max_tokens
        eos_id = eos_id if cfg.doc_masking else None  # the EOS between the scored documents, not the model's own
        results[name] = {source: score(model, stream, cfg.seq_len, cfg.batch_size, max_tokens, device, eos_id,
                                       byte_table) for source, stream in sets.items()}
        log.info("%s (%s): %s in %.1f s", name, path,
                 ", ".join(f"{s} ppl {r['ppl']:.3f} bpb {r['bpb']:.4f}" for s, r in results[name].items()),
                 time.perf_counter() - start)
        if cfg.tasks:
            start = time.perf_counter()
            task_scores[name] = run_tasks(model, path, cfg.tasks, cfg.task_dirs, cfg.task_limit, cfg.batch_size,
                                          device, out / "task_samples" / name if cfg.task_samples else None)
            log.info("%s tasks: %s in %.1f s", name, task_scores[name], time.perf_counter() - start)
        del model
    metric = "bpb" if own_tokens else "ppl"
    changes = compare(results, baseline, domain, metric)
    report = {"data": cfg.data.name, "data_dir": str(data_dir(cfg.data).resolve()), "split": cfg.split,
              "seq_len": cfg.seq_len, "max_tokens": cfg.max_tokens, "doc_masking": cfg.doc_masking,
              "compared_by": metric, "tokenized_by_each_model": bool(own_tokens),
              "models": dict(cfg.models), "baseline": baseline, "domain": domain, "results": results,
              "changes": changes, "skipped": skipped}
    if cfg.tasks:
        report.update(tasks=task_scores, task_changes=compare_tasks(task_scores, baseline))
    (out / "report.json").write_text(json.dumps(report, indent=1))
    table = markdown(results, changes, baseline, domain, metric)
    table += "".join(f"\nNot scored: {source} ({why}).\n" for source, why in skipped.items())
    if cfg.tasks:
        table += "\nTasks (lm-evaluation-harness):\n\n" + task_markdown(task_scores, report["task_changes"], baseline)
    (out / "report.md").write_text(f"# Held-out perplexity on '{cfg.data.name}' ({cfg.split})\n\n{table}")
    print(table, flush=True)
    log.info("report: %s", out / "report.md")
    return report
