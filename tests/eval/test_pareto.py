"""The replay x learning-rate question: data.replay mixes, cpt.report turns each job's step-0 and final validation
into domain gain and forgetting, marks the Pareto front and the best trade-off, and draws pareto.png."""

from __future__ import annotations

import csv
import json
import math

import pytest
import yaml
from hydra import compose, initialize_config_dir

from conftest import CONF, compose_cfg
from cpt.config.schema import ConfigError, SourceConfig, to_run_config
from cpt.config.validate import validate_data
from cpt.data.mixture import source_weights
from cpt.eval.pareto import best_tradeoff, gain_and_forgetting, pareto_front


def data_cfg(*weights, replay=None):
    cfg = to_run_config(compose_cfg([])).data
    cfg.sources = [SourceConfig(name=n, paths=["x"], weight=w) for n, w in zip(("legal", "shakes", "milton"), weights)]
    cfg.replay = replay
    return cfg


def test_replay_gives_the_domain_the_rest_and_splits_itself_by_weight():
    assert source_weights(data_cfg(3.0, 1.0)) == {"legal": 0.75, "shakes": 0.25}
    assert source_weights(data_cfg(0.95, 0.05, replay=0.25)) == {"legal": 0.75, "shakes": 0.25}
    w = source_weights(data_cfg(1.0, 3.0, 1.0, replay=0.2))
    assert w == pytest.approx({"legal": 0.8, "shakes": 0.15, "milton": 0.05})
    assert source_weights(data_cfg(1.0, 0.0, 0.0, replay=0.1))["milton"] == pytest.approx(0.05)  # evenly
    assert source_weights(data_cfg(0.95, 0.05, replay=0.0)) == {"legal": 1.0, "shakes": 0.0}  # prepared, never drawn


@pytest.mark.parametrize("weights, replay", [((1.0,), 0.1), ((1.0, 1.0), 1.0), ((1.0, 1.0), -0.1)])
def test_a_replay_share_that_cannot_be_met_names_the_key(weights, replay):
    with pytest.raises(ConfigError, match="data.replay"):
        validate_data(data_cfg(*weights, replay=replay))


def test_front_and_best_tradeoff_on_known_points():
    # (forgetting, gain)
    points = [(0.00, 0.10), (0.02, 0.30), (0.10, 0.50), (0.03, 0.25), (0.20, 0.45), (0.01, 0.10)]
    front = pareto_front(points)
    assert front == [0, 1, 2]  # 3 is beaten by 1; 4 by 2; 5 by 0
    assert best_tradeoff(points, front, 0.05) == 1
    assert best_tradeoff(points, front, 0.5) == 2
    assert best_tradeoff(points, front, -0.01) is None


def test_gain_and_forgetting_are_relative_perplexity_changes_from_step_0():
    val = {0: {"val_loss": 3.0, "val_loss/legal": 3.0, "val_loss/shakes": 4.0, "val_loss/milton": 4.5},
           5: {"val_loss": 2.5, "val_loss/legal": 2.4, "val_loss/shakes": 4.1, "val_loss/milton": 4.4},
           10: {"val_loss": 2.4, "val_loss/legal": 2.2, "val_loss/shakes": 4.2, "val_loss/milton": 4.5}}
    r = gain_and_forgetting(val, "legal")
    assert r["domain_gain"] == pytest.approx(1 - math.exp(2.2 - 3.0))
    assert r["forgetting_by_source"] == pytest.approx({"shakes": math.exp(0.2) - 1, "milton": 0.0})
    assert r["forgetting"] == pytest.approx((math.exp(0.2) - 1) / 2)
    assert gain_and_forgetting({5: val[5], 10: val[10]}, "legal") is None  # resumed without the base model's score
    assert gain_and_forgetting({0: {"val_loss": 3.0}, 1: {"val_loss": 2.0}}, "legal") is None  # one source


def write_job(sweep, num, lr, replay, legal_end, shakes_end, steps=10, done=10):
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["data=legal", f"optim.lr={lr}",
                                                                   f"data.replay={replay}"]))
    (job / "config.yaml").write_text(yaml.safe_dump({"trainer": {"steps": steps},
                                                     "data": {"sources": [{"name": "legal"}, {"name": "shakes"}]}}))
    records = [{"step": 0, "val_loss": 3.2, "val_ppl": math.exp(3.2), "val_loss/legal": 3.0, "val_loss/shakes": 4.0}]
    records += [{"step": s, "loss": 3.0 - 0.05 * s, "tokens_per_s": 100.0} for s in range(1, done + 1)]
    if done == steps:
        records.append({"step": steps, "val_loss": 3.0, "val_ppl": math.exp(3.0), "val_loss/legal": legal_end,
                        "val_loss/shakes": shakes_end})
    (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_report_columns_equal_the_metrics_and_pareto_png_is_drawn(tmp_path):
    from matplotlib.image import imread

    from cpt.eval.sweep_report import report

    sweep = tmp_path / "sweep"
    write_job(sweep, 0, 1e-4, 0.25, legal_end=2.9, shakes_end=3.99)  # small gain, no forgetting: front
    write_job(sweep, 1, 3e-4, 0.05, legal_end=2.5, shakes_end=4.03)  # gain 39%, forgetting 3%: best at 5%
    write_job(sweep, 2, 1e-3, 0.0, legal_end=2.3, shakes_end=4.3)  # largest gain, 35% forgetting: front
    write_job(sweep, 3, 1e-3, 0.05, legal_end=2.6, shakes_end=4.2)  # dominated by job 1
    write_job(sweep, 4, 1e-3, 0.25, legal_end=2.0, shakes_end=4.0, done=4)  # incomplete: not scored
    report(sweep, max_forgetting=0.05)
    rows = {r["job"]: r for r in csv.DictReader(open(sweep / "report.csv"))}
    for job, row in rows.items():
        records = [json.loads(line) for line in (sweep / job / "metrics.jsonl").read_text().splitlines()]
        val = [r for r in records if "val_loss" in r]
        if job == "4":
            assert row["domain_gain"] == "" and row["pareto"] == "" and row["status"] == "incomplete"
            continue
        first, last = val[0], val[-1]
        gain = 1 - math.exp(last["val_loss/legal"]) / math.exp(first["val_loss/legal"])
        forget = math.exp(last["val_loss/shakes"]) / math.exp(first["val_loss/shakes"]) - 1
        assert float(row["domain_gain"]) == pytest.approx(gain, rel=1e-12)
        assert float(row["forgetting"]) == pytest.approx(forget, rel=1e-12)
        assert float(row["forgetting/shakes"]) == pytest.approx(forget, rel=1e-12)
    assert {j: rows[j]["pareto"] for j in "0123"} == {"0": "front", "1": "best trade-off", "2": "front",
                                                      "3": "dominated"}
    md = (sweep / "report.md").read_text()
    assert "## Domain gain vs forgetting (4 completed jobs" in md and "| 1 | optim.lr=0.0003 data.replay=0.05 |" in md
    assert "**best trade-off**" in md and "at most 5.0%" in md
    # one meaning of "best": only the best trade-off is called best; the lowest validation loss is named as such
    # (another job than the best trade-off here)
    lowest = min("0123", key=lambda j: float(rows[j]["min_val_loss"]))
    assert lowest != "1" and f"**{lowest}** (lowest val loss)" in md
    called_best = [line for line in md.splitlines() if line.startswith("|") and "best" in line.lower()
                   and "best trade-off" not in line]
    assert called_best == [], called_best  # no table row calls anything else best
    image = imread(sweep / "pareto.png")
    assert image.shape[0] > 300 and image.shape[1] > 400 and image.std() > 0.01  # decodes, not blank

    report(sweep, max_forgetting=0.001)  # only job 0 qualifies now
    assert {r["job"]: r["pareto"] for r in csv.DictReader(open(sweep / "report.csv"))}["0"] == "best trade-off"
    report(sweep, max_forgetting=-0.5)
    assert "no best trade-off" in (sweep / "report.md").read_text()


def test_report_of_a_single_source_sweep_has_no_pareto_section(tmp_path):
    from cpt.eval.sweep_report import report

    job = tmp_path / "sweep" / "0"
    job.mkdir(parents=True)
    (job / "config.yaml").write_text(yaml.safe_dump({"trainer": {"steps": 1}, "data": {"sources": [{"name": "s"}]}}))
    records = [{"step": 0, "val_loss": 3.0}, {"step": 1, "loss": 2.0}, {"step": 1, "val_loss": 2.5}]
    (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    report(tmp_path / "sweep")
    assert "Domain gain" not in (tmp_path / "sweep" / "report.md").read_text()
    assert not (tmp_path / "sweep" / "pareto.png").exists()


@pytest.mark.parametrize("launcher, batch", [("slurm", None), ("local", 1)])
def test_the_pareto_sweep_composes_lr_times_replay(launcher, batch):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["+sweep=cpt_pareto", "data=legal", f"hydra/launcher={launcher}"],
                      return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params["optim.lr"] == "1e-4,3e-4,1e-3" and params["data.replay"] == "0,0.05,0.25"
    assert cfg.hydra.sweeper.max_batch_size == batch and cfg.hydra.mode.name == "MULTIRUN"
    for replay in (0.0, 0.05, 0.25):  # every point of the grid is a valid run config
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            job = to_run_config(compose(config_name="config", overrides=["data=legal", f"data.replay={replay}"]))
        validate_data(job.data)
        assert source_weights(job.data)["general"] == pytest.approx(replay)


@pytest.mark.parametrize("stages, key", [
    ([{"until": 0.5}, {"until": 0.5}], r"data.stages\[1\].until"),
    ([{"until": 0.8}], r"data.stages\[0\].until"),  # the last stage must reach the end
    ([{"until": 1.0, "weights": {"nope": 1.0}}], r"data.stages\[0\].weights"),
    ([{"until": 1.0, "weights": {"legal": 0.0, "shakes": 0.0}}], r"data.stages\[0\].weights"),
    ([{"until": 1.0, "replay": 1.5}], r"data.stages\[0\].replay"),
])
def test_impossible_stages_name_their_key(stages, key):
    from cpt.config.schema import StageConfig

    cfg = data_cfg(0.95, 0.05)
    cfg.stages = [StageConfig(**s) for s in stages]
    with pytest.raises(ConfigError, match=key):
        validate_data(cfg)


def test_stages_compose_from_the_command_line_with_per_stage_replay():
    from cpt.data.mixture import training_mixture

    cfg = to_run_config(compose_cfg(["data=legal", "data.replay=0.05", "trainer.steps=100",
                                     "data.stages=[{until: 0.8}, {until: 1.0, replay: 0.25}]"]))
    validate_data(cfg.data)
    mixture = training_mixture(cfg.data, cfg.trainer.steps)
    assert mixture.ends == (80, 100)
    assert mixture.at(79)["general"] == pytest.approx(0.05) and mixture.at(80)["general"] == pytest.approx(0.25)


@pytest.mark.full
def test_a_job_that_failed_has_its_row_with_its_error_line(tmp_path):
    """Two jobs of a sweep: one completes, one fails at step 2 (a fault). The failed job's train.log ends with the
    error line, and cpt.report lists it as failed with that line, next to the completed one; a job that failed
    before writing any metrics is listed too."""
    import subprocess
    import sys

    from conftest import TINY, rank_env
    from cpt.eval.sweep_report import report

    sweep = tmp_path / "sweep"
    for job, env in (("0", {}), ("1", {"CPT_FAULT_RAISE": "0:2"})):
        proc = subprocess.run([sys.executable, "-m", "cpt.run", *TINY, f"hydra.run.dir={sweep / job}"], cwd=tmp_path,
                              env={**rank_env(), **env}, capture_output=True, text=True, timeout=300)
        assert (proc.returncode == 0) == (job == "0"), proc.stderr[-2000:]
    early = sweep / "2" / ".hydra"
    early.mkdir(parents=True)
    (early / "overrides.yaml").write_text(yaml.safe_dump(["optim.lr=1"]))
    (sweep / "2" / "train.log").write_text("[2026-12-05 10:00:00,000][cpt.train.loop][ERROR] run failed: "
                                           "OutOfMemoryError: CUDA out of memory\n")
    rows = {j["job"]: j for j in report(sweep)}
    assert rows["0"]["status"] == "completed" and rows["0"]["error"] is None
    assert rows["1"]["status"] == "failed" and rows["1"]["steps"] == 2
    assert rows["1"]["error"] == "run failed: RuntimeError: CPT_FAULT_RAISE: rank 0 fails after step 2 on purpose"
    assert rows["2"]["status"] == "failed" and rows["2"]["error"].endswith("CUDA out of memory")
    md = (sweep / "report.md").read_text()
    assert "| failed |" in md and "CPT_FAULT_RAISE: rank 0 fails after step 2 on purpose |" in md
