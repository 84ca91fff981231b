"""`python -m cpt.evaluate data=<name> +models.base=<dir> +models.trained=<dir>`: held-out perplexity, side by side.

A model is a transformers directory, a hub id, or a cpt checkpoint / run directory (exported first).

Every model is scored on the same windows of every source of the prepared data (by default its validation split,
the first `max_tokens` tokens of each source): mean token loss and perplexity. The report compares each model with
the baseline: on the domain source a lower perplexity is the gain of continued pretraining; on every other source
(general text) a higher one is forgetting. With `tasks=[...]` every model is also scored on lm-evaluation-harness
tasks (cpt/tasks.py) and the report adds their change against the baseline. Written as report.md and report.json;
the tables are also printed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from cpt.checkpoint import META
from cpt.cli import UserError, user_errors
from cpt.config import EvalConfig, to_run_config
from cpt.data.loader import TokenStream, num_windows
from cpt.data.manifest import data_dir, load_manifest_file, open_streams
from cpt.distributed import configure_cuda, resolve_device
from cpt.export import export_checkpoint
from cpt.heldout import perplexity, summed_loss
from cpt.logs import setup_logging
from cpt.tasks import compare_tasks, run_tasks, task_markdown
from cpt.tokenizer import HFTokenizer, identity, same_ids
from cpt.validate import validate_eval

log = logging.getLogger("cpt.evaluate")


def score(model: torch.nn.Module, stream: TokenStream, seq_len: int, batch_size: int, max_tokens: int | None,
          device: torch.device, eos_id: int | None = None) -> dict:
    """Mean next-token loss over the first non-overlapping windows of the stream (cpt.heldout, as validation in
    training); `eos_id`: documents masked from each other (cpt.doc_masking)."""
    windows = num_windows(stream, seq_len)
    if max_tokens is not None:
        windows = min(windows, max(1, max_tokens // seq_len))
    total, count = summed_loss(model, stream, range(windows), seq_len, batch_size, device, eos_id=eos_id).tolist()
    return {"loss": total / count, "ppl": perplexity(total / count), "tokens": int(count)}


def load_model(path: str, manifest: dict, device: torch.device, scratch: Path) -> tuple[torch.nn.Module, str]:
    """A model directory, or a cpt checkpoint (exported first), whose tokenizer gives the prepared data's ids (its
    EOS may differ: an instruct tokenizer's); returns the model and the directory it was loaded from."""
    from transformers import AutoModelForCausalLM

    if (Path(path) / META).is_file() or (Path(path) / "checkpoints").is_dir():
        path = str(export_checkpoint(Path(path), scratch / Path(path).name))

    tok_id = identity(HFTokenizer(path))
    if not same_ids(tok_id, manifest["tokenizer"], keys=("vocab_size", "probe")):
        raise UserError(f"model '{path}': its tokenizer {tok_id} is not the one the data was prepared with "
                         f"{manifest['tokenizer']}: evaluate it on data prepared with its own tokenizer")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)
    return model.eval(), path


def compare(results: dict, baseline: str, domain: str) -> dict:
    """Per model and source: the relative change of perplexity against the baseline and what it means."""
    out = {}
    for name, sets in results.items():
        if name == baseline:
            continue
        out[name] = {}
        for source, r in sets.items():
            base = results[baseline][source]["ppl"]
            change = r["ppl"] / base - 1
            kind = ("gain" if change < 0 else "loss") if source == domain else ("forgetting" if change > 0 else "gain")
            out[name][source] = {"ppl_change": change, "kind": kind}
    return out


def markdown(results: dict, changes: dict, baseline: str, domain: str) -> str:
    models = list(results)
    head = "| set | " + " | ".join(f"{m} ppl" for m in models) + " | " + \
           " | ".join(f"{m} vs {baseline}" for m in changes) + " |"
    lines = [head, "|" + "---|" * (1 + len(models) + len(changes))]
    for source in results[baseline]:
        label = f"{source} (domain)" if source == domain else source
        ppl = " | ".join(f"{results[m][source]['ppl']:.3f}" for m in models)
        delta = " | ".join(f"{100 * changes[m][source]['ppl_change']:+.1f}% ({changes[m][source]['kind']})"
                           for m in changes)
        lines.append(f"| {label} | {ppl} | {delta} |")
    return "\n".join(lines) + "\n"


def evaluate(cfg: EvalConfig, out: Path) -> dict:
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
    eos_id = manifest["tokenizer"]["eos_token_id"] if cfg.doc_masking else None  # the data's EOS, not the model's
    baseline = cfg.baseline or next(iter(cfg.models))
    domain = cfg.domain or cfg.data.sources[0].name
    results: dict = {}
    task_scores: dict = {}
    out.mkdir(parents=True, exist_ok=True)
    for name, path in cfg.models.items():
        start = time.perf_counter()
        model, model_dir = load_model(path, manifest, device, out / "exported")
        results[name] = {source: score(model, stream, cfg.seq_len, cfg.batch_size, cfg.max_tokens, device, eos_id)
                         for source, stream in streams.items()}
        log.info("%s (%s): %s in %.1f s", name, path,
                 ", ".join(f"{s} ppl {r['ppl']:.3f}" for s, r in results[name].items()), time.perf_counter() - start)
        if cfg.tasks:
            start = time.perf_counter()
            task_scores[name] = run_tasks(model, model_dir, cfg.tasks, cfg.task_dirs, cfg.task_limit, cfg.batch_size,
                                          device)
            log.info("%s tasks: %s in %.1f s", name, task_scores[name], time.perf_counter() - start)
        del model
    changes = compare(results, baseline, domain)
    report = {"data": cfg.data.name, "data_dir": str(data_dir(cfg.data).resolve()), "split": cfg.split,
              "seq_len": cfg.seq_len, "max_tokens": cfg.max_tokens, "doc_masking": cfg.doc_masking,
              "models": dict(cfg.models), "baseline": baseline, "domain": domain, "results": results,
              "changes": changes, "skipped": skipped}
    if cfg.tasks:
        report.update(tasks=task_scores, task_changes=compare_tasks(task_scores, baseline))
    (out / "report.json").write_text(json.dumps(report, indent=1))
    table = markdown(results, changes, baseline, domain)
    table += "".join(f"\nNot scored: {source} ({why}).\n" for source, why in skipped.items())
    if cfg.tasks:
        table += "\nTasks (lm-evaluation-harness):\n\n" + task_markdown(task_scores, report["task_changes"], baseline)
    (out / "report.md").write_text(f"# Held-out perplexity on '{cfg.data.name}' ({cfg.split})\n\n{table}")
    print(table, flush=True)
    log.info("report: %s", out / "report.md")
    return report


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
@user_errors  # below @hydra.main, or Hydra prints its traceback first
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    typed: EvalConfig = to_run_config(cfg, EvalConfig)
    out = Path(typed.out or HydraConfig.get().runtime.output_dir)
    setup_logging(out, rank=0, log_name="evaluate.log")
    evaluate(typed, out)


if __name__ == "__main__":
    main()
