"""Repetition planned and reported (cpt.data.repetition): the planned epochs of a staged mixture equal a hand
computation and what the loader then serves; the warning fires above data.warn_epochs and not below; a source
planned past its max_epochs is refused before training, naming the source and the fixes."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import TINY, compose_cfg, rank_env, read_metrics
from cpt.config.schema import ConfigError, to_run_config
from cpt.data.loader import MixtureLoader, TokenStream
from cpt.data.mixture import training_mixture
from cpt.data.pack import ShardWriter
from cpt.data.repetition import check_repetition, planned_epochs

SOURCES = ("data.sources=[{name: legal, paths: [a], weight: 0.9}, {name: general, paths: [b], weight: 0.1}]")
STAGES = "data.stages=[{until: 0.6}, {until: 1.0, weights: {legal: 0.5, general: 0.5}}]"


def staged_cfg(*extra):
    return to_run_config(compose_cfg([*TINY, SOURCES, STAGES, *extra])).data


def test_planned_epochs_of_a_staged_mixture_equal_the_hand_count_and_the_loader(tmp_path):
    mixture = training_mixture(staged_cfg(), 100)  # steps 1-60: legal 0.9, general 0.1; 61-100: 0.5 / 0.5
    windows = {"legal": 100, "general": 1000}
    epochs = planned_epochs(mixture, 100, 8, windows)
    assert epochs["legal"] == pytest.approx((60 * 0.9 * 8 + 40 * 0.5 * 8) / 100)  # 5.92
    assert epochs["general"] == pytest.approx((60 * 0.1 * 8 + 40 * 0.5 * 8) / 1000)  # 0.208
    streams = {}
    for name, count in windows.items():
        writer = ShardWriter(tmp_path / name, "uint16", 10**6)
        writer.write(np.arange(count * 16 + 1) % 60000)
        streams[name] = TokenStream([tmp_path / name / s["file"] for s in writer.close()], "uint16")
    loader = MixtureLoader(streams, mixture, 16, 8, 1, 0, 1, 0, torch.device("cpu"))
    for _ in range(100):
        loader.next_batches()
    served = {name: loader.consumed[name] / windows[name] for name in windows}
    assert served["legal"] == pytest.approx(epochs["legal"], rel=0.05)  # 800 random draws
    assert served["general"] == pytest.approx(epochs["general"], rel=0.15)


def test_the_warning_fires_above_the_threshold_only(caplog):
    cfg = staged_cfg("data.warn_epochs=5")
    windows = {"legal": 100, "general": 1000}
    with caplog.at_level(logging.INFO, logger="cpt.data.repetition"):
        check_repetition(cfg, {"legal": 4.9, "general": 0.2}, windows, 16, announce=True)
    assert "planned 4.90 epochs" in caplog.text and "will be seen" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cpt.data.repetition"):
        check_repetition(cfg, {"legal": 5.1, "general": 0.2}, windows, 16, announce=True)
    assert "source legal will be seen 5.1 times (data.warn_epochs=5)" in caplog.text
    assert "source general will be seen" not in caplog.text


def test_a_source_over_its_cap_is_refused_naming_it():
    cfg = to_run_config(compose_cfg([*TINY, "data.sources=[{name: legal, paths: [a], max_epochs: 3}, "
                                            "{name: general, paths: [b]}]"])).data
    with pytest.raises(ConfigError, match=r"data.sources\[legal\].max_epochs.*3.50 times"):
        check_repetition(cfg, {"legal": 3.5, "general": 9.0}, {"legal": 10, "general": 10}, 16, announce=False)
    check_repetition(cfg, {"legal": 2.9, "general": 9.0}, {"legal": 10, "general": 10}, 16, announce=False)


@pytest.mark.full
def test_a_run_reports_its_plan_and_epochs_as_it_goes_and_refuses_a_capped_source(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "cpt.run", *TINY, f"hydra.run.dir={tmp_path}/r"], cwd=tmp_path,
                        env=rank_env(), capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-3000:]
    records = read_metrics(tmp_path / "r")
    (plan,) = [r["planned_epochs/sample"] for r in records if "planned_epochs/sample" in r]
    seen = [r["epochs/sample"] for r in records if "epochs/sample" in r]
    assert len(seen) == 6 and seen == sorted(seen) and seen[-1] == pytest.approx(plan, rel=1e-9)  # one source
    capped = subprocess.run([sys.executable, "-m", "cpt.run", *TINY, f"data.sources.0.max_epochs={plan / 2}",
                             f"hydra.run.dir={tmp_path}/c"], cwd=tmp_path, env=rank_env(), capture_output=True,
                            text=True, timeout=300)
    assert capped.returncode == 2 and "error: config key 'data.sources[sample].max_epochs'" in capped.stderr, \
        capped.stderr[-2000:]
