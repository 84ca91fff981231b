"""Downstream task scores with lm-evaluation-harness (`cpt.evaluate tasks=[...]`, optional: pip install 'cpt[eval]').

Perplexity says how well a model predicts held-out text; tasks say what it can still do. `cpt.evaluate` scores every
model on the same harness tasks next to perplexity, and the report shows the change against the baseline (a drop on
general tasks is task forgetting). Any harness task works where its dataset can be fetched; offline, write a task
of your own: a directory with a YAML (`dataset_path: json`, `dataset_kwargs.data_files` naming a local JSONL) given
in `task_dirs` (see tests/train/test_export.py). The model object already loaded for perplexity is handed to the
harness, with the tokenizer saved next to it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional

import torch

from cpt.common.errors import UserError

log = logging.getLogger("cpt.evaluate")

# the score a task reports, by preference: the first of these its results hold
PRIMARY_METRICS = ("acc_norm", "acc", "exact_match", "f1", "word_perplexity")
LOWER_IS_BETTER = {"word_perplexity", "byte_perplexity", "bits_per_byte", "perplexity"}


def run_tasks(model: torch.nn.Module, model_dir: str, tasks: list[str], task_dirs: list[str], limit: Optional[int],
              batch_size: int, device: torch.device, samples_dir: Optional[Path] = None) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} for one model; stderr entries are dropped. `samples_dir`: also write what the harness
    scored per document, <samples_dir>/<task>.jsonl (the document, its target, each request's response: for a
    multiple-choice task the log-likelihood of every choice and whether it is the greedy continuation)."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise UserError(f"config key 'tasks': task evaluation needs lm-evaluation-harness ({e}): "
                        "pip install 'cpt[eval]' (or lm-eval)") from e
    from transformers import AutoTokenizer

    for path in task_dirs:
        if not Path(path).is_dir():
            raise UserError(f"config key 'task_dirs': {path} is not a directory of harness task YAMLs")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    manager = TaskManager(include_path=[str(Path(p).resolve()) for p in task_dirs] or None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise UserError(f"config key 'tasks': {unknown} are not harness tasks (or in task_dirs {task_dirs}); "
                        "`lm-eval ls tasks` lists them")
    lm = HFLM(pretrained=model, tokenizer=AutoTokenizer.from_pretrained(model_dir), batch_size=batch_size,
              device=str(device))
    out = simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit,
                          log_samples=samples_dir is not None, bootstrap_iters=0)
    if samples_dir is not None:
        write_samples(out["samples"], samples_dir)
    return {task: {key.split(",")[0]: float(v) for key, v in metrics.items()
                   if "," in key and "_stderr" not in key and isinstance(v, (int, float))}
            for task, metrics in out["results"].items()}


def write_samples(samples: dict[str, list[dict]], samples_dir: Path) -> None:
    samples_dir.mkdir(parents=True, exist_ok=True)
    for task, docs in samples.items():
        with open(samples_dir / f"{task}.jsonl", "w", encoding="utf-8") as f:
            for s in docs:
                record = {"doc_id": s["doc_id"], "doc": s["doc"], "target": s["target"],
                          "responses": [r[0] if isinstance(r, (list, tuple)) and len(r) == 1 else r
                                        for r in s["resps"]]}
                f.write(json.dumps(record, default=str) + "\n")
    log.info("per-document task scores in %s", samples_dir)


def primary_metric(metrics: dict[str, float]) -> Optional[str]:
    return next((m for m in PRIMARY_METRICS if m in metrics), next(iter(metrics), None))


def compare_tasks(scores: dict[str, dict], baseline: str) -> dict[str, dict]:
    """Per model and task: the primary metric, its change against the baseline (absolute) and what it means."""
    out = {}
    for name, tasks in scores.items():
        if name == baseline:
            continue
        out[name] = {}
        for task, metrics in tasks.items():
            metric = primary_metric(metrics)
            base = scores[baseline].get(task, {}).get(metric)
            if metric is None or base is None:
                continue
            change = metrics[metric] - base
            better = change < 0 if metric in LOWER_IS_BETTER else change > 0
            out[name][task] = {"metric": metric, "change": change,
                               "kind": "gain" if better else "forgetting" if change else "same"}
    return out


def task_markdown(scores: dict[str, dict], changes: dict[str, dict], baseline: str) -> str:
    models = list(scores)
    lines = ["| task | metric | " + " | ".join(models) + " | " + " | ".join(f"{m} vs {baseline}" for m in changes)
             + " |", "|" + "---|" * (2 + len(models) + len(changes))]
    for task, metrics in scores[baseline].items():
        metric = primary_metric(metrics)
        if metric is None:
            continue
        values = " | ".join(f"{scores[m].get(task, {}).get(metric, float('nan')):.4f}" for m in models)
        deltas = " | ".join(f"{changes[m][task]['change']:+.4f} ({changes[m][task]['kind']})"
                            if task in changes[m] else "—" for m in changes)
        lines.append(f"| {task} | {metric} | {values} | {deltas} |")
    return "\n".join(lines) + "\n"
