"""A run's summary (cpt.eval.run_summary): base and final validation per source, domain gain and forgetting from the
same code as cpt.report, from every start of the run (a resumed run's duplicate steps: the last record wins); what a
real run writes to summary.json is what its W&B run's summary holds."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import TINY, rank_env, read_metrics, read_wandb_offline
from cpt.eval.pareto import gain_and_forgetting
from cpt.eval.perplexity import perplexity
from cpt.eval.run_summary import run_summary


def test_the_summary_of_a_two_source_run_with_a_resume(tmp_path):
    val = {0: {"step": 0, "val_loss": 3.0, "val_bpb": 1.5, "val_loss/legal": 3.2, "val_loss/general": 2.8},
           4: {"step": 4, "val_loss": 2.6, "val_bpb": 1.3, "val_loss/legal": 2.5, "val_loss/general": 2.9}}
    lines = [val[0], {"step": 2, "loss": 3.1, "tokens_per_s": 100.0, "mfu": None, "peak_mem_mib": 50.0},
             {"step": 4, "val_loss": 9.9, "val_loss/legal": 9.9, "val_loss/general": 9.9},  # superseded below
             {"step": 2, "resumed_from": "x"}, {"step": 4, "loss": 2.7, "tokens_per_s": 300.0, "peak_mem_mib": 70.0},
             val[4]]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    got = run_summary(metrics, "legal", {"data_fingerprint": "abc"})
    expected = gain_and_forgetting(val, "legal")
    assert got["domain_gain"] == expected["domain_gain"] and got["forgetting"] == expected["forgetting"]
    assert got["forgetting/general"] == pytest.approx(perplexity(2.9) / perplexity(2.8) - 1)
    assert got["base/val_loss/legal"] == 3.2 and got["final/val_loss/legal"] == 2.5
    assert got["final/val_ppl/legal"] == pytest.approx(perplexity(2.5)) and got["base/val_bpb"] == 1.5
    assert got["median_tokens_per_s"] == 200.0 and got["max_peak_mem_mib"] == 70.0 and "median_mfu" not in got
    assert got["steps"] == 4 and got["final/loss"] == 2.7 and got["data_fingerprint"] == "abc"


@pytest.mark.full
def test_a_runs_summary_json_is_its_wandb_summary(tmp_path):
    run_dir = tmp_path / "r"
    proc = subprocess.run([sys.executable, "-m", "cpt.run", *TINY, "logger=wandb", f"hydra.run.dir={run_dir}"],
                          cwd=tmp_path, env=rank_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    records = read_metrics(run_dir)
    step0 = [r for r in records if r["step"] == 0 and "val_loss" in r][0]
    assert summary["base/val_loss"] == step0["val_loss"] and summary["final/step"] == 6
    assert summary["trainable_params"] == summary["params"] > 0 and summary["data_fingerprint"]
    (start,) = read_wandb_offline(run_dir)
    assert {k: start["summary"][k] for k in summary} == summary
